//! protocol 9: every constructor parameter of hivemind's `DecentralizedAverager`, with its default,
//! loadable from TOML, and the validation rules of protocol 3.1, 4.2, 6.1 and 8.3.
//!
//! Durations are seconds (`f64`) in TOML, as in hivemind, and `Duration`s in Rust.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::compression::TensorRole;
use crate::error::{Error, Result};
use crate::matchmaking::{validate_bits, validate_prefix};
use crate::registry::PluginConfig;

/// A codec chosen by registry name, with optional settings for its constructor.
///
/// In TOML either `compression = "float16"` or
/// `compression = { name = "size-adaptive", settings = { threshold = 1000 } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CodecSpec {
    /// Just the registry name, default settings.
    Name(String),
    /// A registry name and the settings its constructor parses.
    Configured {
        /// The registry name.
        name: String,
        /// Settings for the codec's constructor.
        #[serde(default)]
        settings: serde_json::Value,
    },
}

impl CodecSpec {
    /// The registry name.
    pub fn name(&self) -> &str {
        match self {
            CodecSpec::Name(name) | CodecSpec::Configured { name, .. } => name,
        }
    }

    /// The constructor settings (`null` for defaults).
    pub fn settings(&self) -> PluginConfig {
        match self {
            CodecSpec::Name(_) => PluginConfig::default(),
            CodecSpec::Configured { settings, .. } => PluginConfig::new(settings.clone()),
        }
    }
}

impl Default for CodecSpec {
    fn default() -> Self {
        CodecSpec::Name("none".into())
    }
}

impl From<&str> for CodecSpec {
    fn from(name: &str) -> Self {
        CodecSpec::Name(name.to_string())
    }
}

impl From<String> for CodecSpec {
    fn from(name: String) -> Self {
        CodecSpec::Name(name)
    }
}

/// Per-tensor settings for compression (hivemind's `tensor_infos`): a role, and optionally a name
/// that per-tensor codec selection can key on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TensorSettings {
    /// What the tensor is for (role-adaptive codecs choose by it).
    pub role: TensorRole,
    /// A key for per-tensor selection; the tensor's index when absent.
    pub name: Option<String>,
}

/// Every setting of an averager (hivemind's `DecentralizedAverager` constructor), with protocol 9's
/// defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AveragerConfig {
    /// Shared prefix of all group keys; must not contain `.`.
    pub prefix: String,
    /// Groups never exceed this many peers (a power of two is recommended); `None`: no cap, groups
    /// close at the leader's expiration.
    pub target_group_size: Option<usize>,
    /// A leader whose time is up assembles only with at least this many members (itself included).
    pub min_group_size: usize,
    /// Initial group bits (`0`/`1`), the bucket index.
    pub initial_group_bits: String,
    /// Minimum lifetime of a declaration, and how long a leader keeps a partial group open.
    #[serde(with = "crate::time::secs")]
    pub min_matchmaking_time: Duration,
    /// How long to wait for a potential leader's first reply.
    #[serde(with = "crate::time::secs")]
    pub request_timeout: Duration,
    /// Local tensors move this fraction of the way to the average (1 = set to the average).
    pub averaging_alpha: f64,
    /// Parts are at most this many bytes on the wire (after compression).
    pub part_size_bytes: usize,
    /// Bound on the whole aggregation after a group forms.
    #[serde(with = "crate::time::opt_secs")]
    pub allreduce_timeout: Option<Duration>,
    /// Default for `sender_timeout` (and, doubled, `reducer_timeout`); also the per-chunk timeout
    /// of state downloads.
    #[serde(with = "crate::time::opt_secs")]
    pub next_chunk_timeout: Option<Duration>,
    /// A sender silent this long after its previous part is dropped; defaults to `next_chunk_timeout`.
    #[serde(with = "crate::time::opt_secs")]
    pub sender_timeout: Option<Duration>,
    /// A reducer silent this long after its previous reply is dropped; defaults to twice
    /// `sender_timeout`. Must exceed `sender_timeout`.
    #[serde(with = "crate::time::opt_secs")]
    pub reducer_timeout: Option<Duration>,
    /// Codec for all-reduce parts.
    pub compression: CodecSpec,
    /// Codec for state downloads.
    pub state_compression: CodecSpec,
    /// Reducer for this peer's span (registry name); the weighted mean by default.
    pub reducer: String,
    /// Settings for the reducer's constructor (`null`: its defaults), e.g. in TOML
    /// `reducer_settings = { trim = 1 }` for `reducer = "trimmed-mean"`.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub reducer_settings: serde_json::Value,
    /// Per-tensor compression settings, by tensor index; missing entries default.
    pub tensor_infos: Vec<TensorSettings>,
    /// This peer's bandwidth for load balancing, in MB/s; 0: reduce nothing. `None`: measured
    /// (**\[averager\]**: the smoothed rate of its recent all-reduces; the group's mean until the
    /// first one, as in hivemind).
    pub bandwidth: Option<f64>,
    /// Members whose share would be smaller than this many elements get none.
    pub min_vector_size: usize,
    /// Assist others in reducing without contributing tensors (AUX mode).
    pub auxiliary: bool,
    /// Let others download this peer's state; `None`: allowed unless CLIENT or AUX.
    pub allow_state_sharing: Option<bool>,
    /// Donors with higher priority are preferred by downloaders.
    pub state_sharing_priority: f64,
    /// Re-declare this peer as a state donor every this often.
    #[serde(with = "crate::time::secs")]
    pub declare_state_period: Duration,
    /// Accept no incoming requests (CLIENT mode); `None`: the DHT node's client mode.
    pub client_mode: Option<bool>,
    /// `shutdown` waits this long for running work before stopping it forcibly.
    #[serde(with = "crate::time::secs")]
    pub shutdown_timeout: Duration,
}

