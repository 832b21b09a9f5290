//! protocol 2.3: an in-process DHT with the full dictionary-record contract.
//!
//! Every clone of a [`MemoryDht`] shares one table, so peers in one process that each hold a clone
//! form one swarm. It is the reference backend of the conformance suite and the DHT of the
//! averager's own end-to-end tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Dht, DhtCapabilities, DhtDictionary, DhtEntry};
use crate::error::{Error, Result};
use crate::time::{DhtTime, dht_now};

/// Below this many stored entries the table is never swept for size; sweeping a small table
/// buys nothing.
const MIN_SWEEP_THRESHOLD: usize = 1024;

/// Seconds between time-driven sweeps, so expired entries of keys nobody reads again go away
/// even when few new entries arrive.
const SWEEP_INTERVAL: f64 = 60.0;

/// Settings of a [`MemoryDht`] (its registry config, e.g. `{"max_value_bytes": 65536}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryDhtSettings {
    /// The largest value stored, in bytes; a larger one is an error. Default 1 MiB.
    pub max_value_bytes: usize,
    /// The most live subkeys one key holds; further new subkeys are refused. Default 10 000.
    pub max_subkeys_per_key: usize,
    /// What [`Dht::client_mode`] reports. Default `false`.
    pub client_mode: bool,
}

impl Default for MemoryDhtSettings {
    fn default() -> Self {
        MemoryDhtSettings { max_value_bytes: 1 << 20, max_subkeys_per_key: 10_000, client_mode: false }
    }
}

/// An in-process [`Dht`]: one table shared by every clone.
///
/// Cheap to clone; give each peer of a test swarm its own clone. Expired entries are purged when
/// their key is next touched, and by an occasional sweep of the whole table (when it has doubled
/// since the last sweep, or a minute has passed), so memory stays proportional to the live entries.
#[derive(Clone, Default)]
pub struct MemoryDht {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    settings: MemoryDhtSettings,
    table: Mutex<Table>,
}

impl MemoryDht {
    /// The registry name of this backend.
    pub const NAME: &'static str = "memory";

    /// A new, empty table with default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new, empty table with `settings`.
    pub fn with_settings(settings: MemoryDhtSettings) -> Self {
        MemoryDht { shared: Arc::new(Shared { settings, table: Mutex::default() }) }
    }

    /// The settings this table was made with.
    pub fn settings(&self) -> &MemoryDhtSettings {
        &self.shared.settings
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // The table's invariants hold between statements that cannot panic, so a panic elsewhere
        // while the lock was held leaves nothing half-done; keep serving rather than cascade.
        self.shared.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for MemoryDht {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The table may hold millions of entries; its size is what a log needs.
        let (keys, entries) = {
            let table = self.table();
            (table.records.len(), table.entries)
        };
        f.debug_struct("MemoryDht")
            .field("settings", &self.shared.settings)
            .field("keys", &keys)
            .field("entries", &entries)
            .finish()
    }
}

#[async_trait]
impl Dht for MemoryDht {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn capabilities(&self) -> DhtCapabilities {
        DhtCapabilities {
            max_value_bytes: self.shared.settings.max_value_bytes,
            max_subkeys_per_key: self.shared.settings.max_subkeys_per_key,
        }
    }

    async fn store(&self, key: &str, subkey: &[u8], value: Bytes, expiration: DhtTime) -> Result<bool> {
        let settings = &self.shared.settings;
        if !expiration.is_finite() {
            return Err(Error::Dht(format!("expiration {expiration} of {key:?} is not finite")));
        }
        if value.len() > settings.max_value_bytes {
            return Err(Error::Dht(format!(
                "value of {} bytes under {key:?} exceeds the limit of {} bytes",
                value.len(),
                settings.max_value_bytes
            )));
        }
        let now = dht_now();
        Ok(self.table().store(settings, key, subkey, value, expiration, now))
    }

    async fn get(&self, key: &str, _latest: bool) -> Result<DhtDictionary> {
        // One table is every replica, so every read is already the latest.
        Ok(self.table().get(key, dht_now()))
    }

