//! protocol 2.3 on the wire: one key's dictionary as the value of one Kademlia record.
//!
//! A record value is msgpack `[version, [[subkey: bin, value: bin, expiration: f64], ...]]` with
//! `version` = [`RECORD_VERSION`]. The version comes first so that a later format can be told
//! apart (and refused by this one) without guessing. The same encoding carries a whole dictionary
//! (a replica's answer to a read, periodic replication) and a one-entry delta (a store): a
//! receiver merges either into what it holds, so the two need no separate formats.
//!
//! Records come from peers, so decoding checks sizes before it allocates and refuses anything
//! malformed as a whole: the caller logs it and goes on without it.

use averager_core::dht::DhtEntry;
use averager_core::time::DhtTime;
use bytes::Bytes;
use libp2p::kad::RecordKey;
use serde::Deserialize;
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

/// The record format this crate writes and reads.
pub(crate) const RECORD_VERSION: u8 = 1;

/// The Kademlia key of a DHT key: SHA-256 of its UTF-8 bytes.
///
/// Hashing spreads keys evenly over the XOR space whatever their text, and gives every key the
/// same length on the wire.
pub(crate) fn record_key(key: &str) -> RecordKey {
    RecordKey::new(&Sha256::digest(key.as_bytes()))
}

/// The bounds a record must keep to be accepted from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordLimits {
    /// The largest value of one entry.
    pub(crate) max_value_bytes: usize,
    /// The largest encoded record.
    pub(crate) max_record_bytes: usize,
    /// The most entries in one record.
    pub(crate) max_subkeys_per_key: usize,
}

/// Why a record from a peer was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("record format version {0} is not supported (this node reads version {RECORD_VERSION})")]
    UnsupportedVersion(u64),
    #[error("record is not valid msgpack of the expected shape: {0}")]
    Malformed(String),
    #[error("record holds {count} entries, over the limit of {limit} subkeys")]
    TooManySubkeys { count: usize, limit: usize },
    #[error("entry has a value of {size} bytes, over the limit of {limit} bytes")]
    ValueTooLarge { size: usize, limit: usize },
    #[error("entry has the non-finite expiration {0}")]
    BadExpiration(DhtTime),
}

/// Encodes `entries` as a record value.
pub(crate) fn encode<'a>(entries: impl IntoIterator<Item = (&'a Bytes, &'a DhtEntry)>) -> Vec<u8> {
    let entries: Vec<(&serde_bytes::Bytes, &serde_bytes::Bytes, f64)> = entries
        .into_iter()
        .map(|(subkey, entry)| {
            (serde_bytes::Bytes::new(subkey), serde_bytes::Bytes::new(&entry.value), entry.expiration)
        })
        .collect();
    // Writing tuples, byte strings and floats into a Vec has no failure mode; an empty value
    // would be refused by every reader, never mistaken for a record.
    rmp_serde::to_vec(&(RECORD_VERSION, entries)).unwrap_or_default()
}

/// The encoded size of one entry, so a store can bound a record without encoding it.
pub(crate) fn entry_size(subkey: &[u8], value: &[u8]) -> usize {
    1 + bin_size(subkey.len()) + bin_size(value.len()) + 9
}

/// The encoded size of a record of `entries` entries whose [`entry_size`]s add up to `sum`.
pub(crate) fn record_size(entries: usize, sum: usize) -> usize {
    2 + array_header_size(entries) + sum
}

fn bin_size(len: usize) -> usize {
    len + match len {
        0..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    }
}

fn array_header_size(len: usize) -> usize {
    match len {
        0..=15 => 1,
        16..=0xffff => 3,
        _ => 5,
    }
}

/// Decodes a record value from a peer, refusing it whole if it breaks any bound.
///
/// Entries come back in record order; duplicates of a subkey are left for the merge to settle.
pub(crate) fn decode(bytes: &[u8], limits: &RecordLimits) -> Result<Vec<(Bytes, DhtEntry)>, RecordError> {
    if bytes.len() > limits.max_record_bytes {
        return Err(RecordError::TooLarge { size: bytes.len(), limit: limits.max_record_bytes });
    }
    let (version, raw): (u64, Vec<(ByteBuf, ByteBuf, f64)>) = match rmp_serde::from_slice(bytes) {
        Ok(decoded) => decoded,
        Err(e) => return Err(version_error(bytes).unwrap_or_else(|| RecordError::Malformed(e.to_string()))),
    };
    if version != u64::from(RECORD_VERSION) {
        return Err(RecordError::UnsupportedVersion(version));
    }
    if raw.len() > limits.max_subkeys_per_key {
        return Err(RecordError::TooManySubkeys { count: raw.len(), limit: limits.max_subkeys_per_key });
    }
    raw.into_iter()
        .map(|(subkey, value, expiration)| {
            if !expiration.is_finite() {
                return Err(RecordError::BadExpiration(expiration));
            }
            if value.len() > limits.max_value_bytes {
                return Err(RecordError::ValueTooLarge { size: value.len(), limit: limits.max_value_bytes });
            }
            let entry = DhtEntry { value: Bytes::from(value.into_vec()), expiration };
            Ok((Bytes::from(subkey.into_vec()), entry))
        })
        .collect()
}

