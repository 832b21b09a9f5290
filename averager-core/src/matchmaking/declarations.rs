//! protocol 2.3 and 3.2: group declarations in the DHT.
//!
//! A searching peer stores `(group key, endpoint) = true` until its declared expiration `E`; when
//! it stops, it stores `false` at `nextafter(E)`, which overrides the `true` entry (the later
//! expiration wins) without waiting for it to expire.

use bytes::Bytes;

use crate::dht::Dht;
use crate::error::Result;
use crate::time::{DhtTime, next_after};

/// msgpack `true`.
const TRUE: u8 = 0xc3;
/// msgpack `false`.
const FALSE: u8 = 0xc2;

/// Declares `endpoint` as looking for a group under `key` until `expiration`.
///
/// # Errors
/// The DHT's error; `Ok(false)` when the DHT refused the record (e.g. an expiration in the past).
pub async fn declare(dht: &dyn Dht, key: &str, endpoint: &str, expiration: DhtTime) -> Result<bool> {
    dht.store(key, endpoint.as_bytes(), Bytes::from_static(&[TRUE]), expiration).await
}

/// Withdraws the declaration that expired at `expiration` (stores `false` just after it).
///
/// # Errors
/// The DHT's error.
pub async fn undeclare(dht: &dyn Dht, key: &str, endpoint: &str, expiration: DhtTime) -> Result<bool> {
    dht.store(key, endpoint.as_bytes(), Bytes::from_static(&[FALSE]), next_after(expiration)).await
}

/// The peers declared under `key`, with their expirations, sorted by (expiration, endpoint).
///
/// With `only_active`, withdrawn declarations (`false`) are left out. Entries whose subkey is not
/// UTF-8 or whose value is not a msgpack boolean are ignored: they cannot be averager peers.
///
/// # Errors
/// The DHT's error.
pub async fn declared_peers(dht: &dyn Dht, key: &str, only_active: bool) -> Result<Vec<(String, DhtTime)>> {
    let entries = dht.get(key, true).await?;
    let mut peers: Vec<(String, DhtTime)> = entries
        .into_iter()
        .filter_map(|(subkey, entry)| {
            let endpoint = String::from_utf8(subkey.to_vec()).ok()?;
            let active = match entry.value.as_ref() {
                [TRUE] => true,
                [FALSE] => false,
                _ => return None,
            };
            (active || !only_active).then_some((endpoint, entry.expiration))
        })
        .collect();
    peers.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.as_bytes().cmp(b.0.as_bytes())));
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::MemoryDht;
    use crate::time::dht_now;

    /// protocol 10.1 scenario 1 (key_manager).
    #[tokio::test]
    async fn scenario_1_declare_redeclare_undeclare() {
        let dht = MemoryDht::new();
        let key = crate::matchmaking::group_key("test_averaging", "10110");
        let t = dht_now();
        assert!(declare(&dht, &key, "alice", t + 60.0).await.unwrap());
        assert!(declare(&dht, &key, "bob", t + 61.0).await.unwrap());
        let active = declared_peers(&dht, &key, true).await.unwrap();
        assert_eq!(active, [("alice".to_string(), t + 60.0), ("bob".to_string(), t + 61.0)]);

        assert!(declare(&dht, &key, "alice", t + 66.0).await.unwrap());
        let active = declared_peers(&dht, &key, true).await.unwrap();
        assert_eq!(active, [("bob".to_string(), t + 61.0), ("alice".to_string(), t + 66.0)]);

        assert!(undeclare(&dht, &key, "bob", t + 61.0).await.unwrap());
        assert_eq!(declared_peers(&dht, &key, true).await.unwrap(), [("alice".to_string(), t + 66.0)]);
        assert_eq!(declared_peers(&dht, &key, false).await.unwrap().len(), 2);

        let unused = crate::matchmaking::group_key("nonexistent_key", "0101");
        assert!(declared_peers(&dht, &unused, false).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn foreign_values_are_ignored() {
        let dht = MemoryDht::new();
        let exp = dht_now() + 60.0;
        dht.store("k", b"garbage", Bytes::from_static(b"\x01\x02"), exp).await.unwrap();
        dht.store("k", &[0xff, 0xfe], Bytes::from_static(&[TRUE]), exp).await.unwrap();
        declare(&dht, "k", "real", exp).await.unwrap();
        assert_eq!(declared_peers(&dht, "k", false).await.unwrap(), [("real".to_string(), exp)]);
    }
}
