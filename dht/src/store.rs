//! The merging record store: Kademlia's storage with protocol 2.3's rules instead of "last write
//! replaces".
//!
//! Kademlia stores a record by replacing whatever the key held. Here a key holds a dictionary,
//! and every record that arrives (a store's one-entry delta, a replica's whole dictionary) is
//! merged into it entry by entry: for one subkey the later expiration wins and a tie keeps the
//! old entry. So writers of different subkeys under one key never erase each other, whatever
//! order their records arrive in, and merging is idempotent, commutative and associative: any
//! replica that has seen the same records holds the same dictionary.
//!
//! Bounds, so a hostile peer cannot make a node hold much: every record is decoded under
//! [`RecordLimits`], a key holds at most `max_subkeys_per_key` live subkeys and at most
//! `max_record_bytes` encoded, the store at most `max_records` keys, of which any one remote
//! peer may have created at most `max_records_per_peer`. Expired entries never leave the store
//! and are dropped whenever their key is touched, and by [`MergingStore::sweep`].

use std::borrow::Cow;
use std::collections::HashMap;

use averager_core::dht::{DhtDictionary, DhtEntry};
use averager_core::time::{DhtTime, dht_now};
use bytes::Bytes;
use libp2p::PeerId;
use libp2p::kad::store::{self, RecordStore};
use libp2p::kad::{ProviderRecord, Record, RecordKey};

use crate::record::{self, RecordError, RecordLimits};

/// Every bound of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreLimits {
    /// Bounds of one record (and so of one key).
    pub(crate) record: RecordLimits,
    /// The most keys held.
    pub(crate) max_records: usize,
    /// The most keys any one remote peer may have created.
    pub(crate) max_records_per_peer: usize,
}

/// What became of one offered entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Stored: the subkey was new or its entry expires later than the one held.
    Stored,
    /// Refused: the held entry expires at the same time or later, or the offer has expired.
    Stale,
    /// Refused: a new subkey for a key already holding `max_subkeys_per_key` live subkeys.
    KeyFull,
    /// Refused: the record would grow past `max_record_bytes`.
    RecordFull,
    /// Refused: a new key while the store, or the offering peer's share of it, is full.
    StoreFull,
}

/// Applies protocol 2.3's rule to one dictionary, ignoring sizes: the shared core of the store and
/// of the merge of several replicas' answers. `dict` must hold no expired entries.
pub(crate) fn offer_entry(
    dict: &mut DhtDictionary,
    subkey: Bytes,
    entry: DhtEntry,
    max_subkeys: usize,
    now: DhtTime,
) -> Offer {
    if entry.expiration <= now {
        return Offer::Stale;
    }
    let held = dict.len();
    match dict.get_mut(&subkey) {
        Some(old) if old.expiration >= entry.expiration => Offer::Stale,
        Some(old) => {
            *old = entry;
            Offer::Stored
        }
        None if held >= max_subkeys => Offer::KeyFull,
        None => {
            dict.insert(subkey, entry);
            Offer::Stored
        }
    }
}

/// One key's dictionary and what the bounds need to know of it.
#[derive(Debug)]
struct Slot {
    dict: DhtDictionary,
    /// The remote peer whose record created the key, counted against its share; `None` when
    /// this node created it.
    origin: Option<PeerId>,
    /// The sum of the entries' encoded sizes.
    entry_bytes: usize,
}

impl Slot {
    /// Drops expired entries; returns whether any remain.
    fn purge(&mut self, now: DhtTime) -> bool {
        let entry_bytes = &mut self.entry_bytes;
        self.dict.retain(|subkey, entry| {
            let live = entry.expiration > now;
            if !live {
                *entry_bytes -= record::entry_size(subkey, &entry.value);
            }
            live
        });
        !self.dict.is_empty()
    }
}