    fn client_mode(&self) -> bool {
        self.shared.settings.client_mode
    }
}

/// The shared state. Takes `now` as an argument so the expiry rules are testable without waiting.
#[derive(Default)]
struct Table {
    records: HashMap<String, DhtDictionary>,
    /// Entries held, expired-but-unpurged ones included.
    entries: usize,
    /// A sweep runs once `entries` exceeds this.
    sweep_above: usize,
    /// A sweep runs once the clock reaches this.
    next_sweep_at: DhtTime,
}

impl Table {
    /// Applies the store rules of [`Dht::store`] to an already validated request.
    fn store(
        &mut self,
        settings: &MemoryDhtSettings,
        key: &str,
        subkey: &[u8],
        value: Bytes,
        expiration: DhtTime,
        now: DhtTime,
    ) -> bool {
        self.maybe_sweep(now);
        if expiration <= now {
            return false;
        }
        self.purge_key(key, now);
        let entry = DhtEntry { value, expiration };
        let Some(dict) = self.records.get_mut(key) else {
            if settings.max_subkeys_per_key == 0 {
                return false;
            }
            self.records
                .insert(key.to_owned(), DhtDictionary::from([(Bytes::copy_from_slice(subkey), entry)]));
            self.entries += 1;
            return true;
        };
        let held = dict.len();
        match dict.get_mut(subkey) {
            Some(old) if old.expiration >= expiration => false,
            Some(old) => {
                *old = entry;
                true
            }
            None if held >= settings.max_subkeys_per_key => false,
            None => {
                dict.insert(Bytes::copy_from_slice(subkey), entry);
                self.entries += 1;
                true
            }
        }
    }

    fn get(&mut self, key: &str, now: DhtTime) -> DhtDictionary {
        self.maybe_sweep(now);
        self.purge_key(key, now);
        self.records.get(key).cloned().unwrap_or_default()
    }

    /// Drops the expired entries of `key`, and the key itself once it holds none.
    fn purge_key(&mut self, key: &str, now: DhtTime) {
        let Some(dict) = self.records.get_mut(key) else { return };
        let before = dict.len();
        dict.retain(|_, entry| entry.expiration > now);
        self.entries -= before - dict.len();
        if dict.is_empty() {
            self.records.remove(key);
        }
    }

    /// Sweeps the whole table when it has grown to twice its live size or the interval is up.
    ///
    /// Growth-triggered sweeps cost O(entries) after at least entries/2 inserts, so stores stay
    /// amortised O(log n) while memory stays within twice the peak live size.
    fn maybe_sweep(&mut self, now: DhtTime) {
        if self.entries <= self.sweep_above && now < self.next_sweep_at {
            return;
        }
        self.records.retain(|_, dict| {
            dict.retain(|_, entry| entry.expiration > now);
            !dict.is_empty()
        });
        self.entries = self.records.values().map(|dict| dict.len()).sum();
        self.sweep_above = (2 * self.entries).max(MIN_SWEEP_THRESHOLD);
        self.next_sweep_at = now + SWEEP_INTERVAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: DhtTime = 1_700_000_000.0;

    fn settings() -> MemoryDhtSettings {
        MemoryDhtSettings::default()
    }

    fn val(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn settings_parse_with_defaults_for_missing_fields() {
        let parsed: MemoryDhtSettings = serde_json::from_str(r#"{"max_value_bytes": 10}"#).unwrap();
        assert_eq!(parsed, MemoryDhtSettings { max_value_bytes: 10, ..MemoryDhtSettings::default() });
        let parsed: MemoryDhtSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(parsed, MemoryDhtSettings::default());
        assert_eq!(parsed.max_value_bytes, 1 << 20);
        assert_eq!(parsed.max_subkeys_per_key, 10_000);
        assert!(!parsed.client_mode);
    }

    #[test]
    fn the_registry_builds_it_from_json_settings() {
        use crate::registry::{PluginConfig, Registry};
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let config =
                PluginConfig::new(serde_json::json!({"max_subkeys_per_key": 5, "client_mode": true}));
            let dht = Registry::global().dht(MemoryDht::NAME, config).await.unwrap();
            assert_eq!(dht.name(), MemoryDht::NAME);
            assert_eq!(
                dht.capabilities(),
                DhtCapabilities { max_value_bytes: 1 << 20, max_subkeys_per_key: 5 }
            );
            assert!(dht.client_mode());
            let bad = PluginConfig::new(serde_json::json!({"max_value_bytes": "big"}));
            assert!(matches!(Registry::global().dht(MemoryDht::NAME, bad).await, Err(Error::Config(_))));
        });
    }

    #[test]
    fn capabilities_and_client_mode_follow_the_settings() {
        let dht = MemoryDht::with_settings(MemoryDhtSettings {
            max_value_bytes: 7,
            max_subkeys_per_key: 3,
            client_mode: true,
        });
        assert_eq!(dht.capabilities(), DhtCapabilities { max_value_bytes: 7, max_subkeys_per_key: 3 });
        assert!(dht.client_mode());
        assert!(!MemoryDht::new().client_mode());
        assert_eq!(dht.name(), "memory");
    }

    #[test]
    fn clones_share_one_table_and_new_tables_do_not() {
        let a = MemoryDht::new();
        let b = a.clone();
        let other = MemoryDht::new();
        let exp = dht_now() + 60.0;
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            assert!(a.store("k", b"s", val("v"), exp).await.unwrap());
            assert_eq!(b.get("k", false).await.unwrap().len(), 1);
            assert!(other.get("k", false).await.unwrap().is_empty());
        });
    }

