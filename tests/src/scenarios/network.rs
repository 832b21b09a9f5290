//! The network a scenario runs on ([`NetworkFactory`]), and what every scenario does with it:
//! start averagers, step them all at once, read their tensors, compare with a reference.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use averager_core::PeerMode;
use averager_core::averager::Gathered;
use averager_core::dht::MemoryDht;
use averager_core::registry::Registry;
use averager_core::state::StateProvider;
use averager_core::{Averager, AveragerConfig, Dht, StepOptions, Tensor, Transport};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Failure, Outcome, ensure};

/// How long every peer's step of one round may take together before the case fails as hung.
///
/// Generous: a round takes well under a second in process and a few seconds over real sockets on
/// a loaded two-core machine; this bound only turns a hang into a message that says where.
pub const STEP_WAIT: Duration = Duration::from_secs(60);

/// How long [`Peers::connect_all`] lets one dial take.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// Builds the peers of one scenario: DHT handles onto one swarm, and a transport per peer.
///
/// Build one from two closures with [`network`]. Both methods are called inside the case's tokio
/// runtime, once per case (`dhts`) and once per peer (`transport`).
pub trait NetworkFactory {
    /// `n` handles onto one fresh DHT swarm, handle `i` for peer `i`: records stored through any
    /// handle are visible through every other (for a distributed DHT, `n` nodes already connected
    /// to each other; for an in-process one, `n` clones of one table).
    fn dhts(&self, n: usize) -> impl Future<Output = Vec<Arc<dyn Dht>>>;

    /// A new transport for peer `i`; every transport of a case must reach every other one.
    fn transport(&self, i: usize) -> impl Future<Output = Arc<dyn Transport>>;
}

/// A [`NetworkFactory`] made of two closures; see [`network`].
#[derive(Debug, Clone, Copy)]
pub struct Network<D, T> {
    dhts: D,
    transport: T,
}

/// A [`NetworkFactory`] from a DHT closure (`Fn(n) -> impl Future<Output = Vec<Arc<dyn Dht>>>`, as
/// [`memory_dhts`]) and a transport closure (`Fn(i) -> impl Future<Output = Arc<dyn Transport>>`).
///
/// A function rather than a blanket impl on closure pairs, so that closures written inline
/// (`|_| async { ... }`) get their argument type from these bounds.
pub fn network<D, DFut, T, TFut>(dhts: D, transport: T) -> Network<D, T>
where
    D: Fn(usize) -> DFut,
    DFut: Future<Output = Vec<Arc<dyn Dht>>>,
    T: Fn(usize) -> TFut,
    TFut: Future<Output = Arc<dyn Transport>>,
{
    Network { dhts, transport }
}

impl<D, DFut, T, TFut> NetworkFactory for Network<D, T>
where
    D: Fn(usize) -> DFut,
    DFut: Future<Output = Vec<Arc<dyn Dht>>>,
    T: Fn(usize) -> TFut,
    TFut: Future<Output = Arc<dyn Transport>>,
{
    fn dhts(&self, n: usize) -> impl Future<Output = Vec<Arc<dyn Dht>>> {
        (self.dhts)(n)
    }

    fn transport(&self, i: usize) -> impl Future<Output = Arc<dyn Transport>> {
        (self.transport)(i)
    }
}

/// `n` handles onto one fresh in-process [`MemoryDht`]: the DHT half of a [`network`] for any
/// transport that does not come with its own DHT.
pub async fn memory_dhts(n: usize) -> Vec<Arc<dyn Dht>> {
    let table = MemoryDht::new();
    (0..n).map(|_| Arc::new(table.clone()) as Arc<dyn Dht>).collect()
}

/// What one peer of a scenario starts with.
pub(crate) struct PeerSetup {
    pub(crate) tensors: Vec<Tensor>,
    pub(crate) config: AveragerConfig,
    pub(crate) provider: Option<Arc<dyn StateProvider>>,
}

impl PeerSetup {
    /// A peer with the default state provider.
    pub(crate) fn new(tensors: Vec<Tensor>, config: AveragerConfig) -> Self {
        PeerSetup { tensors, config, provider: None }
    }
}

/// The averagers of one scenario, and the DHT handle and transport each one uses (kept so that
/// scenarios can look at the records through a peer's own node, and dial through its transport).
pub(crate) struct Peers {
    pub(crate) peers: Vec<Averager>,
    pub(crate) dhts: Vec<Arc<dyn Dht>>,
    transports: Vec<Arc<dyn Transport>>,
}

