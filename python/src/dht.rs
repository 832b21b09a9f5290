//! `averager.DHT`'s engine: a Kademlia node on the runtime it owns.

use std::sync::Arc;
use std::time::Duration;

use ::averager::kad::{KadDht, KadSettings, Multiaddr};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::IntoPy;
use crate::runtime::Runtime;

/// A running Kademlia node. Averagers built on it share its runtime.
#[pyclass(module = "averager._native", frozen)]
pub(crate) struct NativeDht {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) node: Arc<KadDht>,
    /// hivemind's `client_mode` of the DHT: the averager's default for its own.
    #[pyo3(get)]
    pub(crate) client_mode: bool,
}

fn parse_addrs(addrs: &[String], what: &str) -> PyResult<Vec<Multiaddr>> {
    addrs
        .iter()
        .map(|a| {
            a.parse().map_err(|e| PyValueError::new_err(format!("{what} {a:?} is not a multiaddr: {e}")))
        })
        .collect()
}

#[pymethods]
impl NativeDht {
    /// Starts a node listening on `host_maddrs` and joining through `initial_peers`.
    #[new]
    #[pyo3(signature = (initial_peers, host_maddrs, client_mode, wait_timeout))]
    fn new(
        py: Python<'_>,
        initial_peers: Vec<String>,
        host_maddrs: Vec<String>,
        client_mode: bool,
        wait_timeout: f64,
    ) -> PyResult<Self> {
        let settings = KadSettings {
            listen: parse_addrs(&host_maddrs, "host_maddrs entry")?,
            bootstrap: parse_addrs(&initial_peers, "initial_peers entry")?,
            ..KadSettings::default()
        };
        settings.validate().py_err()?;
        let runtime = Runtime::new()?;
        let joining = !settings.bootstrap.is_empty();
        let node = runtime.block_on(py, async move {
            let node = KadDht::start(settings).await?;
            if joining {
                // Joining returns once bootstrapped; make sure the routing table is not empty.
                node.wait_for_peers(1, Duration::from_secs_f64(wait_timeout)).await?;
            }
            Ok::<_, ::averager::Error>(node)
        });
        let node = Arc::new(node.py_err()?);
        Ok(NativeDht { runtime, node, client_mode })
    }

    /// This node's libp2p peer id.
    #[getter]
    fn peer_id(&self) -> String {
        self.node.peer_id().to_string()
    }

    /// The addresses others pass as `initial_peers`, each ending in `/p2p/<peer id>`.
    fn get_visible_maddrs(&self) -> Vec<String> {
        self.node.listen_addrs().iter().map(ToString::to_string).collect()
    }

    /// How many peers the routing table holds.
    fn known_peers(&self) -> usize {
        self.node.known_peers()
    }

    /// Stops the node (a second call does nothing).
    fn shutdown(&self, py: Python<'_>) {
        let node = Arc::clone(&self.node);
        self.runtime.block_on(py, async move { node.shutdown().await });
    }
}
