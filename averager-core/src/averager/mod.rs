//! The `Averager` (hivemind's `DecentralizedAverager`, protocol 8): built from tensors, a DHT, a
//! transport and an [`AveragerConfig`]; it serves the three RPCs, runs steps (matchmaking, then
//! the all-reduce), shares its state, and shuts down cleanly.

mod bandwidth;
mod config;
mod gathered;
mod lent;
mod report;
mod result_target;
mod round;
mod round_end;
mod schema;
mod service;
mod state;
mod step_control;
mod step_options;
mod telemetry;

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub use config::{AveragerConfig, AveragerConfigBuilder, CodecSpec, TensorSettings};
pub use gathered::Gathered;
pub use lent::{InputLender, LentTensors};
pub use report::StepReport;
pub use result_target::{ResultTarget, StepUpdate, UpdatePart};
pub(crate) use schema::schema_hash;
pub use state::AveragerState;
pub use step_control::{Stage, StepControl};
pub use step_options::StepOptions;

use crate::allreduce::{RoundRouter, RoundTensors};
use crate::compression::{Compression, CompressionInfo, TensorKey};
use crate::dht::Dht;
use crate::error::{Error, Result};
use crate::matchmaking::{GatherPayload, Matchmaker, MatchmakingConfig, PeerMode, validate_bits};
use crate::reduce::Reducer;
use crate::registry::{PluginConfig, Registry};
use crate::state::{StateProvider, StateSharing};
use crate::tensor::Tensor;
use crate::time::dht_now;
use crate::transport::{ServerHandle, Transport};
use round_end::StepIo;

/// Decentralized averaging of a fixed set of tensors with whoever else runs under the same prefix.
///
/// Cheap to share: every method takes `&self`. Dropping the last handle stops serving and cancels
/// running work; [`Averager::shutdown`] does the same and waits for it.
pub struct Averager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Averager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Averager")
            .field("endpoint", &self.inner.endpoint)
            .field("mode", &self.inner.mode)
            .finish()
    }
}

/// Everything an averager's tasks share.
pub(crate) struct Inner {
    config: AveragerConfig,
    mode: PeerMode,
    endpoint: String,
    transport: Arc<dyn Transport>,
    registry: &'static Registry,
    codec: Arc<dyn Compression>,
    reducer: Arc<dyn Reducer>,
    tensors: tokio::sync::Mutex<Vec<Tensor>>,
    /// While an all-reduce runs, the tensors as they were when it began (they do not change until
    /// it ends): what state downloads serve meanwhile, instead of waiting for the tensor lock.
    round_tensors: tokio::sync::watch::Sender<Option<Arc<RoundTensors>>>,
    /// The all-reduces' delta buffers, kept from round to round (freed with the averager).
    scratch: Arc<crate::allreduce::ScratchPool>,
    infos: Vec<CompressionInfo>,
    schema_hash: Bytes,
    matchmaker: Arc<Matchmaker>,
    router: Arc<RoundRouter>,
    bits: Arc<Mutex<String>>,
    step_lock: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    server: Mutex<Option<ServerHandle>>,
    state: state::StateParts,
    /// Part messages sent and received in the round under way, for the steps' reports.
    traffic: Arc<telemetry::RoundTraffic>,
    /// What this peer measured of its all-reduces, declared when no bandwidth is configured.
    bandwidth: bandwidth::BandwidthEstimator,
}

impl Averager {
    /// Starts an averager: validates `config` (protocol 8.3), builds its codecs and reducer from the
    /// global registry, and (unless it is a CLIENT) starts serving on `transport`.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration or a codec that refuses a tensor's dtype,
    /// [`Error::UnknownPlugin`] for an unknown codec or reducer name, or the transport's error.
    pub async fn new(
        tensors: Vec<Tensor>,
        dht: Arc<dyn Dht>,
        transport: Arc<dyn Transport>,
        config: AveragerConfig,
    ) -> Result<Self> {
        Self::with_provider(tensors, dht, transport, config, None, Registry::global()).await
    }

