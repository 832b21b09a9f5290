//! [`GrpcSettings`]: the registry's `grpc` transport config.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use averager_core::transport::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_MESSAGE_BYTES};

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
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// The HTTP/2 keep-alive ping interval (also the ping's timeout), on both sides; none when
    /// `None`.
    #[serde(with = "opt_secs")]
    pub keep_alive: Option<Duration>,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        GrpcSettings {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            keep_alive: None,
        }
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(|_| {
            serde::de::Error::custom(format!("{secs} is not a non-negative, finite number of seconds"))
        })
    }
}

mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|secs| {
                Duration::try_from_secs_f64(secs).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{secs} is not a non-negative, finite number of seconds"
                    ))
                })
            })
            .transpose()
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
        let round = serde_json::to_value(&parsed).expect("serializes");
        assert_eq!(serde_json::from_value::<GrpcSettings>(round).expect("parses back"), parsed);
    }
}
