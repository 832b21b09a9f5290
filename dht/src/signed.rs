//! Entries that speak for a peer are signed by it: an entry whose subkey is a libp2p endpoint
//! (`libp2p://<peer id>`, as matchmaking declarations and state-donor records are) carries, in
//! its value, that peer's ed25519 signature over the record key, the subkey, the expiration and
//! the value. Every node checks it on store (records peers send, and replication) and on read
//! (every replica's answer), and drops entries whose signature is missing or made by anyone
//! else, so nobody but the peer can declare, overwrite or withdraw in its name. A peer id of an
//! ed25519 key embeds the key, so checking needs nothing but the subkey.
//!
//! A signed value is a tag byte, the 64-byte signature, then the caller's value; the handle signs
//! on `store` and strips the signature from what `get` returns.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, PoisonError};

use averager_core::dht::DhtEntry;
use bytes::{BufMut, BytesMut};
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::kad::RecordKey;
use sha2::{Digest, Sha256};

/// The subkey prefix of entries that must be signed.
const ENDPOINT_PREFIX: &[u8] = b"libp2p://";
/// The first byte of a signed value.
const SIGNED_TAG: u8 = 0x5A;
/// An ed25519 signature's length.
const SIGNATURE_BYTES: usize = 64;
/// What signing adds to a value.
pub(crate) const SIGNED_OVERHEAD: usize = 1 + SIGNATURE_BYTES;
/// Separates these signatures from any other use of a peer's key.
const DOMAIN: &[u8] = b"averager-dht-signed-entry/1";

/// Whether `subkey` names a peer, and so must be signed: `Some(peer)`, or `Some(Err)` for a
/// subkey that claims to name a peer but names none (refused everywhere).
pub(crate) fn named_peer(subkey: &[u8]) -> Option<Result<PeerId, String>> {
    let rest = subkey.strip_prefix(ENDPOINT_PREFIX)?;
    let parsed = std::str::from_utf8(rest)
        .map_err(|_| "a libp2p endpoint subkey that is not UTF-8".to_string())
        .and_then(|text| text.parse::<PeerId>().map_err(|e| format!("{text:?} is not a peer id: {e}")));
    Some(parsed)
}

fn message(key: &RecordKey, subkey: &[u8], expiration: f64, value: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + key.as_ref().len() + subkey.len() + value.len() + 24);
    m.extend_from_slice(DOMAIN);
    // Lengths first, so no two (key, subkey, value) triples share a message.
    for part in [key.as_ref(), subkey] {
        m.extend_from_slice(&(part.len() as u64).to_le_bytes());
        m.extend_from_slice(part);
    }
    m.extend_from_slice(&expiration.to_bits().to_le_bytes());
    m.extend_from_slice(value);
    m
}

/// The entry to store for `subkey` under `key`: signed when the subkey names a peer, which must
/// be `keypair`'s; unchanged otherwise.
///
/// # Errors
/// A subkey naming another peer (or none), or a key that cannot sign.
pub(crate) fn sign(
    keypair: &Keypair,
    key: &RecordKey,
    subkey: &[u8],
    entry: DhtEntry,
) -> Result<DhtEntry, String> {
    let Some(named) = named_peer(subkey) else { return Ok(entry) };
    let peer = named?;
    if peer != keypair.public().to_peer_id() {
        return Err(format!("the subkey names {peer}; only that peer can sign it"));
    }
    let signature = keypair
        .sign(&message(key, subkey, entry.expiration, &entry.value))
        .map_err(|e| format!("cannot sign: {e}"))?;
    if signature.len() != SIGNATURE_BYTES {
        return Err(format!(
            "a signature of {} bytes; only ed25519 identities can sign entries",
            signature.len()
        ));
    }
    let mut value = BytesMut::with_capacity(SIGNED_OVERHEAD + entry.value.len());
    value.put_u8(SIGNED_TAG);
    value.put_slice(&signature);
    value.put_slice(&entry.value);
    Ok(DhtEntry { value: value.freeze(), expiration: entry.expiration })
}

