//! protocol 6 in the averager: its donor declarations, what it serves to newcomers (the default
//! state provider: `{"group_key": bits}` and the averaged tensors), and downloading.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tracing::Instrument;
use tracing::field::Empty;

use super::telemetry::{CountingTransport, Tally};
use super::{Averager, Inner};
use crate::compression::Compression;
use crate::dht::Dht;
use crate::error::{Error, Result};
use crate::state::{
    DonorLoop, FixedState, StateProvider, StateSharing, StateSnapshot, load_state_from_peers, serve_download,
    spawn_donor_loop,
};
use crate::tensor::Tensor;
use crate::transport::{DownloadData, MessageStream};

/// The most state bytes a download buffers before giving up on a donor.
const MAX_STATE_BYTES: usize = 16 << 30;

/// A downloaded state: the donor's metadata (msgpack) and tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct AveragerState {
    /// The donor's metadata, msgpack-encoded (`{"group_key": ...}` for the default provider).
    pub metadata: Vec<u8>,
    /// The donor's tensors.
    pub tensors: Vec<Tensor>,
}

impl AveragerState {
    /// The metadata decoded as `T`.
    ///
    /// # Errors
    /// [`Error::Protocol`] when it is not a `T`.
    pub fn metadata_as<T: DeserializeOwned>(&self) -> Result<T> {
        rmp_serde::from_slice(&self.metadata).map_err(|e| {
            Error::protocol(averager_proto::MessageCode::ProtocolViolation, format!("state metadata: {e}"))
        })
    }
}

/// The state-sharing pieces an averager owns.
pub(super) struct StateParts {
    dht: Arc<dyn Dht>,
    sharing: Arc<StateSharing>,
    codec: Arc<dyn Compression>,
    provider: Option<Arc<dyn StateProvider>>,
    donor: Mutex<Option<DonorLoop>>,
}

impl StateParts {
    pub(super) fn new(
        dht: Arc<dyn Dht>,
        sharing: Arc<StateSharing>,
        codec: Arc<dyn Compression>,
        provider: Option<Arc<dyn StateProvider>>,
    ) -> Self {
        StateParts { dht, sharing, codec, provider, donor: Mutex::new(None) }
    }