/// A Kademlia [`RecordStore`] that merges records (see the module docs). It keeps no provider
/// records: this DHT does not use them, and a peer announcing some is simply ignored.
#[derive(Debug)]
pub(crate) struct MergingStore {
    limits: StoreLimits,
    slots: HashMap<RecordKey, Slot>,
    per_peer: HashMap<PeerId, usize>,
}

impl MergingStore {
    pub(crate) fn new(limits: StoreLimits) -> Self {
        MergingStore { limits, slots: HashMap::new(), per_peer: HashMap::new() }
    }

    /// Offers one entry to `key`, on behalf of `origin` (`None`: this node).
    pub(crate) fn offer(
        &mut self,
        key: &RecordKey,
        subkey: Bytes,
        entry: DhtEntry,
        origin: Option<PeerId>,
        now: DhtTime,
    ) -> Offer {
        if entry.expiration <= now {
            return Offer::Stale;
        }
        let limits = self.limits.record;
        let size = record::entry_size(&subkey, &entry.value);
        if !self.purge_key(key, now) {
            // A new key, or one whose entries all expired: the offer creates it.
            if limits.max_subkeys_per_key == 0 {
                return Offer::KeyFull;
            }
            if record::record_size(1, size) > limits.max_record_bytes {
                return Offer::RecordFull;
            }
            if !self.has_room_for_a_key(origin.as_ref(), now) {
                return Offer::StoreFull;
            }
            if let Some(peer) = origin {
                *self.per_peer.entry(peer).or_default() += 1;
            }
            let dict = DhtDictionary::from([(subkey, entry)]);
            self.slots.insert(key.clone(), Slot { dict, origin, entry_bytes: size });
            return Offer::Stored;
        }
        let Some(slot) = self.slots.get_mut(key) else { return Offer::StoreFull };
        // The rule first: a stale offer is stale whatever its size.
        let replaced = match slot.dict.get(&subkey) {
            Some(old) if old.expiration >= entry.expiration => return Offer::Stale,
            Some(old) => Some(record::entry_size(&subkey, &old.value)),
            None if slot.dict.len() >= limits.max_subkeys_per_key => return Offer::KeyFull,
            None => None,
        };
        let entry_bytes = slot.entry_bytes - replaced.unwrap_or(0) + size;
        let count = slot.dict.len() + usize::from(replaced.is_none());
        if record::record_size(count, entry_bytes) > limits.max_record_bytes {
            return Offer::RecordFull;
        }
        slot.dict.insert(subkey, entry);
        slot.entry_bytes = entry_bytes;
        Offer::Stored
    }

    /// Merges a record from `source` (or from this node, `None`); returns how many entries
    /// changed the store.
    ///
    /// # Errors
    /// The record did not decode within the bounds; nothing changed.
    pub(crate) fn merge(
        &mut self,
        key: &RecordKey,
        value: &[u8],
        source: Option<PeerId>,
        now: DhtTime,
    ) -> Result<usize, RecordError> {
        let entries = record::decode(value, &self.limits.record)?;
        Ok(entries
            .into_iter()
            .filter(|(subkey, entry)| {
                if let Err(why) = crate::signed::verify(key, subkey, entry) {
                    tracing::warn!(?source, "refused an entry: {why}");
                    return false;
                }
                self.offer(key, subkey.clone(), entry.clone(), source, now) == Offer::Stored
            })
            .count())
    }

    /// The live entries of `key` (empty when it holds none).
    pub(crate) fn live(&self, key: &RecordKey, now: DhtTime) -> DhtDictionary {
        self.slots.get(key).map(|slot| live_entries(&slot.dict, now)).unwrap_or_default()
    }

    /// Drops every expired entry, and every key left empty.
    pub(crate) fn sweep(&mut self, now: DhtTime) {
        let emptied: Vec<RecordKey> =
            self.slots.iter_mut().filter_map(|(key, slot)| (!slot.purge(now)).then(|| key.clone())).collect();
        for key in emptied {
            self.remove_slot(&key);
        }
    }

