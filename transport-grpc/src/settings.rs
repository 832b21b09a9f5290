//! [`GrpcSettings`]: the registry's `grpc` transport config.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use averager_core::transport::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_MESSAGE_BYTES};

use crate::GrpcTlsSettings;

/// The default [`GrpcSettings::first_request_timeout`]: generous, as it only frees what a silent
/// peer holds.
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of a [`GrpcTransport`](crate::GrpcTransport); durations are seconds in config files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSettings {
    /// The address [`serve`](averager_core::Transport::serve) listens on; port 0 picks a free port.
    /// An unspecified IP (`0.0.0.0`, `::`) is advertised as the loopback address of its family.
    pub listen: SocketAddr,
    /// The largest encoded message this peer sends or accepts, in bytes.
    pub max_message_bytes: usize,
    /// How long a dial may take before it fails with `Error::Unreachable`.
    #[serde(with = "averager_core::time::secs")]
    pub connect_timeout: Duration,
    /// The HTTP/2 keep-alive ping interval (also the ping's timeout), on both sides; none when
    /// `None`.
    #[serde(with = "averager_core::time::opt_secs")]
    pub keep_alive: Option<Duration>,
    /// How long the server waits for what a peer owes it first: a new connection's TLS handshake
    /// and HTTP/2 preface, and each call's (first) request message. A peer that stays silent
    /// longer has its connection closed or its call failed with `DEADLINE_EXCEEDED`.
    #[serde(with = "averager_core::time::secs")]
    pub first_request_timeout: Duration,
    /// TLS on both sides (HTTPS/2); `None`: plain HTTP/2. Endpoints stay `grpc://host:port`
    /// either way, so every peer of a swarm must agree on it.
    pub tls: Option<GrpcTlsSettings>,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        GrpcSettings {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            keep_alive: None,
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
            tls: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_from_json_with_defaults() {
        let parsed: GrpcSettings = serde_json::from_value(serde_json::json!({
            "listen": "0.0.0.0:7000",
            "connect_timeout": 1.5,
            "keep_alive": 10,
        }))
        .expect("valid settings");
        assert_eq!(parsed.listen, "0.0.0.0:7000".parse().expect("an address"));
        assert_eq!(parsed.connect_timeout, Duration::from_millis(1500));
        assert_eq!(parsed.keep_alive, Some(Duration::from_secs(10)));
        assert_eq!(parsed.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(parsed.first_request_timeout, DEFAULT_FIRST_REQUEST_TIMEOUT);
        assert_eq!(parsed.tls, None);
        let round = serde_json::to_value(&parsed).expect("serializes");
        assert_eq!(serde_json::from_value::<GrpcSettings>(round).expect("parses back"), parsed);
    }

    #[test]
    fn tls_settings_parse_and_refuse_unknown_fields() {
        let parsed: GrpcSettings = serde_json::from_value(serde_json::json!({
            "tls": { "ca_certificates": "/etc/swarm/ca.pem", "domain_name": "peer.swarm" },
            "first_request_timeout": 2,
        }))
        .expect("valid settings");
        let tls = parsed.tls.expect("tls is set");
        assert_eq!(tls.ca_certificates.as_deref(), Some(std::path::Path::new("/etc/swarm/ca.pem")));
        assert_eq!(tls.domain_name.as_deref(), Some("peer.swarm"));
        assert_eq!(tls.cert_chain, None);
        assert_eq!(parsed.first_request_timeout, Duration::from_secs(2));
        let unknown = serde_json::json!({ "tls": { "ca": "/x" } });
        assert!(serde_json::from_value::<GrpcSettings>(unknown).is_err());
    }
}