    pub(super) fn stop(&self) {
        self.donor.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

impl Inner {
    /// Starts declaring this peer as a state donor (non-CLIENT peers only, protocol 6.1).
    pub(super) fn start_donor_loop(&self) {
        if self.mode == crate::matchmaking::PeerMode::Client {
            return;
        }
        let donor = spawn_donor_loop(
            Arc::clone(&self.state.dht),
            Arc::clone(&self.state.sharing),
            &self.config.prefix,
            self.endpoint.clone(),
            self.config.declare_state_period,
        );
        *self.state.donor.lock().unwrap_or_else(PoisonError::into_inner) = Some(donor);
    }

    /// After every all-reduce update: re-announce the donor record (protocol 4.8, 6.1).
    pub(super) fn after_update(&self) {
        self.state.sharing.notify_updated();
    }

    /// Serves `rpc_download_state` (protocol 6.2).
    pub(super) async fn serve_state(&self) -> Result<MessageStream<DownloadData>> {
        let codec = Arc::clone(&self.state.codec);
        let sharing = &self.state.sharing;
        match &self.state.provider {
            Some(provider) => serve_download(sharing, provider.as_ref(), codec).await,
            // Nothing is copied unless sharing is on.
            None if !sharing.allow_state_sharing() => Ok(Box::pin(futures::stream::empty())),
            None => serve_download(sharing, &FixedState::new(self.own_state().await?), codec).await,
        }
    }

    /// The default provider (protocol 6.2): `{"group_key": bits}` and the averaged tensors, copied
    /// under the tensor lock so the stream never changes mid-way (protocol 11.13).
    ///
    /// **\[averager\]** while an all-reduce runs, the tensors as they were when it began: the
    /// lock is held for the whole round, which may wait out a dead peer's timeouts, and a download
    /// that waited for it would run out of its own chunk timeout and take this live donor for a
    /// dead one (hivemind's donor waits).
    async fn own_state(&self) -> Result<StateSnapshot> {
        let bits = self.bits.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let tensors = self.current_tensors().await;
        Ok(StateSnapshot::with_metadata(&BTreeMap::from([("group_key", bits)]), tensors)?
            .with_infos(self.infos.clone()))
    }
}

impl Inner {
    /// A copy of the tensors: the ones a running all-reduce began with, else the current ones.
    async fn current_tensors(&self) -> Vec<Tensor> {
        let mut round = self.round_tensors.subscribe();
        loop {
            if let Some(tensors) = round.borrow_and_update().as_ref() {
                return tensors.to_vec();
            }
            tokio::select! {
                tensors = self.tensors.lock() => return tensors.clone(),
                _ = round.changed() => {}
            }
        }
    }
}

impl Averager {
    /// Whether other peers may download this peer's state.
    pub fn allow_state_sharing(&self) -> bool {
        self.inner.state.sharing.allow_state_sharing()
    }

    /// Lets (or stops letting) other peers download this peer's state; takes effect in the DHT at
    /// once.
    ///
    /// # Errors
    /// [`Error::Config`] when a CLIENT tries to share.
    pub fn set_allow_state_sharing(&self, allow: bool) -> Result<()> {
        self.inner.state.sharing.set_allow_state_sharing(allow)
    }

    /// This peer's donor priority (higher is preferred).
    pub fn state_sharing_priority(&self) -> f64 {
        self.inner.state.sharing.state_sharing_priority()
    }

    /// Changes this peer's donor priority.
    ///
    /// # Errors
    /// [`Error::Config`] for a non-finite value, or a nonzero one on a CLIENT.
    pub fn set_state_sharing_priority(&self, priority: f64) -> Result<()> {
        self.inner.state.sharing.set_state_sharing_priority(priority)
    }

    /// Downloads the state of the best donor under this prefix (protocol 6.3): `None` when there is
    /// no donor or none succeeded. Each chunk must arrive within `next_chunk_timeout` (else
    /// `request_timeout`); `timeout` bounds the whole download.
    ///
    /// What comes back is one consistent state of the donor: with the default state, its tensors
    /// between two rounds, or, when the donor is averaging at that moment, the tensors it had
    /// when that round began (a donor serves at once rather than after its round). A donor with
    /// its own state provider serves whatever that provider returns.
    ///
    /// Runs in a `state_download` span recording the donor that delivered, the bytes received
    /// and the duration.
    ///
    /// # Errors
    /// The DHT's error when the donors cannot be listed.
    pub async fn load_state_from_peers(&self, timeout: Option<Duration>) -> Result<Option<AveragerState>> {
        let span = tracing::info_span!("state_download", donor = Empty, bytes = Empty, seconds = Empty);
        let started = Instant::now();
        // Its own counter, so a download never counts into a running step's traffic.
        let traffic = Arc::new(Tally::default());
        let transport = CountingTransport::new(Arc::clone(&self.inner.transport), Arc::clone(&traffic));
        let loaded = self.download(&transport, timeout).instrument(span.clone()).await;
        span.record("seconds", started.elapsed().as_secs_f64());
        span.record("bytes", traffic.received());
        if let Ok(Some(_)) = &loaded
            && let Some(donor) = traffic.last_dialled()
        {
            span.record("donor", donor.as_str());
        }
        loaded
    }

    async fn download(
        &self,
        transport: &CountingTransport,
        timeout: Option<Duration>,
    ) -> Result<Option<AveragerState>> {
        let inner = &self.inner;
        let chunk_timeout = inner.config.next_chunk_timeout.unwrap_or(inner.config.request_timeout);
        let loaded = load_state_from_peers(
            inner.state.dht.as_ref(),
            transport,
            inner.registry,
            &inner.config.prefix,
            &inner.endpoint,
            chunk_timeout,
            timeout,
            MAX_STATE_BYTES,
        )
        .await?;
        Ok(loaded.map(|(metadata, tensors)| AveragerState { metadata, tensors }))
    }
}
