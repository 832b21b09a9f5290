//! protocol 6.1: the donor loop (on tokio's paused clock, so refresh times are exact) and the rules of
//! the sharing switches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::*;
use crate::dht::{Dht, DhtCapabilities, DhtDictionary, MemoryDht};
use crate::error::{Error, Result};
use crate::matchmaking::donors_key;
use crate::time::DhtTime;

const PERIOD: Duration = Duration::from_secs(30);
const ME: &str = "mem://me";

/// One store attempt: when (on tokio's clock), what, whether it landed.
#[derive(Debug, Clone, PartialEq)]
struct Store {
    at: Duration,
    priority: Option<f64>,
    expiration: DhtTime,
    ok: bool,
}

/// A [`MemoryDht`] that records every store and can be made to fail.
struct RecordingDht {
    inner: MemoryDht,
    start: Instant,
    stores: Mutex<Vec<Store>>,
    failing: AtomicBool,
}

impl RecordingDht {
    fn new() -> Arc<Self> {
        Arc::new(RecordingDht {
            inner: MemoryDht::new(),
            start: Instant::now(),
            stores: Mutex::default(),
            failing: AtomicBool::new(false),
        })
    }

    fn stores(&self) -> Vec<Store> {
        self.stores.lock().unwrap().clone()
    }

    /// What the DHT says for this peer now.
    async fn record(&self) -> Option<Option<f64>> {
        let records = self.inner.get(&donors_key("run"), true).await.unwrap();
        records.get(ME.as_bytes()).map(|e| decode_priority(&e.value).unwrap())
    }
}

#[async_trait]
impl Dht for RecordingDht {
    fn name(&self) -> &str {
        "recording"
    }

    fn capabilities(&self) -> DhtCapabilities {
        self.inner.capabilities()
    }

    async fn store(&self, key: &str, subkey: &[u8], value: Bytes, expiration: DhtTime) -> Result<bool> {
        let failing = self.failing.load(Ordering::SeqCst);
        let result = if failing {
            Err(Error::Dht("injected".into()))
        } else {
            self.inner.store(key, subkey, value.clone(), expiration).await
        };
        self.stores.lock().unwrap().push(Store {
            at: self.start.elapsed(),
            priority: decode_priority(&value).unwrap(),
            expiration,
            ok: matches!(result, Ok(true)),
        });
        result
    }

    async fn get(&self, key: &str, latest: bool) -> Result<DhtDictionary> {
        self.inner.get(key, latest).await
    }
}

fn start(dht: &Arc<RecordingDht>, sharing: &Arc<StateSharing>) -> DonorLoop {
    spawn_donor_loop(dht.clone(), sharing.clone(), "run", ME.into(), PERIOD)
}

async fn sleep_secs(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s)).await;
}

#[tokio::test(start_paused = true)]
async fn the_record_is_refreshed_at_half_its_period() {
    let dht = RecordingDht::new();
    let sharing = Arc::new(StateSharing::new(true, 2.5).unwrap());
    let _donor = start(&dht, &sharing);
    sleep_secs(14.0).await;
    assert_eq!(dht.stores().len(), 1);
    sleep_secs(2.0).await;
    sleep_secs(30.0).await;
    let stores = dht.stores();
    let times: Vec<_> = stores.iter().map(|s| s.at.as_secs()).collect();
    assert_eq!(times, vec![0, 15, 30, 45]);
    assert!(stores.iter().all(|s| s.ok && s.priority == Some(2.5)));
    assert!(stores.windows(2).all(|w| w[0].expiration < w[1].expiration));
    assert_eq!(dht.record().await, Some(Some(2.5)));
}

#[tokio::test(start_paused = true)]
async fn changes_wake_the_loop_and_switching_off_writes_nil_once() {
    let dht = RecordingDht::new();
    let sharing = Arc::new(StateSharing::new(true, 0.0).unwrap());
    let _donor = start(&dht, &sharing);
    sleep_secs(1.0).await;

    sharing.set_state_sharing_priority(3.0).unwrap();
    sleep_secs(1.0).await;
    sharing.notify_updated();
    sleep_secs(1.0).await;
    // Setting what is already set changes nothing.
    sharing.set_allow_state_sharing(true).unwrap();
    sharing.set_state_sharing_priority(3.0).unwrap();
    sleep_secs(1.0).await;
    let priorities: Vec<_> = dht.stores().iter().map(|s| (s.at.as_secs(), s.priority)).collect();
    assert_eq!(priorities, vec![(0, Some(0.0)), (1, Some(3.0)), (2, Some(3.0))]);

    sharing.set_allow_state_sharing(false).unwrap();
    sleep_secs(1.0).await;
    assert_eq!(dht.record().await, Some(None));
    // Off: no more stores, not even for a priority change or an update.
    sharing.set_state_sharing_priority(7.0).unwrap();
    sharing.notify_updated();
    sleep_secs(100.0).await;
    assert_eq!(dht.stores().len(), 4);

    sharing.set_allow_state_sharing(true).unwrap();
    sleep_secs(1.0).await;
    assert_eq!(dht.record().await, Some(Some(7.0)));
}

#[tokio::test(start_paused = true)]
async fn dht_errors_are_retried_until_the_nil_lands() {
    let dht = RecordingDht::new();
    let sharing = Arc::new(StateSharing::new(true, 1.0).unwrap());
    let donor = start(&dht, &sharing);
    sleep_secs(1.0).await;
    dht.failing.store(true, Ordering::SeqCst);
    sharing.set_allow_state_sharing(false).unwrap();
    sleep_secs(1.0).await;
    assert_eq!(dht.record().await, Some(Some(1.0)), "the nil failed to land");
    dht.failing.store(false, Ordering::SeqCst);
    sleep_secs(15.0).await;
    assert_eq!(dht.record().await, Some(None));
    let oks: Vec<_> = dht.stores().iter().map(|s| (s.priority, s.ok)).collect();
    assert_eq!(oks, vec![(Some(1.0), true), (None, false), (None, true)]);
    assert!(!donor.is_finished());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_loop_stops_it() {
    let dht = RecordingDht::new();
    let sharing = Arc::new(StateSharing::new(true, 1.0).unwrap());
    drop(start(&dht, &sharing));
    sleep_secs(100.0).await;
    assert!(dht.stores().len() <= 1);
}

#[test]
fn client_rules_and_finite_priorities() {
    let client = StateSharing::client();
    assert!(client.is_client());
    assert!(matches!(client.set_allow_state_sharing(true), Err(Error::Config(_))));
    assert!(matches!(client.set_state_sharing_priority(1.0), Err(Error::Config(_))));
    client.set_allow_state_sharing(false).unwrap();
    client.set_state_sharing_priority(0.0).unwrap();
    assert_eq!(client.declaration(), None);

    assert!(matches!(StateSharing::new(true, f64::NAN), Err(Error::Config(_))));
    let node = StateSharing::new(false, 1.0).unwrap();
    assert!(matches!(node.set_state_sharing_priority(f64::INFINITY), Err(Error::Config(_))));
    assert_eq!((node.allow_state_sharing(), node.state_sharing_priority()), (false, 1.0));
    assert_eq!(node.declaration(), None);
    node.set_allow_state_sharing(true).unwrap();
    assert_eq!(node.declaration(), Some(1.0));
}