impl Default for AveragerConfig {
    fn default() -> Self {
        AveragerConfig {
            prefix: "averager".into(),
            target_group_size: None,
            min_group_size: 2,
            initial_group_bits: String::new(),
            min_matchmaking_time: Duration::from_secs(5),
            request_timeout: Duration::from_secs(3),
            averaging_alpha: 1.0,
            part_size_bytes: 1 << 19,
            allreduce_timeout: None,
            next_chunk_timeout: None,
            sender_timeout: None,
            reducer_timeout: None,
            compression: CodecSpec::default(),
            state_compression: CodecSpec::default(),
            reducer: "mean".into(),
            reducer_settings: serde_json::Value::Null,
            tensor_infos: Vec::new(),
            bandwidth: None,
            min_vector_size: 0,
            auxiliary: false,
            allow_state_sharing: None,
            state_sharing_priority: 0.0,
            declare_state_period: Duration::from_secs(30),
            client_mode: None,
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl AveragerConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> AveragerConfigBuilder {
        AveragerConfigBuilder(AveragerConfig::default())
    }

    /// Parses a TOML document (missing keys take their defaults) and validates it.
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending key or rule.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: AveragerConfig = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// `sender_timeout`, defaulting to `next_chunk_timeout` (protocol 4.7).
    pub fn effective_sender_timeout(&self) -> Option<Duration> {
        self.sender_timeout.or(self.next_chunk_timeout)
    }

    /// `reducer_timeout`, defaulting to twice the effective sender timeout (protocol 4.7).
    pub fn effective_reducer_timeout(&self) -> Option<Duration> {
        self.reducer_timeout.or_else(|| self.effective_sender_timeout().map(|t| t * 2))
    }

    /// Checks every rule that does not need the DHT (protocol 3.1, 4.2, 6.1, 8.3). Rules that are
    /// only advice (a target that is not a power of two, `request_timeout >= min_matchmaking_time`)
    /// are logged as warnings.
    ///
    /// # Errors
    /// [`Error::Config`] for the first broken rule.
    pub fn validate(&self) -> Result<()> {
        validate_prefix(&self.prefix)?;
        validate_bits(&self.initial_group_bits)?;
        let fail = |msg: String| Err(Error::Config(msg));
        if let Some(b) = self.bandwidth
            && (!(b as f32).is_finite() || b < 0.0)
        {
            return fail(format!("bandwidth {b} must be a finite number >= 0"));
        }
        if self.client_mode == Some(true) && self.auxiliary {
            return fail("client_mode and auxiliary are mutually exclusive".into());
        }
        if self.target_group_size == Some(0) {
            return fail("target_group_size must be at least 1".into());
        }
        if self.min_group_size == 0 {
            return fail("min_group_size must be at least 1".into());
        }
        if !self.averaging_alpha.is_finite() {
            return fail(format!("averaging_alpha {} must be finite", self.averaging_alpha));
        }
        if self.part_size_bytes == 0 {
            return fail("part_size_bytes must be positive".into());
        }
        if self.declare_state_period.is_zero() {
            return fail("declare_state_period must be positive".into());
        }
        if !self.state_sharing_priority.is_finite() {
            return fail("state_sharing_priority must be finite".into());
        }
        match (self.effective_sender_timeout(), self.reducer_timeout) {
            (None, Some(_)) => return fail("reducer_timeout is set but sender_timeout is not".into()),
            (Some(s), Some(r)) if r <= s => {
                return fail(format!("reducer_timeout {r:?} must exceed sender_timeout {s:?}"));
            }
            _ => {}
        }
        if self.client_mode == Some(true) {
            if self.allow_state_sharing == Some(true) {
                return fail("a CLIENT cannot share state (allow_state_sharing = true)".into());
            }
            if self.state_sharing_priority != 0.0 {
                return fail("a CLIENT cannot have a state_sharing_priority".into());
            }
        }
        if let Some(t) = self.target_group_size
            && !t.is_power_of_two()
        {
            tracing::warn!(target_group_size = t, "target_group_size is not a power of two");
        }
        if self.request_timeout >= self.min_matchmaking_time {
            tracing::warn!(
                request_timeout = ?self.request_timeout,
                min_matchmaking_time = ?self.min_matchmaking_time,
                "request_timeout should be smaller than min_matchmaking_time to avoid deadlocks"
            );
        }
        Ok(())
    }
}

/// Builds an [`AveragerConfig`] field by field; [`AveragerConfigBuilder::build`] validates.
#[derive(Debug, Clone)]
pub struct AveragerConfigBuilder(AveragerConfig);

macro_rules! setters {
    ($($field:ident: $ty:ty $(=> $wrap:ident)?),* $(,)?) => {$(
        #[doc = concat!("Sets `", stringify!($field), "` (see [`AveragerConfig::", stringify!($field), "`]).")]
        pub fn $field(mut self, value: impl Into<$ty>) -> Self {
            self.0.$field = setters!(@wrap value.into() $(, $wrap)?);
            self
        }
    )*};
    (@wrap $v:expr) => { $v };
    (@wrap $v:expr, Some) => { Some($v) };
}

impl AveragerConfigBuilder {
    setters! {
        prefix: String,
        target_group_size: usize => Some,
        min_group_size: usize,
        initial_group_bits: String,
        min_matchmaking_time: Duration,
        request_timeout: Duration,
        averaging_alpha: f64,
        part_size_bytes: usize,
        allreduce_timeout: Duration => Some,
        next_chunk_timeout: Duration => Some,
        sender_timeout: Duration => Some,
        reducer_timeout: Duration => Some,
        compression: CodecSpec,
        state_compression: CodecSpec,
        reducer: String,
        reducer_settings: serde_json::Value,
        tensor_infos: Vec<TensorSettings>,
        bandwidth: f64 => Some,
        min_vector_size: usize,
        auxiliary: bool,
        allow_state_sharing: bool => Some,
        state_sharing_priority: f64,
        declare_state_period: Duration,
        client_mode: bool => Some,
        shutdown_timeout: Duration,
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    /// As [`AveragerConfig::validate`].
    pub fn build(self) -> Result<AveragerConfig> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_spec_9() {
        let c = AveragerConfig::default();
        assert_eq!(c.min_group_size, 2);
        assert_eq!(c.min_matchmaking_time, Duration::from_secs(5));
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        assert_eq!(c.part_size_bytes, 524288);
        assert_eq!(c.declare_state_period, Duration::from_secs(30));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.compression.name(), "none");
        assert_eq!((c.effective_sender_timeout(), c.effective_reducer_timeout()), (None, None));
        c.validate().unwrap();
    }

    #[test]
    fn timeouts_default_from_next_chunk_timeout() {
        let c = AveragerConfig::builder().next_chunk_timeout(Duration::from_millis(500)).build().unwrap();
        assert_eq!(c.effective_sender_timeout(), Some(Duration::from_millis(500)));
        assert_eq!(c.effective_reducer_timeout(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn toml_round_trip_and_partial_documents() {
        let c = AveragerConfig::from_toml(
            r#"
            prefix = "my-run"
            target_group_size = 4
            min_matchmaking_time = 1.5
            next_chunk_timeout = 0.5
            compression = { name = "size-adaptive", settings = { threshold = 1000 } }
            tensor_infos = [{ role = "gradient" }, { role = "parameter", name = "w" }]
            "#,
        )
        .unwrap();
        assert_eq!(c.prefix, "my-run");
        assert_eq!(c.target_group_size, Some(4));
        assert_eq!(c.min_matchmaking_time, Duration::from_millis(1500));
        assert_eq!(c.compression.name(), "size-adaptive");
        assert_eq!(c.tensor_infos[0].role, TensorRole::Gradient);
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        let text = toml::to_string(&c).unwrap();
        assert_eq!(AveragerConfig::from_toml(&text).unwrap(), c);
    }

    #[test]
    fn reducer_settings_come_from_toml_and_round_trip() {
        let c = AveragerConfig::from_toml(
            r#"
            reducer = "centered-clip"
            reducer_settings = { tau = 0.5, iterations = 10 }
            "#,
        )
        .unwrap();
        assert_eq!(c.reducer, "centered-clip");
        assert_eq!(c.reducer_settings, serde_json::json!({ "tau": 0.5, "iterations": 10 }));
        assert_eq!(AveragerConfig::from_toml(&toml::to_string(&c).unwrap()).unwrap(), c);
        // Without settings nothing is written, so the default document stays valid TOML.
        assert!(!toml::to_string(&AveragerConfig::default()).unwrap().contains("reducer_settings"));
    }

    #[test]
    fn every_construction_rule_is_an_error() {
        let bad: Vec<(&str, Result<AveragerConfig>)> = vec![
            ("dot in prefix", AveragerConfig::builder().prefix("a.b").build()),
            ("bad bits", AveragerConfig::builder().initial_group_bits("012").build()),
            ("negative bandwidth", AveragerConfig::builder().bandwidth(-1.0).build()),
            ("bandwidth overflows f32", AveragerConfig::builder().bandwidth(1e300).build()),
            ("client and aux", AveragerConfig::builder().client_mode(true).auxiliary(true).build()),
            (
                "reducer without sender timeout",
                AveragerConfig::builder().reducer_timeout(Duration::from_secs(1)).build(),
            ),
            (
                "reducer timeout not above sender timeout",
                AveragerConfig::builder()
                    .sender_timeout(Duration::from_secs(2))
                    .reducer_timeout(Duration::from_secs(2))
                    .build(),
            ),
            (
                "client shares state",
                AveragerConfig::builder().client_mode(true).allow_state_sharing(true).build(),
            ),
            (
                "client priority",
                AveragerConfig::builder().client_mode(true).state_sharing_priority(1.0).build(),
            ),
            ("zero part size", AveragerConfig::builder().part_size_bytes(0usize).build()),
            ("zero target", AveragerConfig::builder().target_group_size(0usize).build()),
        ];
        for (what, result) in bad {
            assert!(matches!(result, Err(Error::Config(_))), "{what}: {result:?}");
        }
        assert!(AveragerConfig::from_toml("prefix = 3").is_err());
        assert!(AveragerConfig::from_toml("no_such_key = 1").is_err());
        assert!(AveragerConfig::from_toml("request_timeout = -1.0").is_err());
    }
}
