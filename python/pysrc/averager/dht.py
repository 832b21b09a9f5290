"""``averager.DHT``: a Kademlia node (libp2p) that averagers find each other through."""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterable, List, Optional, Sequence, Union

from . import _native

logger = logging.getLogger(__name__)

# hivemind arguments that configure its own daemon or process and have no meaning here.
_IGNORED = {
    "daemon", "num_workers", "record_validators", "p2p", "identity_path", "use_ipfs", "announce_maddrs",
    "use_relay", "use_auto_relay", "quic", "tls", "use_ipfs", "ensure_bootstrap_success", "cache_locally",
    "cache_nearest", "cache_size", "cache_refresh_before_expiry", "cache_on_store", "reuse_get_requests",
    "parallel_rpc", "wait_timeout", "bucket_size", "num_replicas", "depth_modulo", "startup_timeout",
}


class DHT:
    """A DHT node (hivemind's ``hivemind.DHT``): Kademlia over libp2p, run by the Rust core.

    :param initial_peers: multiaddrs of running nodes to join through (what their
      :meth:`get_visible_maddrs` returns, ending in ``/p2p/<peer id>``); empty starts a new swarm
    :param host_maddrs: multiaddrs to listen on; port 0 picks a free port. Averagers built on this
      node serve their gRPC endpoint on the host of the first one (``0.0.0.0`` is advertised
      to peers as ``127.0.0.1``: give a routable address for multi-machine runs)
    :param start: start the node now (else call :meth:`run_in_background`)
    :param client_mode: averagers on this node default to ``client_mode`` (accept no requests)
    :param await_ready: kept for hivemind compatibility; starting always waits until the node runs
    :param shutdown_timeout: kept for hivemind compatibility
    :param startup_timeout: seconds to wait for the first peer when joining through ``initial_peers``

    Other hivemind keyword arguments (``num_workers``, ``daemon``...) configure hivemind's own
    process and are accepted and ignored with a log message. Also a context manager.
    """

    def __init__(
        self,
        initial_peers: Optional[Sequence[Union[str, Any]]] = (),
        *,
        start: bool = True,
        host_maddrs: Sequence[Union[str, Any]] = ("/ip4/0.0.0.0/tcp/0",),
        client_mode: bool = False,
        await_ready: bool = True,
        shutdown_timeout: float = 3,
        startup_timeout: float = 30,
        **kwargs: Any,
    ):
        unknown = set(kwargs) - _IGNORED
        if unknown:
            raise TypeError(f"DHT() got unexpected keyword arguments {sorted(unknown)}")
        if kwargs:
            logger.info("DHT: ignoring hivemind-only arguments %s", sorted(kwargs))
        self.initial_peers: List[str] = [str(p) for p in (initial_peers or ())]
        if isinstance(host_maddrs, str):
            host_maddrs = [host_maddrs]
        self.host_maddrs: List[str] = [str(a) for a in host_maddrs]
        if not self.host_maddrs:
            raise ValueError("host_maddrs must name at least one address")
        self.client_mode = bool(client_mode)
        self.shutdown_timeout = shutdown_timeout
        self.startup_timeout = float(startup_timeout)
        self._native: Optional[_native.NativeDht] = None
        self._lock = threading.Lock()
        if start:
            self.run_in_background(await_ready=await_ready)

    def run_in_background(self, await_ready: bool = True, timeout: Optional[float] = None) -> None:
        """Starts the node (it runs on threads of the native module); returns once it listens."""
        with self._lock:
            if self._native is None:
                self._native = _native.NativeDht(
                    self.initial_peers, self.host_maddrs, self.client_mode, self.startup_timeout
                )

    def run(self) -> None:
        """Starts the node (hivemind runs its process here; this node runs in background threads)."""
        self.run_in_background()

    def is_alive(self) -> bool:
        return self._native is not None

    @property
    def native(self) -> "_native.NativeDht":
        if self._native is None:
            raise RuntimeError("the DHT is not running: pass start=True or call run_in_background()")
        return self._native

    @property
    def peer_id(self) -> str:
        """This node's libp2p peer id."""
        return self.native.peer_id

    def get_visible_maddrs(self, latest: bool = False) -> List[str]:
        """Addresses other nodes pass as ``initial_peers``."""
        return self.native.get_visible_maddrs()

    def shutdown(self) -> None:
        """Stops the node; averagers using it stop finding peers. Safe to call twice."""
        with self._lock:
            if self._native is not None:
                self._native.shutdown()

    def __enter__(self) -> "DHT":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = f"peer_id={self._native.peer_id}" if self._native else "not started"
        return f"DHT({state})"
