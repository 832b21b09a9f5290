"""``StepControl``: the handle of one averaging step run with ``wait=False``."""

from __future__ import annotations

import enum
import logging
import time
from concurrent.futures import CancelledError
from typing import Any, Dict, Optional

import msgpack

logger = logging.getLogger(__name__)

# How often a waiting call gives the interpreter a chance to run signal handlers (Ctrl+C).
_POLL_SECONDS = 0.05


class AveragingStage(enum.Enum):
    """Where a step is (hivemind's member names and values)."""

    IDLE = 0
    LOOKING_FOR_GROUP = 1
    AWAITING_TRIGGER = 2
    RUNNING_ALLREDUCE = 3
    FINISHED = 4


def _unpack(value: Optional[bytes]) -> Any:
    return None if value is None else msgpack.unpackb(value, raw=False, strict_map_key=False)


class StepControl:
    """One step: ``stage``, ``allow_allreduce()`` (for ``require_trigger``), ``cancel()``,
    ``cancelled()``, ``done()`` and ``result()``; the averaged values are written into the
    user's tensors before ``done()`` turns true."""

    def __init__(self, native: Any, keepalive: Any):
        self._native = native
        self._keepalive = keepalive  # the user's tensors stay alive while the step may write them

    @property
    def stage(self) -> AveragingStage:
        return AveragingStage(self._native.stage)

    @property
    def scheduled_time(self) -> float:
        return self._native.scheduled_time

    @property
    def weight(self) -> float:
        return self._native.weight

    @property
    def triggered(self) -> bool:
        return self._native.triggered

    def allow_allreduce(self) -> None:
        """Lets a ``require_trigger`` step start its all-reduce. The tensors are read again now,
        so changes made after ``step()`` returned are averaged."""
        self._native.allow_allreduce()

    def cancel(self) -> bool:
        """Cancels the step unless its all-reduce already began; whether it did."""
        return self._native.cancel()

    def cancelled(self) -> bool:
        return self._native.cancelled()

    def done(self) -> bool:
        return self._native.done()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until done (or ``timeout`` seconds); whether it is done. Ctrl+C interrupts it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _POLL_SECONDS if deadline is None else min(_POLL_SECONDS, deadline - time.monotonic())
            # The GIL is released while the native side waits; between waits, Python runs signal
            # handlers, so a KeyboardInterrupt surfaces here within _POLL_SECONDS.
            if self._native.wait(max(left, 0.0)):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def result(self, timeout: Optional[float] = None) -> Optional[Dict[str, Any]]:
        """``{peer: gathered}`` on success, ``None`` on failure; raises ``CancelledError`` after
        ``cancel()`` and ``TimeoutError`` when not done within ``timeout``."""
        if not self.wait(timeout):
            raise TimeoutError(f"the step did not finish within {timeout} s")
        kind, value = self._native.outcome()
        if kind == "done":
            self._keepalive = None
            return {peer: _unpack(data) for peer, data in value.items()}
        if kind == "cancelled" and self.cancelled():
            raise CancelledError(value)
        logger.warning("averaging step failed: %s", value)
        return None

    def exception(self) -> Optional[BaseException]:
        return None

    def __repr__(self) -> str:
        return f"StepControl(stage={self.stage.name}, done={self.done()})"
