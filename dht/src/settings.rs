//! [`KadSettings`]: how a node listens, whom it joins, and the bounds it holds hostile peers to.

use std::num::NonZeroUsize;
use std::time::Duration;

use averager_core::{Error, Result};
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// Room left in a Kademlia message beside the record itself (key, publisher, closer peers and
/// their addresses), so the largest record always fits in one message.
pub(crate) const MESSAGE_OVERHEAD_BYTES: usize = 64 << 10;

/// The default [`KadSettings::relay_max_circuit_duration`]: long enough for any round.
pub const DEFAULT_RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(12 * 3600);

/// The default [`KadSettings::relay_max_circuit_bytes`]: thousands of rounds of 16 MB tensors.
pub const DEFAULT_RELAY_CIRCUIT_BYTES: u64 = 256 << 30;

/// Settings of a [`KadDht`](crate::KadDht), also its registry config (`"kad"`); durations are
/// seconds and addresses are multiaddr strings in config files, every field optional:
///
/// ```
/// # use averager_dht::KadSettings;
/// let settings: KadSettings = serde_json::from_str(
///     r#"{"listen": ["/ip4/0.0.0.0/tcp/4001"], "bootstrap": ["/ip4/10.0.0.7/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"], "query_timeout": 5}"#,
/// ).unwrap();
/// assert_eq!(settings.replication.get(), 5);
/// assert_eq!(settings.query_timeout, std::time::Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KadSettings {
    /// Addresses to listen on; port 0 picks a free port. Default: `/ip4/127.0.0.1/tcp/0` and
    /// `/ip4/127.0.0.1/udp/0/quic-v1`.
    #[serde(with = "addrs")]
    pub listen: Vec<Multiaddr>,
    /// Peers to join through, ideally with their `/p2p/<peer id>` (what
    /// [`KadDht::listen_addrs`](crate::KadDht::listen_addrs) prints). Empty: this node starts a
    /// new swarm. Default: empty.
    #[serde(with = "addrs")]
    pub bootstrap: Vec<Multiaddr>,
    /// How many of the peers closest to a key receive each store (Kademlia's `k` for records).
    /// Default 5, as hivemind's `num_replicas`.
    pub replication: NonZeroUsize,
    /// The longest a Kademlia query (a store's replication, a read, joining) may run. Default 10 s.
    #[serde(with = "averager_core::time::secs")]
    pub query_timeout: Duration,
    /// The largest value one subkey holds, in bytes; a larger store is an error. Default 64 KiB.
    pub max_value_bytes: usize,
    /// The largest encoded record (one key's whole dictionary), in bytes. A local store that
    /// would grow a record past it is an error; remote records over it are ignored. Must exceed
    /// `max_value_bytes` by at least 1 KiB. Default 256 KiB.
    pub max_record_bytes: usize,
    /// The most live subkeys one key holds; further new subkeys are refused. Default 10 000.
    pub max_subkeys_per_key: usize,
    /// The most keys this node stores, its own and its peers' together. Default 1024.
    pub max_records: usize,
    /// The most keys any one remote peer may create in this node's store. Default 128.
    pub max_records_per_peer: usize,
    /// How often this node re-sends every record it holds to the peers now closest to its key,
    /// so records reach nodes that joined after they were stored; `None` turns it off.
    /// Default 300 s.
    #[serde(with = "averager_core::time::opt_secs")]
    pub replication_interval: Option<Duration>,
    /// How long a connection with no Kademlia traffic stays open. Keeping connections saves a
    /// handshake per query. Default 60 s.
    #[serde(with = "averager_core::time::secs")]
    pub idle_connection_timeout: Duration,
    /// Relays to be reachable through (each `/.../p2p/<relay peer id>`): the node reserves a slot
    /// on each and listens on `<relay>/p2p-circuit`, so a node behind a NAT can be dialled at
    /// `<relay>/p2p-circuit/p2p/<its peer id>` (identify and Kademlia carry that address to the
    /// others, and hole punching then tries to replace the relayed connection by a direct one).
    /// Default: none.
    #[serde(with = "addrs")]
    pub relays: Vec<Multiaddr>,
    /// Addresses at which others can reach this node directly (a public IP, a forwarded port),
    /// taken as confirmed without AutoNAT's probes and advertised to peers. Default: none.
    #[serde(with = "addrs")]
    pub external_addrs: Vec<Multiaddr>,
    /// The longest one relayed connection through this node may last (when this node serves as
    /// a relay), in seconds; then the relay closes it and the peers dial again. libp2p's default
    /// (2 min) would cut an all-reduce in the middle. Default 12 h.
    #[serde(with = "averager_core::time::secs")]
    pub relay_max_circuit_duration: Duration,
    /// The most bytes one relayed connection through this node may carry (both directions
    /// together) before the relay closes it. libp2p's default (128 KiB) is smaller than one
    /// tensor part. Default 256 GiB.
    pub relay_max_circuit_bytes: u64,
}

