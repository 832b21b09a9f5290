//! protocol 10.2 scenario 10: state sharing between averagers, with a custom state provider (the
//! seed's overridable `get_current_state`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use averager_core::records::{decode_priority, donors_key};
use averager_core::state::{StateProvider, StateSnapshot};
use averager_core::{Averager, AveragerConfig, Dht, Tensor};

use super::network::{NetworkFactory, PeerSetup, Peers, f32s, randn, rng};
use crate::{Failure, Outcome, ensure};

const PREFIX: &str = "demo-run";

/// How long a donor record may take to show a change of sharing before the case fails.
const RECORD_WAIT: Duration = Duration::from_secs(10);

/// How often the donor record is read while waiting for it: the DHT has no change notifications.
const RECORD_POLL: Duration = Duration::from_millis(20);

/// A provider whose state can be replaced, counting how often it is asked.
#[derive(Default)]
struct Counting {
    state: Mutex<StateSnapshot>,
    calls: AtomicUsize,
}

impl Counting {
    fn set(&self, snapshot: StateSnapshot) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl StateProvider for Counting {
    async fn current_state(&self) -> averager_core::Result<StateSnapshot> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.state.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Meta {
    x: i64,
}

/// Waits until `donor`'s record, read through `dht`, says `priority` (`None`: not sharing, whether
/// the record says nil or was never written).
async fn donor_record_is(dht: &Arc<dyn Dht>, donor: &Averager, priority: Option<f64>) -> Outcome {
    let deadline = tokio::time::Instant::now() + RECORD_WAIT;
    loop {
        let records = dht.get(&donors_key(PREFIX), true).await?;
        let now = match records.get(donor.endpoint().as_bytes()) {
            Some(entry) => decode_priority(&entry.value)?,
            None => None,
        };
        if now == priority {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the donor record of {} stayed {now:?} for {RECORD_WAIT:?}; wanted {priority:?}",
            donor.endpoint()
        );
        tokio::time::sleep(RECORD_POLL).await;
    }
}

/// protocol 10.2 scenario 10: 2 peers, the donor's provider returns `({x: 123}, (randn(3),
/// randint(0, 5, (3,))))` and counts calls. A download gets exactly that (1 call); after the donor's
/// state changes, a new download reflects it (2 calls); once the donor stops sharing, a download
/// returns None; once it shares again, a download works (3 calls).
pub async fn load_state_from_peers(factory: &impl NetworkFactory) -> Outcome {
    let donor = Arc::new(Counting::default());
    let mut rng = rng(10);
    let tensors =
        vec![f32s(&[3], (0..3).map(|_| randn(&mut rng)))?, Tensor::from_i64(vec![3], vec![1, 4, 2])?];
    donor.set(StateSnapshot::with_metadata(&Meta { x: 123 }, tensors.clone())?);
    let mut setups = Vec::new();
    for i in 0..2 {
        let config = AveragerConfig {
            prefix: PREFIX.into(),
            // Longer than the case: the record must change because sharing changed, not because
            // the loop happened to refresh it.
            declare_state_period: Duration::from_secs(30),
            client_mode: Some(false),
            ..AveragerConfig::default()
        };
        let mut setup = PeerSetup::new(vec![f32s(&[3], [0.0; 3])?], config);
        if i == 0 {
            setup.provider = Some(Arc::clone(&donor) as Arc<dyn StateProvider>);
        }
        setups.push(setup);
    }
    let swarm = Peers::start(factory, setups).await?;
    let (peers, downloader_dht) = (&swarm.peers, &swarm.dhts[1]);
    peers[1].set_allow_state_sharing(false)?;
    donor_record_is(downloader_dht, &peers[0], Some(0.0)).await?;

    let state = peers[1]
        .load_state_from_peers(Some(Duration::from_secs(10)))
        .await?
        .ok_or_else(|| Failure::new("the first download found no donor"))?;
    let meta = state.metadata_as::<Meta>()?;
    ensure!(meta == Meta { x: 123 }, "the first download's metadata is {meta:?}, not {{x: 123}}");
    ensure!(
        state.tensors == tensors,
        "the first download's tensors are {:?}, not {tensors:?}",
        state.tensors
    );
    ensure!(donor.calls() == 1, "the provider was called {} times for one download", donor.calls());

    let changed = vec![f32s(&[3], [7.0, 8.0, 9.0])?, tensors[1].clone()];
    donor.set(StateSnapshot::with_metadata(&Meta { x: 321 }, changed.clone())?);
    let state = peers[1]
        .load_state_from_peers(None)
        .await?
        .ok_or_else(|| Failure::new("the second download found no donor"))?;
    let got = (state.metadata_as::<Meta>()?, state.tensors);
    ensure!(
        got == (Meta { x: 321 }, changed.clone()),
        "after the donor's state changed, a download got {got:?}, not {:?}",
        (Meta { x: 321 }, changed)
    );
    ensure!(donor.calls() == 2, "the provider was called {} times for two downloads", donor.calls());

    peers[0].set_allow_state_sharing(false)?;
    donor_record_is(downloader_dht, &peers[0], None).await?;
    let state = peers[1].load_state_from_peers(None).await?;
    ensure!(state.is_none(), "a download found a state while the only donor did not share: {state:?}");

    peers[0].set_allow_state_sharing(true)?;
    donor_record_is(downloader_dht, &peers[0], Some(0.0)).await?;
    let state = peers[1].load_state_from_peers(None).await?;
    ensure!(state.is_some(), "a download found no state after the donor shared again");
    ensure!(donor.calls() == 3, "the provider was called {} times for three downloads", donor.calls());
    Ok(())
}