    /// As [`Averager::new`], with a custom state provider (the seed's overridable
    /// `get_current_state`) and registry.
    ///
    /// # Errors
    /// As [`Averager::new`].
    pub async fn with_provider(
        tensors: Vec<Tensor>,
        dht: Arc<dyn Dht>,
        transport: Arc<dyn Transport>,
        config: AveragerConfig,
        provider: Option<Arc<dyn StateProvider>>,
        registry: &'static Registry,
    ) -> Result<Self> {
        config.validate()?;
        let client_mode = config.client_mode.unwrap_or_else(|| dht.client_mode());
        if client_mode && config.auxiliary {
            return Err(Error::Config("a CLIENT cannot be auxiliary".into()));
        }
        let mode = match (client_mode, config.auxiliary) {
            (true, _) => PeerMode::Client,
            (false, true) => PeerMode::Aux,
            (false, false) => PeerMode::Node,
        };
        let codec = registry.build_codec(config.compression.name(), &config.compression.settings())?;
        let state_codec =
            registry.build_codec(config.state_compression.name(), &config.state_compression.settings())?;
        let reducer =
            registry.reducer(&config.reducer, &PluginConfig::new(config.reducer_settings.clone()))?;
        let infos = tensor_infos(&tensors, &config);
        for (i, t) in tensors.iter().enumerate() {
            if !codec.accepts(t.dtype(), t.shape().len()) {
                return Err(Error::Config(format!(
                    "codec {} cannot encode tensor {i} ({} with {} dimensions)",
                    codec.name(),
                    t.dtype(),
                    t.shape().len()
                )));
            }
        }
        let views: Vec<_> = tensors.iter().map(Tensor::view).collect();
        let schema = Bytes::from(schema_hash(&views, &infos, codec.as_ref(), config.part_size_bytes));
        let bits = Arc::new(Mutex::new(config.initial_group_bits.clone()));
        let service = Arc::new(service::AveragerService::default());
        let (endpoint, server) = if client_mode {
            (format!("client://{}", hex(&rand::random::<[u8; 16]>())), None)
        } else {
            let server = transport.serve(service.clone()).await?;
            (server.endpoint().to_string(), Some(server))
        };
        let matchmaker = Matchmaker::new(
            MatchmakingConfig {
                endpoint: endpoint.clone(),
                prefix: config.prefix.clone(),
                client_mode,
                target_group_size: config.target_group_size,
                min_group_size: config.min_group_size,
                min_matchmaking_time: config.min_matchmaking_time,
                request_timeout: config.request_timeout,
                schema_hash: schema.clone(),
            },
            Arc::clone(&dht),
            Arc::clone(&transport),
            Arc::clone(&bits),
        );
        let allow_sharing = config.allow_state_sharing.unwrap_or(mode == PeerMode::Node);
        let sharing = Arc::new(if client_mode {
            StateSharing::client()
        } else {
            StateSharing::new(allow_sharing, config.state_sharing_priority)?
        });
        let inner = Arc::new(Inner {
            router: Arc::new(
                RoundRouter::new(config.request_timeout)
                    .first_part_wait(config.effective_sender_timeout())
                    .pending_every(crate::allreduce::progress_interval(
                        config.effective_sender_timeout(),
                        config.effective_reducer_timeout(),
                    )),
            ),
            state: state::StateParts::new(dht, sharing, state_codec, provider),
            bandwidth: bandwidth::BandwidthEstimator::default(),
            config,
            mode,
            endpoint,
            transport,
            registry,
            codec,
            reducer,
            tensors: tokio::sync::Mutex::new(tensors),
            round_tensors: tokio::sync::watch::channel(None).0,
            scratch: Arc::default(),
            infos,
            schema_hash: schema,
            matchmaker,
            bits,
            step_lock: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
            server: Mutex::new(server),
            traffic: Arc::default(),
        });
        let _ = service.inner.set(Arc::downgrade(&inner));
        inner.start_donor_loop();
        Ok(Averager { inner })
    }

    /// The endpoint other peers reach this averager at (`client://...` for a CLIENT).
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// **\[averager\]** the bandwidth this peer measured in its recent all-reduces, in MB/s
    /// (smoothed); it declares it to its groups while `bandwidth` is not configured. `None` before
    /// its first all-reduce, or when a bandwidth is configured (nothing is measured then).
    pub fn estimated_bandwidth(&self) -> Option<f64> {
        self.inner.bandwidth.estimate()
    }

    /// How this averager takes part (NODE, CLIENT or AUX).
    pub fn mode(&self) -> PeerMode {
        self.inner.mode
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &AveragerConfig {
        &self.inner.config
    }

    /// Exclusive access to the averaged tensors (the seed's `get_tensors`).
    ///
    /// The averager never changes them while the guard is held; an all-reduce holds the same
    /// lock, so this waits while one runs. Changing a tensor's shape or dtype makes later steps
    /// fail with [`Error::Config`] (the group would not agree on the partition).
    pub async fn tensors(&self) -> TensorsGuard<'_> {
        TensorsGuard(self.inner.tensors.lock().await)
    }

    /// Runs one averaging round and returns every member's gathered data (protocol 8.1, `wait=True`).
    ///
    /// # Errors
    /// [`Error::Config`] for invalid options; [`Error::NoGroup`] when no group formed by the
    /// deadline; [`Error::Cancelled`]; or the last round's error when retries ran out.
    pub async fn step(&self, options: StepOptions) -> Result<Gathered> {
        self.step_background(options).await?.result().await
    }

    /// The bandwidth this peer declares: the configured one, else its estimate (a CLIENT's is
    /// 0 to every reducer anyway).
    fn declared_bandwidth(&self) -> Option<f64> {
        self.inner.bandwidth.declared(self.inner.config.bandwidth)
    }

    /// Starts one averaging round in the background and returns its control (`wait=False`).
    ///
    /// # Errors
    /// [`Error::Config`] for invalid options.
    pub async fn step_background(&self, options: StepOptions) -> Result<StepControl<Gathered>> {
        self.step_background_after(options, std::future::ready(())).await
    }