/// Checks an entry's signature when its subkey names a peer; other entries pass.
///
/// # Errors
/// Why the entry must be refused.
pub(crate) fn verify(key: &RecordKey, subkey: &[u8], entry: &DhtEntry) -> Result<(), String> {
    let Some(named) = named_peer(subkey) else { return Ok(()) };
    let peer = named?;
    let public = public_key(&peer).ok_or_else(|| format!("{peer} does not embed an ed25519 key"))?;
    let value = entry.value.as_ref();
    if value.len() < SIGNED_OVERHEAD || value[0] != SIGNED_TAG {
        return Err(format!("an unsigned entry in the name of {peer}"));
    }
    let (signature, plain) = value[1..].split_at(SIGNATURE_BYTES);
    let message = message(key, subkey, entry.expiration, plain);
    let digest = verified_digest(&message, signature);
    if VERIFIED.lock().unwrap_or_else(PoisonError::into_inner).contains(&digest) {
        return Ok(());
    }
    if !public.verify(&message, signature) {
        return Err(format!("an entry in the name of {peer} that {peer} did not sign"));
    }
    let mut verified = VERIFIED.lock().unwrap_or_else(PoisonError::into_inner);
    if verified.len() >= VERIFIED_CAPACITY {
        verified.clear();
    }
    verified.insert(digest);
    Ok(())
}

/// How many verified signatures are remembered before the memory starts over.
const VERIFIED_CAPACITY: usize = 65_536;

/// Signatures already verified in this process, by digest of message and signature: every read
/// and every replication brings the same entries again, and an ed25519 check costs far more than
/// a hash (in debug builds, enough to stall a node's task under many peers' reads).
static VERIFIED: LazyLock<Mutex<HashSet<[u8; 32]>>> = LazyLock::new(Mutex::default);

fn verified_digest(message: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update((message.len() as u64).to_le_bytes());
    hasher.update(message);
    hasher.update(signature);
    hasher.finalize().into()
}

/// The caller's value of an entry (the signature stripped when its subkey names a peer).
pub(crate) fn strip(subkey: &[u8], entry: DhtEntry) -> DhtEntry {
    match named_peer(subkey) {
        Some(_) if entry.value.len() >= SIGNED_OVERHEAD => {
            DhtEntry { value: entry.value.slice(SIGNED_OVERHEAD..), expiration: entry.expiration }
        }
        _ => entry,
    }
}

/// The key a peer id embeds (ed25519 peer ids are the identity hash of the key).
fn public_key(peer: &PeerId) -> Option<PublicKey> {
    let hash = peer.as_ref();
    (hash.code() == 0).then(|| PublicKey::try_decode_protobuf(hash.digest()).ok()).flatten()
}

/// A value signed by `keypair` for another peer's subkey, or unsigned: what a forger sends.
#[cfg(test)]
pub(crate) fn forge(keypair: &Keypair, key: &RecordKey, subkey: &[u8], entry: &DhtEntry) -> DhtEntry {
    let signature = keypair.sign(&message(key, subkey, entry.expiration, &entry.value)).expect("signs");
    let mut value = vec![SIGNED_TAG];
    value.extend_from_slice(&signature);
    value.extend_from_slice(&entry.value);
    DhtEntry { value: bytes::Bytes::from(value), expiration: entry.expiration }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &'static [u8]) -> DhtEntry {
        DhtEntry { value: bytes::Bytes::from_static(value), expiration: 1e12 }
    }

    #[test]
    fn a_peer_signs_its_own_entries_and_nobody_else_can() {
        let owner = Keypair::generate_ed25519();
        let forger = Keypair::generate_ed25519();
        let key = RecordKey::new(&"run.0b");
        let subkey = format!("libp2p://{}", owner.public().to_peer_id()).into_bytes();
        let signed = sign(&owner, &key, &subkey, entry(b"\xc3")).expect("the owner signs");
        verify(&key, &subkey, &signed).expect("a genuine signature verifies");
        assert_eq!(strip(&subkey, signed.clone()).value.as_ref(), b"\xc3");

        assert!(sign(&forger, &key, &subkey, entry(b"\xc2")).is_err(), "signing for another peer");
        let forged = forge(&forger, &key, &subkey, &entry(b"\xc2"));
        assert!(verify(&key, &subkey, &forged).is_err(), "a forger's signature");
        assert!(verify(&key, &subkey, &entry(b"\xc2")).is_err(), "an unsigned entry");
        // A signature is bound to its key, expiration and value.
        let moved = RecordKey::new(&"run.0b1");
        assert!(verify(&moved, &subkey, &signed).is_err());
        let later = DhtEntry { expiration: signed.expiration + 1.0, ..signed.clone() };
        assert!(verify(&key, &subkey, &later).is_err());

        // Subkeys that name no libp2p peer need no signature; a broken libp2p subkey is refused.
        verify(&key, b"grpc://127.0.0.1:1", &entry(b"\xc3")).expect("other subkeys pass");
        assert!(verify(&key, b"libp2p://nope", &entry(b"\xc3")).is_err());
    }
}