    #[test]
    fn expired_entries_are_purged_when_their_key_is_touched() {
        let mut table = Table::default();
        let s = settings();
        assert!(table.store(&s, "k", b"a", val("1"), T0 + 1.0, T0));
        assert!(table.store(&s, "k", b"b", val("2"), T0 + 5.0, T0));
        assert!(table.store(&s, "other", b"a", val("3"), T0 + 1.0, T0));
        assert_eq!(table.entries, 3);

        let live = table.get("k", T0 + 2.0);
        assert_eq!(live.keys().collect::<Vec<_>>(), vec![&Bytes::from_static(b"b")]);
        // "k"'s expired entry is gone from memory; "other" has not been touched yet.
        assert_eq!(table.entries, 2);
        assert_eq!(table.records["k"].len(), 1);
        assert_eq!(table.records["other"].len(), 1);

        assert!(table.get("other", T0 + 2.0).is_empty());
        assert!(!table.records.contains_key("other"), "an emptied key is dropped");
        assert_eq!(table.entries, 1);
    }

    #[test]
    fn an_entry_is_live_until_exactly_its_expiration() {
        let mut table = Table::default();
        let s = settings();
        assert!(table.store(&s, "k", b"a", val("1"), T0 + 1.0, T0));
        assert_eq!(table.get("k", T0 + 0.999).len(), 1);
        assert!(table.get("k", T0 + 1.0).is_empty());
        // At its expiration a store is already in the past.
        assert!(!table.store(&s, "k", b"a", val("1"), T0 + 1.0, T0 + 1.0));
    }

    #[test]
    fn an_expired_entry_does_not_block_an_earlier_expiration() {
        let mut table = Table::default();
        let s = settings();
        assert!(table.store(&s, "k", b"a", val("old"), T0 + 10.0, T0));
        // After it expired, a store with any future expiration wins, even one below the old one
        // had the clock not passed it.
        assert!(table.store(&s, "k", b"a", val("new"), T0 + 11.0, T0 + 10.5));
        let live = table.get("k", T0 + 10.5);
        assert_eq!(live[b"a".as_slice()], DhtEntry { value: val("new"), expiration: T0 + 11.0 });
        assert_eq!(table.entries, 1);
    }

