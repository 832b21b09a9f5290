//! The Dht suite against the in-process MemoryDht (one node, a five-node swarm, tight limits), and
//! proof that the suite catches backends that break the record rules.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use averager_conformance::dht::{self, DhtFactory};
use averager_conformance::{Outcome, block_on_case, dht_suite};
use averager_core::dht::{DhtCapabilities, DhtDictionary, DhtEntry, MemoryDht, MemoryDhtSettings};
use averager_core::time::DhtTime;
use averager_core::{Dht, Result};
use bytes::Bytes;

fn swarm_of(dht: &MemoryDht, n: usize) -> Vec<Arc<dyn Dht>> {
    (0..n).map(|_| Arc::new(dht.clone()) as Arc<dyn Dht>).collect::<Vec<_>>()
}

dht_suite!(memory_single, || async { vec![Arc::new(MemoryDht::new()) as Arc<dyn Dht>] }, lacks: [small_subkey_limit]);

dht_suite!(memory_swarm, || async { swarm_of(&MemoryDht::new(), 5) }, lacks: [small_subkey_limit]);

// Small limits, so the subkey-limit case (skipped above the suite's cap) and the over-limit value
// check run against MemoryDht too.
dht_suite!(memory_limited, || async {
    let settings = MemoryDhtSettings { max_value_bytes: 4096, max_subkeys_per_key: 64, ..Default::default() };
    swarm_of(&MemoryDht::with_settings(settings), 3)
});

/// Keeps the earlier entry when a subkey is stored again: any re-store "succeeds" but changes nothing.
#[derive(Clone, Default)]
struct KeepsFirstEntry(MemoryDht);

#[async_trait]
impl Dht for KeepsFirstEntry {
    fn name(&self) -> &str {
        "keeps-first-entry"
    }

    fn capabilities(&self) -> DhtCapabilities {
        self.0.capabilities()
    }

    async fn store(&self, key: &str, subkey: &[u8], value: Bytes, expiration: DhtTime) -> Result<bool> {
        if self.0.get(key, true).await?.contains_key(subkey) {
            return Ok(true);
        }
        self.0.store(key, subkey, value, expiration).await
    }

    async fn get(&self, key: &str, latest: bool) -> Result<DhtDictionary> {
        self.0.get(key, latest).await
    }
}

/// Stores correctly but also returns entries whose expiration has passed.
#[derive(Clone, Default)]
struct ReturnsExpired {
    inner: MemoryDht,
    everything: Arc<Mutex<HashMap<String, DhtDictionary>>>,
}

#[async_trait]
impl Dht for ReturnsExpired {
    fn name(&self) -> &str {
        "returns-expired"
    }

    fn capabilities(&self) -> DhtCapabilities {
        self.inner.capabilities()
    }

    async fn store(&self, key: &str, subkey: &[u8], value: Bytes, expiration: DhtTime) -> Result<bool> {
        let stored = self.inner.store(key, subkey, value.clone(), expiration).await?;
        if stored {
            let mut all = self.everything.lock().unwrap();
            all.entry(key.to_owned())
                .or_default()
                .insert(Bytes::copy_from_slice(subkey), DhtEntry { value, expiration });
        }
        Ok(stored)
    }

    async fn get(&self, key: &str, latest: bool) -> Result<DhtDictionary> {
        let mut live = self.inner.get(key, latest).await?;
        if let Some(remembered) = self.everything.lock().unwrap().get(key) {
            for (subkey, entry) in remembered {
                live.entry(subkey.clone()).or_insert_with(|| entry.clone());
            }
        }
        Ok(live)
    }
}

fn keeps_first() -> impl DhtFactory {
    || async { vec![Arc::new(KeepsFirstEntry::default()) as Arc<dyn Dht>] }
}

fn returns_expired() -> impl DhtFactory {
    || async {
        let dht = ReturnsExpired::default();
        (0..3).map(|_| Arc::new(dht.clone()) as Arc<dyn Dht>).collect::<Vec<_>>()
    }
}

fn expect_caught(case: &str, outcome: Outcome) {
    match outcome {
        Err(failure) => eprintln!("{case} caught the broken backend: {failure}"),
        Ok(()) => panic!("{case} passed a backend that breaks its promise"),
    }
}

#[test]
fn the_suite_catches_a_backend_that_keeps_the_earlier_entry() {
    let f = keeps_first();
    expect_caught(
        "later_expiration_replaces_the_entry",
        block_on_case(dht::later_expiration_replaces_the_entry(&f)),
    );
    expect_caught("subkeys_are_independent", block_on_case(dht::subkeys_are_independent(&f)));
    expect_caught(
        "withdrawal_overrides_declaration",
        block_on_case(dht::withdrawal_overrides_declaration(&f)),
    );
    expect_caught(
        "concurrent_writers_of_one_subkey_leave_the_latest",
        block_on_case(dht::concurrent_writers_of_one_subkey_leave_the_latest(&f)),
    );
    expect_caught("earlier_expiration_is_refused", block_on_case(dht::earlier_expiration_is_refused(&f)));
    expect_caught("equal_expiration_is_refused", block_on_case(dht::equal_expiration_is_refused(&f)));
}

#[test]
fn the_suite_catches_a_backend_that_returns_expired_entries() {
    let f = returns_expired();
    expect_caught("entries_expire", block_on_case(dht::entries_expire(&f)));
    // The rules it does keep still pass, so the failure above is about expiry and nothing else.
    block_on_case(dht::store_then_get_returns_value_and_expiration(&f)).unwrap();
    block_on_case(dht::later_expiration_replaces_the_entry(&f)).unwrap();
}

#[test]
fn run_all_runs_every_case_and_they_pass_on_memory() {
    let f = || async { swarm_of(&MemoryDht::new(), 2) };
    let outcomes = block_on_case(async {
        let outcomes = dht::run_all(&f).await;
        assert!(outcomes.len() >= 18, "only {} cases", outcomes.len());
        let mut names: Vec<_> = outcomes.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), outcomes.len(), "case names repeat");
        for (name, outcome) in &outcomes {
            assert!(outcome.is_ok(), "{name}: {outcome:?}");
        }
        Ok(())
    });
    outcomes.unwrap();
}

#[test]
fn an_empty_swarm_is_a_failure_not_a_panic() {
    let f = || async { Vec::<Arc<dyn Dht>>::new() };
    assert!(block_on_case(dht::missing_key_is_empty(&f)).is_err());
}