    /// How many keys the store holds (expired-but-unswept ones included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Drops the expired entries of `key`, and the key once empty; returns whether it remains.
    fn purge_key(&mut self, key: &RecordKey, now: DhtTime) -> bool {
        let Some(slot) = self.slots.get_mut(key) else { return false };
        if slot.purge(now) {
            return true;
        }
        self.remove_slot(key);
        false
    }

    fn remove_slot(&mut self, key: &RecordKey) {
        let Some(slot) = self.slots.remove(key) else { return };
        if let Some(peer) = slot.origin
            && let Some(count) = self.per_peer.get_mut(&peer)
        {
            *count -= 1;
            if *count == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }

    /// Whether a new key fits, within the store and within `origin`'s share; sweeps once before
    /// saying no, since expired keys may be what fills it.
    fn has_room_for_a_key(&mut self, origin: Option<&PeerId>, now: DhtTime) -> bool {
        let fits = |s: &Self| {
            s.slots.len() < s.limits.max_records
                && origin
                    .is_none_or(|p| s.per_peer.get(p).copied().unwrap_or(0) < s.limits.max_records_per_peer)
        };
        if fits(self) {
            return true;
        }
        self.sweep(now);
        fits(self)
    }

    fn to_record(key: &RecordKey, dict: &DhtDictionary) -> Record {
        // No publisher: a merged dictionary has many writers, and Kademlia treats a record whose
        // publisher is the receiver as one it must not overwrite.
        Record { key: key.clone(), value: record::encode(dict), publisher: None, expires: None }
    }
}

fn live_entries(dict: &DhtDictionary, now: DhtTime) -> DhtDictionary {
    dict.iter().filter(|(_, entry)| entry.expiration > now).map(|(k, e)| (k.clone(), e.clone())).collect()
}

impl RecordStore for MergingStore {
    type RecordsIter<'a> = std::vec::IntoIter<Cow<'a, Record>>;
    type ProvidedIter<'a> = std::iter::Empty<Cow<'a, ProviderRecord>>;

    /// The live part of the key's dictionary, encoded; what a peer's read receives.
    fn get(&self, key: &RecordKey) -> Option<Cow<'_, Record>> {
        let live = self.live(key, dht_now());
        (!live.is_empty()).then(|| Cow::Owned(Self::to_record(key, &live)))
    }