    /// As [`Averager::step_background`], but the step's round loop (matchmaking, then the
    /// all-reduce) begins only once `ready` resolves. The control is live at once: it can be
    /// cancelled or triggered meanwhile and stays in [`Stage::Idle`] until then. A caller that
    /// keeps its own copy of the tensors (the Python binding) uses it to queue steps: the next
    /// step starts once the last one's result has been copied out and the next one's inputs
    /// copied in, so neither copy can race the other step's all-reduce.
    ///
    /// # Errors
    /// As [`Averager::step_background`].
    pub async fn step_background_after<F>(
        &self,
        options: StepOptions,
        ready: F,
    ) -> Result<StepControl<Gathered>>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::Cancelled("the averager shut down".into()));
        }
        let io = StepIo { target: options.target(), lender: options.lender() };
        let user = options.gather_bytes().map(<[u8]>::to_vec).unwrap_or_else(|| vec![0xc0]);
        let payload =
            GatherPayload { bandwidth: self.declared_bandwidth(), mode: self.inner.mode, user_bytes: user };
        let control = options.into_control::<Gathered>(
            dht_now(),
            self.inner.mode == PeerMode::Aux,
            self.inner.config.min_matchmaking_time,
            payload.encode(),
        )?;
        let (inner, handle) = (Arc::clone(&self.inner), control.averager_handle());
        tokio::spawn(async move {
            // A step cancelled (or an averager shut down) before `ready` never starts, and drops
            // `ready` at once rather than holding whatever it captured.
            let cancelled = tokio::select! {
                () = ready => return inner.run_step(handle, io).await,
                () = handle.cancelled_signal() => Error::Cancelled("the step was cancelled".into()),
                () = inner.shutdown.cancelled() => Error::Cancelled("the averager shut down".into()),
            };
            handle.finish(Err(cancelled));
        });
        Ok(control)
    }

    /// The current group bits (without the prefix).
    pub async fn group_bits(&self) -> String {
        self.inner.bits.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the group bits; later DHT lookups and join validation use the new key, while an
    /// existing declaration stays until it is renewed (protocol 8.3).
    ///
    /// # Errors
    /// [`Error::Config`] for anything but `0`/`1` characters.
    pub async fn set_group_bits(&self, bits: &str) -> Result<()> {
        validate_bits(bits)?;
        *self.inner.bits.lock().unwrap_or_else(PoisonError::into_inner) = bits.to_string();
        Ok(())
    }

    /// Stops serving, cancels running steps and all-reduces (protocol 8.3, **\[averager\]** 11.12),
    /// and waits up to `shutdown_timeout` for them to end.
    ///
    /// # Errors
    /// [`Error::Timeout`] when work was still running after `shutdown_timeout` (it is cancelled
    /// and ends on its own).
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.stop();
        let timeout = self.inner.config.shutdown_timeout;
        match tokio::time::timeout(timeout, self.inner.step_lock.lock()).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::timeout("running steps to end at shutdown", timeout)),
        }
    }
}

impl Drop for Averager {
    fn drop(&mut self) {
        self.inner.stop();
    }
}

impl Inner {
    fn stop(&self) {
        self.shutdown.cancel();
        self.router.cancel_all();
        self.state.stop();
        if let Some(server) = self.server.lock().unwrap_or_else(PoisonError::into_inner).take() {
            server.shutdown();
        }
    }

    /// The tensors must still have the shapes and dtypes the group agreed on.
    fn check_schema(&self, tensors: &[Tensor]) -> Result<()> {
        let views: Vec<_> = tensors.iter().map(Tensor::view).collect();
        let now = schema_hash(&views, &self.infos, self.codec.as_ref(), self.config.part_size_bytes);
        if now != self.schema_hash {
            return Err(Error::Config(
                "the averaged tensors changed shape, dtype or count since construction".into(),
            ));
        }
        Ok(())
    }
}

/// Exclusive access to the averaged tensors, from [`Averager::tensors`].
///
/// Derefs to a slice, so tensors can be read and changed in place but not added or removed.
pub struct TensorsGuard<'a>(tokio::sync::MutexGuard<'a, Vec<Tensor>>);

impl std::ops::Deref for TensorsGuard<'_> {
    type Target = [Tensor];
    fn deref(&self) -> &[Tensor] {
        &self.0
    }
}

impl std::ops::DerefMut for TensorsGuard<'_> {
    fn deref_mut(&mut self) -> &mut [Tensor] {
        &mut self.0
    }
}

impl std::fmt::Debug for TensorsGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|t| (t.shape(), t.dtype()))).finish()
    }
}

/// The compression infos of protocol 7.1: key = index (or the configured name), role as configured.
fn tensor_infos(tensors: &[Tensor], config: &AveragerConfig) -> Vec<CompressionInfo> {
    tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut info = CompressionInfo::for_tensor(i, &t.view());
            if let Some(settings) = config.tensor_infos.get(i) {
                info.role = settings.role;
                if let Some(name) = &settings.name {
                    info.key = TensorKey::Name(name.clone());
                }
            }
            info
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