impl Peers {
    /// Starts one averager per setup, peer `i` on DHT handle `i` and `factory.transport(i)`.
    pub(crate) async fn start(
        factory: &impl NetworkFactory,
        setups: Vec<PeerSetup>,
    ) -> Result<Self, Failure> {
        let n = setups.len();
        let dhts = factory.dhts(n).await;
        ensure!(dhts.len() == n, "the network factory returned {} DHT handles for {n} peers", dhts.len());
        let mut peers = Vec::with_capacity(n);
        let mut transports = Vec::with_capacity(n);
        for (i, (setup, dht)) in setups.into_iter().zip(&dhts).enumerate() {
            let transport = factory.transport(i).await;
            transports.push(Arc::clone(&transport));
            let peer = Averager::with_provider(
                setup.tensors,
                Arc::clone(dht),
                transport,
                setup.config,
                setup.provider,
                Registry::global(),
            )
            .await
            .map_err(|e| Failure::new(format!("peer {i} did not start: {e}")))?;
            peers.push(peer);
        }
        Ok(Peers { peers, dhts, transports })
    }

    /// Dials every serving peer from every other peer's transport, before the scenario starts.
    ///
    /// For the scenarios whose `request_timeout` in protocol 10.2 is sub-second (12 and 13): hivemind tuned
    /// them on peers already connected through the DHT's libp2p node, so that timeout never paid
    /// for a connection setup. Here a follower's join includes the dial, and on a loaded machine a
    /// first QUIC handshake took over 0.3 s, so the follower gave up and was left out of the group.
    /// Transports that cache connections (gRPC channels, QUIC connections) reuse these dials. The
    /// other scenarios still dial inside matchmaking, with the default 3 s.
    pub(crate) async fn connect_all(&self) -> Outcome {
        for (i, transport) in self.transports.iter().enumerate() {
            for (j, peer) in self.peers.iter().enumerate() {
                if i == j || peer.mode() == PeerMode::Client {
                    continue;
                }
                match tokio::time::timeout(CONNECT_WAIT, transport.connect(peer.endpoint())).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(Failure::new(format!("peer {i} cannot dial peer {j}: {e}"))),
                    Err(_) => {
                        return Err(Failure::new(format!(
                            "peer {i} did not reach peer {j} within {CONNECT_WAIT:?}"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs one step on every peer at once (`options(i)` for peer `i`), bounded by [`STEP_WAIT`].
    pub(crate) async fn step_all(
        &self,
        options: impl Fn(usize) -> StepOptions,
    ) -> Result<Vec<averager_core::Result<Gathered>>, Failure> {
        let steps = self.peers.iter().enumerate().map(|(i, p)| p.step(options(i)));
        tokio::time::timeout(STEP_WAIT, futures::future::join_all(steps))
            .await
            .map_err(|_| Failure::new(format!("the peers' steps did not all end within {STEP_WAIT:?}")))
    }

    /// The position of the peer serving at `endpoint`.
    pub(crate) fn position(&self, endpoint: &str) -> Result<usize, Failure> {
        self.peers
            .iter()
            .position(|p| p.endpoint() == endpoint)
            .ok_or_else(|| Failure::new(format!("a result names {endpoint:?}, which is none of the peers")))
    }
}

/// Peer `peer`'s tensors as f32 values, one vector per tensor.
pub(crate) async fn values(peer: &Averager) -> Result<Vec<Vec<f32>>, Failure> {
    peer.tensors().await.iter().map(|t| Ok(t.as_f32()?.to_vec())).collect()
}

/// The f32 values of `tensor` (scenario inputs are all f32).
pub(crate) fn f32_values(tensor: &Tensor) -> Result<&[f32], Failure> {
    Ok(tensor.as_f32()?)
}

/// Checks `|got - want| <= atol + 1e-6 |want|` element-wise (numpy's `allclose` with rtol 1e-6).
pub(crate) fn check_close(got: &[f32], want: &[f64], atol: f64, what: &str) -> Outcome {
    ensure!(got.len() == want.len(), "{what}: {} values instead of {}", got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        ensure!((g as f64 - w).abs() <= atol + 1e-6 * w.abs(), "{what}[{i}]: {g} instead of {w}");
    }
    Ok(())
}

/// A seeded generator, so that a failing case fails the same way again.
pub(crate) fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A standard-normal sample (Box-Muller: the workspace has no rand_distr).
pub(crate) fn randn(rng: &mut impl Rng) -> f32 {
    let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// An f32 tensor of `shape` holding `values`.
pub(crate) fn f32s(shape: &[usize], values: impl IntoIterator<Item = f32>) -> Result<Tensor, Failure> {
    Ok(Tensor::from_f32(shape.to_vec(), values.into_iter().collect())?)
}