    /// A record this node publishes (Kademlia's `put_record` stores locally first). Remote
    /// records do not come this way: the node merges them itself, knowing who sent them.
    fn put(&mut self, record: Record) -> store::Result<()> {
        match self.merge(&record.key, &record.value, None, dht_now()) {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "refused to store a local record");
                Err(store::Error::ValueTooLarge)
            }
        }
    }

    fn remove(&mut self, key: &RecordKey) {
        self.remove_slot(key);
    }

    /// Every live dictionary, for Kademlia's periodic replication.
    fn records(&self) -> Self::RecordsIter<'_> {
        let now = dht_now();
        self.slots
            .iter()
            .filter_map(|(key, slot)| {
                let live = live_entries(&slot.dict, now);
                (!live.is_empty()).then(|| Cow::Owned(Self::to_record(key, &live)))
            })
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn add_provider(&mut self, _record: ProviderRecord) -> store::Result<()> {
        Ok(())
    }

    fn providers(&self, _key: &RecordKey) -> Vec<ProviderRecord> {
        Vec::new()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        std::iter::empty()
    }

    fn remove_provider(&mut self, _key: &RecordKey, _provider: &PeerId) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: DhtTime = 1_700_000_000.0;

    fn limits() -> StoreLimits {
        StoreLimits {
            record: RecordLimits { max_value_bytes: 100, max_record_bytes: 2000, max_subkeys_per_key: 4 },
            max_records: 6,
            max_records_per_peer: 2,
        }
    }

    fn key(name: &str) -> RecordKey {
        record::record_key(name)
    }

    fn entry(value: &str, expiration: DhtTime) -> DhtEntry {
        DhtEntry { value: Bytes::copy_from_slice(value.as_bytes()), expiration }
    }

    fn sk(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn encoded(entries: &[(&str, DhtEntry)]) -> Vec<u8> {
        let owned: Vec<(Bytes, DhtEntry)> = entries.iter().map(|(k, e)| (sk(k), e.clone())).collect();
        record::encode(owned.iter().map(|(k, e)| (k, e)))
    }

    #[test]
    fn the_later_expiration_wins_and_a_tie_keeps_the_held_entry() {
        let mut store = MergingStore::new(limits());
        let k = key("k");
        assert_eq!(store.offer(&k, sk("a"), entry("old", T0 + 10.0), None, T0), Offer::Stored);
        assert_eq!(store.offer(&k, sk("a"), entry("early", T0 + 5.0), None, T0), Offer::Stale);
        assert_eq!(store.offer(&k, sk("a"), entry("tie", T0 + 10.0), None, T0), Offer::Stale);
        assert_eq!(store.live(&k, T0)[b"a".as_slice()], entry("old", T0 + 10.0));
        assert_eq!(store.offer(&k, sk("a"), entry("new", T0 + 11.0), None, T0), Offer::Stored);
        assert_eq!(store.live(&k, T0)[b"a".as_slice()], entry("new", T0 + 11.0));
        assert_eq!(store.offer(&k, sk("b"), entry("past", T0), None, T0), Offer::Stale);
        assert_eq!(store.live(&k, T0).len(), 1);
    }

    #[test]
    fn merging_is_order_independent_and_idempotent() {
        let records = [
            encoded(&[("a", entry("a1", T0 + 1.0)), ("b", entry("b1", T0 + 5.0))]),
            encoded(&[("a", entry("a2", T0 + 3.0))]),
            encoded(&[("b", entry("b0", T0 + 4.0)), ("c", entry("c1", T0 + 2.0))]),
            encoded(&[("a", entry("a2-tie", T0 + 3.0))]),
        ];
        let k = key("k");
        let mut results = Vec::new();
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]] {
            let mut store = MergingStore::new(limits());
            for i in order {
                store.merge(&k, &records[i], None, T0).expect("valid record");
                // Merging the same record again changes nothing.
                assert_eq!(store.merge(&k, &records[i], None, T0), Ok(0));
            }
            results.push(store.live(&k, T0));
        }
        let first = &results[0];
        assert_eq!(first[b"a".as_slice()].expiration, T0 + 3.0);
        assert_eq!(first[b"b".as_slice()], entry("b1", T0 + 5.0));
        assert_eq!(first[b"c".as_slice()], entry("c1", T0 + 2.0));
        for other in &results {
            // Ties on "a" keep whichever arrived first, so compare the rule's outcome, not values.
            assert_eq!(other.len(), 3);
            assert_eq!(other[b"b".as_slice()], first[b"b".as_slice()]);
            assert_eq!(other[b"c".as_slice()], first[b"c".as_slice()]);
            assert_eq!(other[b"a".as_slice()].expiration, T0 + 3.0);
        }
    }

    #[test]
    fn expired_entries_are_invisible_and_purged() {
        let mut store = MergingStore::new(limits());
        let k = key("k");
        assert_eq!(store.offer(&k, sk("short"), entry("s", T0 + 1.0), None, T0), Offer::Stored);
        assert_eq!(store.offer(&k, sk("long"), entry("l", T0 + 9.0), None, T0), Offer::Stored);
        assert_eq!(store.live(&k, T0 + 1.0).len(), 1, "an entry is gone at its expiration");
        // After expiry the same subkey takes any future expiration, even an earlier one.
        assert_eq!(store.offer(&k, sk("short"), entry("again", T0 + 1.5), None, T0 + 1.2), Offer::Stored);
        store.sweep(T0 + 9.0);
        assert_eq!(store.len(), 0, "a key whose entries all expired is dropped");
        assert!(store.live(&k, T0 + 9.0).is_empty());
    }

    #[test]
    fn records_seen_by_kademlia_hold_only_live_entries() {
        let now = dht_now();
        let mut store = MergingStore::new(limits());
        let (live, dead) = (key("live"), key("dead"));
        assert_eq!(store.offer(&live, sk("a"), entry("x", now + 60.0), None, now - 10.0), Offer::Stored);
        assert_eq!(store.offer(&live, sk("b"), entry("y", now - 1.0), None, now - 10.0), Offer::Stored);
        assert_eq!(store.offer(&dead, sk("a"), entry("z", now - 1.0), None, now - 10.0), Offer::Stored);
        assert!(store.get(&dead).is_none(), "a key holding only expired entries reads as absent");
        let got = store.get(&live).expect("live record");
        assert_eq!(got.publisher, None);
        let entries = record::decode(&got.value, &limits().record).expect("decodes");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, sk("a"));
        let all: Vec<_> = store.records().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].key, live);
    }

    #[test]
    fn a_full_key_refuses_new_subkeys_but_updates_old_ones() {
        let mut store = MergingStore::new(limits());
        let k = key("k");
        for s in ["a", "b", "c", "d"] {
            assert_eq!(store.offer(&k, sk(s), entry("v", T0 + 5.0), None, T0), Offer::Stored);
        }
        assert_eq!(store.offer(&k, sk("e"), entry("v", T0 + 5.0), None, T0), Offer::KeyFull);
        assert_eq!(store.offer(&k, sk("a"), entry("v", T0 + 6.0), None, T0), Offer::Stored);
        // A remote record with a fifth subkey adds what fits and drops the rest.
        let remote = encoded(&[("a", entry("v", T0 + 7.0)), ("z", entry("v", T0 + 7.0))]);
        assert_eq!(store.merge(&k, &remote, Some(PeerId::random()), T0), Ok(1));
        assert_eq!(store.live(&k, T0).len(), 4);
        assert!(!store.live(&k, T0).contains_key(b"z".as_slice()));
    }

    #[test]
    fn a_record_never_grows_past_its_byte_limit() {
        let mut store = MergingStore::new(limits());
        let k = key("k");
        let big = "x".repeat(100);
        let mut stored = 0;
        for i in 0..4 {
            // Four subkeys of 100-byte values and long subkeys exceed 2000 bytes.
            let subkey = Bytes::from(format!("{i:0>400}"));
            match store.offer(&k, subkey, entry(&big, T0 + 5.0), None, T0) {
                Offer::Stored => stored += 1,
                Offer::RecordFull => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(stored < 4, "the byte limit must bite in this test");
        let value = store.get(&k).map(|r| r.value.len()).unwrap_or(0);
        // `get` uses the real clock; measure the encoding of what is held instead.
        let held = record::encode(&store.live(&k, T0));
        assert!(held.len() <= 2000, "{} bytes held", held.len());
        assert_eq!(value, 0, "T0 is in the past, so nothing is live for Kademlia");
        // Replacing an entry by a smaller one always fits.
        let first = Bytes::from(format!("{:0>400}", 0));
        assert_eq!(store.offer(&k, first, entry("small", T0 + 6.0), None, T0), Offer::Stored);
        // A single entry too large for any record is refused outright.
        let huge = Bytes::from(vec![b'k'; 2100]);
        assert_eq!(store.offer(&key("other"), huge, entry("v", T0 + 5.0), None, T0), Offer::RecordFull);
    }

    #[test]
    fn the_store_and_each_peer_are_held_to_their_number_of_keys() {
        let mut store = MergingStore::new(limits());
        let (hostile, friendly) = (PeerId::random(), PeerId::random());
        let record = encoded(&[("a", entry("v", T0 + 5.0))]);
        assert_eq!(store.merge(&key("h1"), &record, Some(hostile), T0), Ok(1));
        assert_eq!(store.merge(&key("h2"), &record, Some(hostile), T0), Ok(1));
        assert_eq!(store.merge(&key("h3"), &record, Some(hostile), T0), Ok(0), "over the peer's share");
        // The peer may still add to keys that exist, its own or others'.
        let more = encoded(&[("b", entry("v", T0 + 5.0))]);
        assert_eq!(store.merge(&key("h1"), &more, Some(hostile), T0), Ok(1));
        assert_eq!(store.merge(&key("f1"), &record, Some(friendly), T0), Ok(1));
        for i in 0..3 {
            assert_eq!(
                store.offer(&key(&format!("own{i}")), sk("a"), entry("v", T0 + 9.0), None, T0),
                Offer::Stored
            );
        }
        assert_eq!(store.len(), 6);
        assert_eq!(store.offer(&key("own3"), sk("a"), entry("v", T0 + 9.0), None, T0), Offer::StoreFull);
        assert_eq!(store.merge(&key("f2"), &record, Some(friendly), T0), Ok(0), "the store is full");
        // Once the hostile peer's keys expire, its share and the store have room again.
        assert_eq!(store.merge(&key("h3"), &record, Some(hostile), T0 + 6.0), Ok(0), "expired offer");
        let later = encoded(&[("a", entry("v", T0 + 20.0))]);
        assert_eq!(store.merge(&key("h3"), &later, Some(hostile), T0 + 6.0), Ok(1));
        assert_eq!(store.merge(&key("h4"), &later, Some(hostile), T0 + 6.0), Ok(1));
        assert_eq!(store.merge(&key("h5"), &later, Some(hostile), T0 + 6.0), Ok(0));
    }

    #[test]
    fn malformed_records_change_nothing() {
        let mut store = MergingStore::new(limits());
        let k = key("k");
        let peer = Some(PeerId::random());
        assert_eq!(store.offer(&k, sk("a"), entry("v", T0 + 5.0), None, T0), Offer::Stored);
        let nan = encoded(&[("b", entry("v", T0 + 5.0)), ("c", entry("v", f64::NAN))]);
        let v2 = rmp_serde::to_vec(&(2u8, Vec::<(serde_bytes::ByteBuf, serde_bytes::ByteBuf, f64)>::new()))
            .expect("encodes");
        let too_many = encoded(&[
            ("1", entry("v", T0 + 5.0)),
            ("2", entry("v", T0 + 5.0)),
            ("3", entry("v", T0 + 5.0)),
            ("4", entry("v", T0 + 5.0)),
            ("5", entry("v", T0 + 5.0)),
        ]);
        let big_value = encoded(&[("b", entry(&"v".repeat(101), T0 + 5.0))]);
        for bad in [&b"\xde\xad"[..], &nan, &v2, &too_many, &big_value, &vec![0u8; 3000]] {
            assert!(store.merge(&k, bad, peer, T0).is_err());
            assert!(store.merge(&key("new"), bad, peer, T0).is_err());
        }
        assert_eq!(store.live(&k, T0).len(), 1);
        assert_eq!(store.len(), 1);
        assert!(store.put(Record::new(k.clone(), b"garbage".to_vec())).is_err());
    }

    #[test]
    fn the_read_union_follows_the_same_rule() {
        let mut merged = DhtDictionary::new();
        assert_eq!(offer_entry(&mut merged, sk("a"), entry("1", T0 + 2.0), 2, T0), Offer::Stored);
        assert_eq!(offer_entry(&mut merged, sk("a"), entry("0", T0 + 1.0), 2, T0), Offer::Stale);
        assert_eq!(offer_entry(&mut merged, sk("b"), entry("1", T0 + 2.0), 2, T0), Offer::Stored);
        assert_eq!(offer_entry(&mut merged, sk("c"), entry("1", T0 + 2.0), 2, T0), Offer::KeyFull);
        assert_eq!(offer_entry(&mut merged, sk("a"), entry("2", T0 + 3.0), 2, T0), Offer::Stored);
        assert_eq!(offer_entry(&mut merged, sk("d"), entry("1", T0 - 1.0), 9, T0), Offer::Stale);
        assert_eq!(merged[b"a".as_slice()], entry("2", T0 + 3.0));
    }
}