impl Default for KadSettings {
    fn default() -> Self {
        KadSettings {
            listen: vec![loopback("/ip4/127.0.0.1/tcp/0"), loopback("/ip4/127.0.0.1/udp/0/quic-v1")],
            bootstrap: Vec::new(),
            replication: NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN),
            query_timeout: Duration::from_secs(10),
            max_value_bytes: 64 << 10,
            max_record_bytes: 256 << 10,
            max_subkeys_per_key: 10_000,
            max_records: 1024,
            max_records_per_peer: 128,
            replication_interval: Some(Duration::from_secs(300)),
            idle_connection_timeout: Duration::from_secs(60),
            relays: Vec::new(),
            external_addrs: Vec::new(),
            relay_max_circuit_duration: DEFAULT_RELAY_CIRCUIT_DURATION,
            relay_max_circuit_bytes: DEFAULT_RELAY_CIRCUIT_BYTES,
        }
    }
}

fn loopback(addr: &str) -> Multiaddr {
    // Only called with the literals above, which parse; an empty address would fail at listen.
    addr.parse().unwrap_or_else(|_| Multiaddr::empty())
}

impl KadSettings {
    /// Default settings, joining the swarm through `bootstrap`.
    pub fn joining(bootstrap: Vec<Multiaddr>) -> Self {
        KadSettings { bootstrap, ..KadSettings::default() }
    }

    /// Checks that the settings can work together.
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.listen.is_empty() {
            return Err(Error::Config("kad: `listen` names no address; a DHT node must accept peers".into()));
        }
        if self.query_timeout.is_zero() {
            return Err(Error::Config("kad: `query_timeout` must be positive".into()));
        }
        if self.max_record_bytes < self.max_value_bytes.saturating_add(1024) {
            return Err(Error::Config(format!(
                "kad: `max_record_bytes` ({}) must exceed `max_value_bytes` ({}) by at least 1024",
                self.max_record_bytes, self.max_value_bytes
            )));
        }
        if self.max_record_bytes > usize::MAX - MESSAGE_OVERHEAD_BYTES {
            return Err(Error::Config("kad: `max_record_bytes` is too large".into()));
        }
        if self.relay_max_circuit_duration.is_zero() || self.relay_max_circuit_bytes == 0 {
            return Err(Error::Config("kad: relay circuit limits must be positive".into()));
        }
        for relay in &self.relays {
            if !matches!(relay.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
                return Err(Error::Config(format!("kad: relay {relay} must end in /p2p/<relay peer id>")));
            }
        }
        if self.replication_interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::Config("kad: `replication_interval` must be positive or null".into()));
        }
        Ok(())
    }
}

/// Multiaddrs as strings in config files, so they read as users write them.
mod addrs {
    use libp2p::Multiaddr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(addrs: &[Multiaddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(addrs.iter().map(|a| a.to_string()))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Multiaddr>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|text| {
                text.parse()
                    .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a multiaddr: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_loopback_tcp_and_quic() {
        let s = KadSettings::default();
        let listen: Vec<String> = s.listen.iter().map(ToString::to_string).collect();
        assert_eq!(listen, ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"]);
        assert!(s.bootstrap.is_empty());
        s.validate().expect("the defaults are valid");
    }

    #[test]
    fn settings_parse_from_json_with_defaults_and_round_trip() {
        let parsed: KadSettings = serde_json::from_value(serde_json::json!({
            "listen": ["/ip4/0.0.0.0/tcp/4001"],
            "bootstrap": ["/ip4/127.0.0.1/tcp/4002"],
            "query_timeout": 2.5,
            "replication_interval": null,
            "max_subkeys_per_key": 64,
        }))
        .expect("valid settings");
        assert_eq!(parsed.listen, vec!["/ip4/0.0.0.0/tcp/4001".parse::<Multiaddr>().unwrap()]);
        assert_eq!(parsed.bootstrap.len(), 1);
        assert_eq!(parsed.query_timeout, Duration::from_millis(2500));
        assert_eq!(parsed.replication_interval, None);
        assert_eq!(parsed.max_subkeys_per_key, 64);
        assert_eq!(parsed.max_records, KadSettings::default().max_records);
        let round = serde_json::to_value(&parsed).expect("serializes");
        assert_eq!(serde_json::from_value::<KadSettings>(round).expect("parses back"), parsed);
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad_addr = serde_json::json!({"listen": ["not an address"]});
        assert!(serde_json::from_value::<KadSettings>(bad_addr).is_err());
        assert!(serde_json::from_value::<KadSettings>(serde_json::json!({"replication": 0})).is_err());
        assert!(serde_json::from_value::<KadSettings>(serde_json::json!({"no_such": 1})).is_err());
        let tight = KadSettings { max_record_bytes: 1000, max_value_bytes: 100, ..Default::default() };
        assert!(matches!(tight.validate(), Err(Error::Config(_))));
        let deaf = KadSettings { listen: vec![], ..Default::default() };
        assert!(matches!(deaf.validate(), Err(Error::Config(_))));
    }
}