/// For a record that did not decode: whether it is of another version (a clearer message than
/// the shape error), judged from its first element alone.
fn version_error(bytes: &[u8]) -> Option<RecordError> {
    #[derive(Deserialize)]
    struct Head(u64, serde::de::IgnoredAny);
    let Head(version, _) = rmp_serde::from_slice(bytes).ok()?;
    (version != u64::from(RECORD_VERSION)).then_some(RecordError::UnsupportedVersion(version))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RecordLimits =
        RecordLimits { max_value_bytes: 1000, max_record_bytes: 10_000, max_subkeys_per_key: 8 };

    fn entry(value: &'static [u8], expiration: DhtTime) -> DhtEntry {
        DhtEntry { value: Bytes::from_static(value), expiration }
    }

    fn sample() -> Vec<(Bytes, DhtEntry)> {
        vec![
            (Bytes::from_static(b"peer-a"), entry(b"\xc3", 1_700_000_000.25)),
            (Bytes::new(), entry(b"", next_after_one())),
            (Bytes::from_static(b"\x00\xff"), entry(b"\xc0", 1e-300)),
        ]
    }

    fn next_after_one() -> DhtTime {
        averager_core::time::next_after(1.0)
    }

    #[test]
    fn records_round_trip_bit_exact() {
        let entries = sample();
        let bytes = encode(entries.iter().map(|(k, e)| (k, e)));
        let back = decode(&bytes, &LIMITS).expect("decodes");
        assert_eq!(back.len(), entries.len());
        for ((k1, e1), (k2, e2)) in entries.iter().zip(&back) {
            assert_eq!(k1, k2);
            assert_eq!(e1.value, e2.value);
            assert_eq!(e1.expiration.to_bits(), e2.expiration.to_bits());
        }
        assert!(decode(&encode([]), &LIMITS).expect("an empty record decodes").is_empty());
    }

    #[test]
    fn the_size_formula_matches_the_encoding() {
        for (subkey_len, value_len, count) in [
            (0, 0, 0),
            (0, 0, 1),
            (6, 1, 3),
            (255, 256, 15),
            (256, 65_535, 16),
            (70_000, 3, 2),
            (1, 1, 70_000),
        ] {
            let subkey = Bytes::from(vec![7u8; subkey_len]);
            let e = DhtEntry { value: Bytes::from(vec![1u8; value_len]), expiration: 1.5 };
            let entries: Vec<(Bytes, DhtEntry)> = (0..count).map(|_| (subkey.clone(), e.clone())).collect();
            let encoded = encode(entries.iter().map(|(k, e)| (k, e)));
            let predicted = record_size(count, count * entry_size(&subkey, &e.value));
            assert_eq!(encoded.len(), predicted, "subkey {subkey_len} value {value_len} count {count}");
        }
    }

    #[test]
    fn keys_hash_deterministically_and_differ() {
        assert_eq!(record_key("run.0b01"), record_key("run.0b01"));
        assert_ne!(record_key("run.0b01"), record_key("run.0b0"));
        assert_eq!(record_key("").as_ref().len(), 32);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for garbage in
            [&b""[..], b"\xc1", b"\x92\x01", b"\x92\x01\x91\x93\xc4", b"\xff\xff\xff", b"\x93\x01\x90\x90"]
        {
            assert!(matches!(decode(garbage, &LIMITS), Err(RecordError::Malformed(_))), "{garbage:?}");
        }
        // A map where the entry list should be, and an entry of the wrong arity.
        let wrong_shape = rmp_serde::to_vec(&(1u8, std::collections::BTreeMap::from([(1u8, 2u8)]))).unwrap();
        assert!(matches!(decode(&wrong_shape, &LIMITS), Err(RecordError::Malformed(_))));
        let wrong_arity = rmp_serde::to_vec(&(1u8, vec![(ByteBuf::from(b"k".to_vec()), 1.0f64)])).unwrap();
        assert!(matches!(decode(&wrong_arity, &LIMITS), Err(RecordError::Malformed(_))));
    }

    #[test]
    fn other_versions_are_refused_by_name() {
        let v2 = rmp_serde::to_vec(&(2u8, Vec::<(ByteBuf, ByteBuf, f64)>::new())).unwrap();
        assert_eq!(decode(&v2, &LIMITS), Err(RecordError::UnsupportedVersion(2)));
        // A future version whose body has another shape is still named as a version problem.
        let v9 = rmp_serde::to_vec(&(9u8, "something else")).unwrap();
        assert_eq!(decode(&v9, &LIMITS), Err(RecordError::UnsupportedVersion(9)));
    }

    #[test]
    fn non_finite_expirations_refuse_the_record() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut entries = sample();
            entries[1].1.expiration = bad;
            let bytes = encode(entries.iter().map(|(k, e)| (k, e)));
            assert!(matches!(decode(&bytes, &LIMITS), Err(RecordError::BadExpiration(_))), "{bad}");
        }
    }

    #[test]
    fn bounds_are_enforced() {
        let big = DhtEntry { value: Bytes::from(vec![0u8; 1001]), expiration: 5.0 };
        let bytes = encode([(&Bytes::from_static(b"k"), &big)]);
        assert_eq!(decode(&bytes, &LIMITS), Err(RecordError::ValueTooLarge { size: 1001, limit: 1000 }));

        let e = entry(b"v", 5.0);
        let keys: Vec<Bytes> = (0..9u8).map(|i| Bytes::from(vec![i])).collect();
        let bytes = encode(keys.iter().map(|k| (k, &e)));
        assert_eq!(decode(&bytes, &LIMITS), Err(RecordError::TooManySubkeys { count: 9, limit: 8 }));

        let huge = vec![0u8; LIMITS.max_record_bytes + 1];
        assert_eq!(
            decode(&huge, &LIMITS),
            Err(RecordError::TooLarge { size: LIMITS.max_record_bytes + 1, limit: LIMITS.max_record_bytes })
        );
    }
}
