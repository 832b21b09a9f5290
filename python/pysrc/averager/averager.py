"""``averager.DecentralizedAverager``: hivemind's class of the same name on the Rust core."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import msgpack

from . import _native, _tensors
from .compression import CompressionBase, CompressionInfo, NoCompression, PerTensorCompression, _codec
from .control import StepControl
from .dht import DHT

logger = logging.getLogger(__name__)


class MSGPackSerializer:
    """How ``gather`` values and state metadata travel (msgpack, as hivemind)."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)

    @staticmethod
    def loads(buf: bytes) -> Any:
        return msgpack.unpackb(buf, raw=False, strict_map_key=False)


def _listen_host(dht: DHT) -> str:
    """The gRPC listen address: the host of the DHT's first ``/ip4`` or ``/ip6`` address."""
    for maddr in dht.host_maddrs:
        parts = maddr.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
            ip = ipaddress.ip_address(parts[2])
            return f"[{ip}]:0" if ip.version == 6 else f"{ip}:0"
    return "0.0.0.0:0"


def _seconds(value: Optional[float], name: str, optional: bool) -> Optional[float]:
    if value is None:
        if optional:
            return None
        raise TypeError(f"{name} must be a number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _int(value: Any, name: str, minimum: int, optional: bool = False) -> Optional[int]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _check_per_tensor(compression: Any, infos: Optional[List[CompressionInfo]], count: int) -> None:
    """A PerTensorCompression must name a codec for every tensor: a missing one would only show
    up as a failing all-reduce."""
    if not isinstance(compression, PerTensorCompression):
        return
    keys = [info.key if info is not None and info.key is not None else i for i, info in enumerate(infos or [None] * count)]
    table = compression.tensor_compressors
    if isinstance(table, Mapping):
        names = {str(k) for k in table}
        missing = [k for k in keys if str(k) not in names]
    else:
        missing = [k for k in keys if not (isinstance(k, int) and 0 <= k < len(table))]
    if missing:
        raise ValueError(f"PerTensorCompression has no codec for tensor keys {missing}")


class DecentralizedAverager:
    """Averages a fixed list of tensors with other peers under the same ``prefix``.

    Peers find each other through ``dht``, form groups of up to ``target_group_size`` and run a
    butterfly all-reduce in each group; repeated steps converge to the global average. Every
    argument, its default and its meaning are hivemind's:

    :param averaged_tensors: CPU ``torch.Tensor`` or ``numpy.ndarray`` objects (float32, float16,
      bfloat16 (torch only) or float64, contiguous). They are averaged **in place**: after a
      successful step they hold the result. Change them only inside ``with get_tensors():``.
    :param dht: the :class:`averager.DHT` node to find groups through
    :param start: start serving now (else call :meth:`run_in_background`)
    :param prefix: shared prefix of all group keys; must not contain ``.``
    :param target_group_size: groups never exceed this many peers (a power of 2 is recommended);
      ``None``: no limit, groups close at the leader's deadline
    :param min_group_size: a group forms with at least this many peers (itself included), default 2
    :param initial_group_bits: string of ``0``/``1``, the initial bucket index (default empty)
    :param min_matchmaking_time: seconds a peer keeps looking for a group (default 5)
    :param request_timeout: seconds to wait for a leader's reply (default 3; keep it below
      ``min_matchmaking_time``)
    :param averaging_alpha: local tensors move this fraction of the way to the average (default 1:
      set them to the average)
    :param part_size_bytes: tensors travel in parts of at most this many bytes (default 2**19)
    :param allreduce_timeout: seconds the all-reduce may take once a group formed (default none)
    :param next_chunk_timeout: a peer silent this long between parts is dropped from the
      all-reduce; also the per-chunk limit of state downloads (default none)
    :param sender_timeout: as above for senders; defaults to ``next_chunk_timeout``
    :param reducer_timeout: as above for reducers; defaults to twice ``sender_timeout``
    :param compression: a compression object (:mod:`averager.compression`) or codec name for the
      all-reduce (default :class:`NoCompression`)
    :param state_compression: the same for state downloads
    :param tensor_infos: one :class:`CompressionInfo` per tensor (its key and role), for
      role- and per-tensor compression
    :param bandwidth: this peer's bandwidth for load balancing; ``None``: the group's mean; 0: this
      peer reduces nothing
    :param min_vector_size: peers whose share would be smaller than this many elements reduce none
    :param auxiliary: assist others in reducing without contributing tensors
    :param allow_state_sharing: let others download this peer's state (default: unless client or
      auxiliary); also a property
    :param declare_state_period: re-declare this peer as a state donor every this many seconds
      (default 30)
    :param client_mode: accept no incoming requests; default: the DHT's ``client_mode``
    :param daemon: accepted for compatibility (the averager runs on native threads)
    :param shutdown_timeout: :meth:`shutdown` waits this long for running steps (default 5)

    ``peer_id`` is this averager's endpoint, the key under which :meth:`step` reports it (it is not
    the DHT's libp2p peer id: averagers talk gRPC). Subclass and override
    :meth:`get_current_state` to choose what newcomers download.
    """

    serializer = MSGPackSerializer

    def __init__(
        self,
        averaged_tensors: Sequence[Any],
        dht: DHT,
        *,
        start: bool,
        prefix: str,
        target_group_size: Optional[int] = None,
        min_group_size: int = 2,
        initial_group_bits: str = "",
        min_matchmaking_time: float = 5.0,
        request_timeout: float = 3.0,
        averaging_alpha: float = 1.0,
        part_size_bytes: int = 2**19,
        allreduce_timeout: Optional[float] = None,
        next_chunk_timeout: Optional[float] = None,
        sender_timeout: Optional[float] = None,
        reducer_timeout: Optional[float] = None,
        compression: CompressionBase = NoCompression(),
        state_compression: CompressionBase = NoCompression(),
        tensor_infos: Optional[Sequence[CompressionInfo]] = None,
        bandwidth: Optional[float] = None,
        min_vector_size: int = 0,
        auxiliary: bool = False,
        allow_state_sharing: Optional[bool] = None,
        declare_state_period: float = 30,
        client_mode: Optional[bool] = None,
        daemon: bool = True,
        shutdown_timeout: float = 5,
    ):
        if not isinstance(dht, DHT):
            raise TypeError(f"dht must be an averager.DHT, got {type(dht).__name__}")
        if isinstance(averaged_tensors, (str, bytes)) or not hasattr(averaged_tensors, "__iter__"):
            raise TypeError("averaged_tensors must be a sequence of tensors")
        self._averaged_tensors: List[Any] = list(averaged_tensors)
        _tensors.specs(self._averaged_tensors)  # type and layout checks, before anything starts
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        if "." in prefix:
            raise ValueError("group prefix must be a string without trailing '.'")
        if not isinstance(initial_group_bits, str) or not all(b in "01" for b in initial_group_bits):
            raise ValueError(f"initial_group_bits must be a string of 0 and 1, got {initial_group_bits!r}")
        if bandwidth is not None:
            bandwidth = _seconds(bandwidth, "bandwidth", optional=False)
        if client_mode and auxiliary:
            raise ValueError("auxiliary peers must accept incoming connections (client_mode and auxiliary)")
        if not isinstance(averaging_alpha, (int, float)) or isinstance(averaging_alpha, bool):
            raise TypeError(f"averaging_alpha must be a number, got {averaging_alpha!r}")
        if tensor_infos is not None:
            tensor_infos = list(tensor_infos)
            if not all(isinstance(i, CompressionInfo) for i in tensor_infos):
                raise TypeError("tensor_infos must be CompressionInfo objects")
            if len(tensor_infos) != len(self._averaged_tensors):
                raise ValueError("tensor_infos must have one entry per averaged tensor")
        self.tensor_infos = tensor_infos
        _check_per_tensor(compression, tensor_infos, len(self._averaged_tensors))
        self.dht = dht
        self.prefix = prefix
        self.client_mode = dht.client_mode if client_mode is None else bool(client_mode)
        self.shutdown_timeout = _seconds(shutdown_timeout, "shutdown_timeout", optional=False)
        self.min_matchmaking_time = _seconds(min_matchmaking_time, "min_matchmaking_time", optional=False)
        self._config = {
            "prefix": prefix,
            "target_group_size": _int(target_group_size, "target_group_size", 1, optional=True),
            "min_group_size": _int(min_group_size, "min_group_size", 1),
            "initial_group_bits": initial_group_bits,
            "min_matchmaking_time": self.min_matchmaking_time,
            "request_timeout": _seconds(request_timeout, "request_timeout", optional=False),
            "averaging_alpha": float(averaging_alpha),
            "part_size_bytes": _int(part_size_bytes, "part_size_bytes", 1),
            "allreduce_timeout": _seconds(allreduce_timeout, "allreduce_timeout", optional=True),
            "next_chunk_timeout": _seconds(next_chunk_timeout, "next_chunk_timeout", optional=True),
            "sender_timeout": _seconds(sender_timeout, "sender_timeout", optional=True),
            "reducer_timeout": _seconds(reducer_timeout, "reducer_timeout", optional=True),
            "compression": _codec(compression, "compression"),
            "state_compression": _codec(state_compression, "state_compression"),
            "tensor_infos": [info._spec(i) for i, info in enumerate(tensor_infos or ())],
            "bandwidth": bandwidth,
            "min_vector_size": _int(min_vector_size, "min_vector_size", 0),
            "auxiliary": bool(auxiliary),
            "allow_state_sharing": allow_state_sharing,
            "declare_state_period": _seconds(declare_state_period, "declare_state_period", optional=False),
            "client_mode": self.client_mode,
            "shutdown_timeout": self.shutdown_timeout,
        }
        self._native: Optional[_native.NativeAverager] = None
        self._start_lock = threading.Lock()
        # Before the native averager runs, get_tensors() still needs a lock.
        self._local_lock = threading.RLock()
        if start:
            self.run_in_background()

    # -- lifecycle ---------------------------------------------------------------------------

    def run_in_background(self, await_ready: bool = True, timeout: Optional[float] = None) -> None:
        """Starts serving (the averager runs on native threads); returns once it is ready."""
        with self._start_lock:
            if self._native is not None:
                return
            self.dht.run_in_background()
            ref = weakref.ref(self)

            def provide() -> Tuple[bytes, list, Any]:
                this = ref()
                if this is None:
                    raise RuntimeError("the averager was garbage-collected")
                return this._provide_state()

            self._native = _native.NativeAverager(
                self.dht.native,
                _tensors.specs(self._averaged_tensors),
                json.dumps(self._config),
                _listen_host(self.dht),
                provide,
            )

    def run(self) -> None:
        """Starts serving (hivemind's process entry point; here the same as run_in_background)."""
        self.run_in_background()

    def is_alive(self) -> bool:
        return self._native is not None

    @property
    def _engine(self) -> "_native.NativeAverager":
        if self._native is None:
            raise RuntimeError("the averager is not running: pass start=True or call run_in_background()")
        return self._native

    def shutdown(self) -> None:
        """Stops serving and cancels running steps (waits up to ``shutdown_timeout``)."""
        if self._native is not None:
            try:
                self._native.shutdown()
            except RuntimeError as e:
                logger.warning("%s", e)

    def __del__(self) -> None:
        native = getattr(self, "_native", None)
        if native is not None:
            with contextlib.suppress(Exception):
                native.shutdown()

    @property
    def peer_id(self) -> str:
        """This averager's endpoint: its key in :meth:`step` results."""
        return self._engine.endpoint

    @property
    def mode(self) -> str:
        """``"node"``, ``"client"`` or ``"aux"``."""
        return self._engine.mode

    # -- averaging ---------------------------------------------------------------------------

    def step(
        self,
        gather: Optional[Any] = None,
        scheduled_time: Optional[float] = None,
        weight: Optional[float] = None,
        timeout: Optional[float] = None,
        allow_retries: bool = True,
        require_trigger: bool = False,
        wait: bool = True,
    ) -> Union[Optional[Dict[str, Any]], StepControl]:
        """Finds a group and averages once.

        :param gather: any msgpack-serializable value, sent to every groupmate (all-gather)
        :param scheduled_time: when the all-reduce should begin, in :func:`get_dht_time` seconds;
          default now + ``min_matchmaking_time``
        :param weight: this peer's weight in the average (default 1; 0 for auxiliary peers)
        :param timeout: give up when no group formed within this many seconds
        :param allow_retries: after a failed round, try again while time remains
        :param require_trigger: the all-reduce waits for :meth:`StepControl.allow_allreduce`
          (needs ``wait=False``)
        :param wait: return the result (default) or a :class:`StepControl` at once
        :returns: ``{peer: gathered value}`` for the whole group on success (this peer
          included), ``None`` on failure; the tensors hold the averaged values
        """
        if wait and require_trigger:
            raise ValueError("Non-asynchronous step cannot wait for trigger (use wait=False)")
        if weight is not None:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise TypeError(f"weight must be a number, got {weight!r}")
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weight must be a finite number >= 0, got {weight}")
            weight = float(weight)
        if scheduled_time is not None:
            if isinstance(scheduled_time, bool) or not isinstance(scheduled_time, (int, float)):
                raise TypeError(f"scheduled_time must be a number, got {scheduled_time!r}")
            scheduled_time = float(scheduled_time)
        timeout = _seconds(timeout, "timeout", optional=True)
        if gather is None:
            packed = None
        else:
            try:
                packed = self.serializer.dumps(gather)
            except (TypeError, ValueError, OverflowError) as e:
                raise TypeError(f"gather must be msgpack-serializable: {e}") from e
        tensors = list(self._averaged_tensors)
        native = self._engine.step(
            _tensors.specs(tensors), tensors, packed, scheduled_time, weight, timeout,
            bool(allow_retries), bool(require_trigger),
        )
        control = StepControl(native, tensors)
        if not wait:
            return control
        try:
            return control.result()
        except BaseException:
            # Ctrl+C (or any other interruption): cancel, and let a running all-reduce end so the
            # tensors are never left half-written.
            control.cancel()
            native.wait(self.shutdown_timeout)
            raise

    @contextlib.contextmanager
    def get_tensors(self) -> Iterator[List[Any]]:
        """Locks the averaged tensors and yields them; no step writes them while the lock is held.
        A step whose all-reduce is running holds them until its result is in (as hivemind's
        averager does); a step that has not begun its all-reduce averages the values it was
        called with, whatever is written here. Do not use them after the ``with`` block if a step
        may be running."""
        native = self._native
        if native is None:
            with self._local_lock:
                yield self._averaged_tensors
            return
        native.lock_tensors()
        try:
            yield self._averaged_tensors
        finally:
            native.unlock_tensors()

    # -- group bits and state sharing ----------------------------------------------------------

    def get_group_bits(self, wait: bool = True) -> Union[str, Future]:
        """The current group bits (without the prefix)."""
        return self._maybe_future(lambda: self._engine.get_group_bits(), wait)

    def set_group_bits(self, group_bits: str, wait: bool = True) -> Optional[Future]:
        """Replaces the group bits (a string of ``0``/``1``)."""
        if not isinstance(group_bits, str):
            raise TypeError(f"group_bits must be a str, got {group_bits!r}")
        return self._maybe_future(lambda: self._engine.set_group_bits(group_bits), wait)

    @property
    def allow_state_sharing(self) -> bool:
        """Whether other peers may download this peer's state (settable)."""
        return self._engine.allow_state_sharing

    @allow_state_sharing.setter
    def allow_state_sharing(self, value: bool) -> None:
        self._engine.allow_state_sharing = bool(value)

    @property
    def state_sharing_priority(self) -> float:
        """Downloaders prefer donors with higher priority (settable)."""
        return self._engine.state_sharing_priority

    @state_sharing_priority.setter
    def state_sharing_priority(self, value: float) -> None:
        self._engine.state_sharing_priority = float(value)

    def get_current_state(self) -> Tuple[Any, Sequence[Any], Sequence[CompressionInfo]]:
        """What a peer downloading this peer's state receives: ``(metadata, tensors, infos)``.

        Called whenever a peer downloads the state; meant to be overridden. ``metadata`` must be
        msgpack-serializable. The default is ``({"group_key": bits}, copies of the averaged
        tensors, tensor_infos)``.
        """
        copies = self._copy_tensors()
        infos = self.tensor_infos or [CompressionInfo(key=i) for i in range(len(copies))]
        return dict(group_key=self.get_group_bits()), copies, infos

    def _copy_tensors(self) -> List[Any]:
        """Copies of the averaged tensors. While a step's all-reduce reads them in place, the
        values it began with, without waiting for its result (a peer downloading this state
        would otherwise wait for the whole all-reduce)."""
        native = self._native
        if native is not None:
            copies = [_tensors.empty_like(t) for t in self._averaged_tensors]
            if native.copy_lent(_tensors.specs(copies)):
                return copies
        with self.get_tensors() as tensors:
            return [_tensors.copy(t) for t in tensors]

    def _provide_state(self) -> Tuple[bytes, list, Any]:
        state = self.get_current_state()
        metadata, tensors = state[0], list(state[1])
        specs, owners = _tensors.snapshot(tensors)
        return self.serializer.dumps(metadata), specs, owners

    def load_state_from_peers(
        self, wait: bool = True, timeout: Optional[float] = None
    ) -> Union[Optional[Tuple[Any, List[Any]]], Future]:
        """Downloads the state of the best donor: ``(metadata, tensors)`` or ``None``.
        Tensors come back as torch tensors when this averager's are torch tensors, else numpy."""
        timeout = _seconds(timeout, "timeout", optional=True)

        def load() -> Optional[Tuple[Any, List[Any]]]:
            loaded = self._engine.load_state_from_peers(timeout)
            if loaded is None:
                return None
            metadata, tensors = loaded
            as_torch = any(_tensors.is_torch(t) for t in self._averaged_tensors)
            metadata = self.serializer.loads(metadata) if metadata else None
            return metadata, [_tensors.from_bytes(data, dtype, shape, as_torch) for data, dtype, shape in tensors]

        return self._maybe_future(load, wait)

    @staticmethod
    def _maybe_future(fn: Any, wait: bool) -> Any:
        if wait:
            return fn()
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as e:  # delivered to the caller through the future
                future.set_exception(e)

        threading.Thread(target=run, daemon=True).start()
        return future

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r}, peer_id={self._native and self._native.endpoint})"