    #[test]
    fn the_subkey_limit_counts_only_live_subkeys() {
        let mut table = Table::default();
        let s = MemoryDhtSettings { max_subkeys_per_key: 2, ..settings() };
        assert!(table.store(&s, "k", b"a", val("1"), T0 + 1.0, T0));
        assert!(table.store(&s, "k", b"b", val("2"), T0 + 9.0, T0));
        assert!(!table.store(&s, "k", b"c", val("3"), T0 + 9.0, T0), "a third new subkey is refused");
        assert!(table.store(&s, "k", b"a", val("1"), T0 + 2.0, T0), "an existing subkey still updates");
        assert!(table.store(&s, "other", b"c", val("3"), T0 + 9.0, T0), "the limit is per key");
        // Once "a" expires its slot is free again.
        assert!(table.store(&s, "k", b"c", val("3"), T0 + 9.0, T0 + 2.5));
        assert_eq!(table.get("k", T0 + 2.5).len(), 2);
    }

    #[test]
    fn a_zero_subkey_limit_refuses_everything_and_keeps_nothing() {
        let mut table = Table::default();
        let s = MemoryDhtSettings { max_subkeys_per_key: 0, ..settings() };
        assert!(!table.store(&s, "k", b"a", val("1"), T0 + 1.0, T0));
        assert!(table.records.is_empty());
        assert_eq!(table.entries, 0);
    }

    #[test]
    fn a_sweep_drops_expired_entries_of_keys_nobody_reads() {
        let mut table = Table::default();
        let s = settings();
        // The first operation sweeps (the clock starts past `next_sweep_at`), setting the interval.
        table.get("nothing", T0);
        for i in 0..=MIN_SWEEP_THRESHOLD {
            assert!(table.store(&s, &format!("k{i}"), b"a", val("x"), T0 + 1.0, T0));
        }
        assert_eq!(table.entries, MIN_SWEEP_THRESHOLD + 1);
        assert_eq!(table.records.len(), MIN_SWEEP_THRESHOLD + 1);

        // The table is past its threshold, so the next operation sweeps; every old entry expired.
        assert!(table.store(&s, "fresh", b"a", val("x"), T0 + 10.0, T0 + 2.0));
        assert_eq!(table.records.len(), 1);
        assert_eq!(table.entries, 1);
        assert_eq!(table.sweep_above, MIN_SWEEP_THRESHOLD);
    }

    #[test]
    fn the_sweep_threshold_follows_the_live_size() {
        let mut table = Table::default();
        let s = settings();
        let n = 3 * MIN_SWEEP_THRESHOLD;
        for i in 0..n {
            assert!(table.store(&s, &format!("k{i}"), b"a", val("x"), T0 + 100.0, T0));
        }
        // All live, so sweeps removed nothing but raised the bar to twice the live size.
        assert_eq!(table.entries, n);
        assert!(table.sweep_above >= n, "threshold {} below live size {n}", table.sweep_above);
        assert!(table.sweep_above <= 2 * n);
    }

    #[test]
    fn an_idle_table_is_swept_once_the_interval_passes() {
        let mut table = Table::default();
        let s = settings();
        assert!(table.store(&s, "a", b"a", val("x"), T0 + 1.0, T0));
        assert!(table.store(&s, "b", b"a", val("x"), T0 + 1.0, T0));
        // Well below the size threshold, yet a read of an unrelated key after the interval sweeps.
        table.get("c", T0 + 2.0);
        assert_eq!(table.entries, 2, "no sweep before the interval");
        table.get("c", T0 + SWEEP_INTERVAL + 1.0);
        assert_eq!(table.entries, 0);
        assert!(table.records.is_empty());
    }

    #[test]
    fn errors_leave_the_table_unchanged() {
        let dht = MemoryDht::with_settings(MemoryDhtSettings { max_value_bytes: 4, ..settings() });
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let exp = dht_now() + 60.0;
            assert!(matches!(dht.store("k", b"a", val("12345"), exp).await, Err(Error::Dht(_))));
            assert!(dht.store("k", b"a", val("1234"), exp).await.unwrap());
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                assert!(matches!(dht.store("k", b"b", val("1"), bad).await, Err(Error::Dht(_))));
            }
            assert_eq!(dht.get("k", true).await.unwrap().len(), 1);
        });
    }

    #[test]
    fn debug_shows_sizes_not_contents() {
        let dht = MemoryDht::new();
        let text = format!("{dht:?}");
        assert!(text.contains("entries: 0"), "{text}");
    }
}
