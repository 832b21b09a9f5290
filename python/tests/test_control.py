"""Step control: require_trigger, cancel, shutdown while a step runs, Ctrl+C."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

import averager
from averager import AveragingStage
from conftest import LOCAL, RESULT_TIMEOUT


def wait_until(condition, what, limit=RESULT_TIMEOUT):
    """Polls a condition with a generous deadline (a wait for a state, not a pacing sleep)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_require_trigger_waits_and_averages_values_set_before_the_trigger(group):
    arrays = [[np.zeros(3, dtype=np.float32)], [np.zeros(3, dtype=np.float32)]]
    peers = group(arrays)
    controls = [p.step(wait=False, require_trigger=True) for p in peers]
    for c in controls:
        wait_until(lambda c=c: c.stage == AveragingStage.AWAITING_TRIGGER, "the group to form")
    assert not any(c.done() for c in controls)
    # Values written after step() but before the trigger are the ones averaged.
    for i, peer in enumerate(peers):
        with peer.get_tensors() as tensors:
            tensors[0][:] = 2.0 * i
    for c in controls:
        c.allow_allreduce()
    results = [c.result(timeout=RESULT_TIMEOUT) for c in controls]
    assert all(r is not None for r in results)
    assert all(c.stage == AveragingStage.FINISHED for c in controls)
    for mine in arrays:
        np.testing.assert_allclose(mine[0], np.ones(3))


def test_wait_with_require_trigger_is_refused(group):
    (peer,) = group([[np.zeros(1, dtype=np.float32)]])
    with pytest.raises(ValueError):
        peer.step(require_trigger=True)


def test_cancel_before_a_group_forms(group):
    array = np.full(2, 7.0, dtype=np.float32)
    (peer,) = group([[array]])
    control = peer.step(wait=False)
    assert control.cancel()
    assert control.cancelled()
    with pytest.raises(CancelledError):
        control.result(timeout=RESULT_TIMEOUT)
    assert control.done()
    np.testing.assert_array_equal(array, [7.0, 7.0])


def test_a_lone_step_with_a_timeout_returns_none(group):
    (peer,) = group([[np.zeros(2, dtype=np.float32)]])
    assert peer.step(timeout=1.5, allow_retries=False) is None


def test_shutdown_while_a_step_runs(group):
    array = np.ones(4, dtype=np.float32)
    (peer,) = group([[array]])
    control = peer.step(wait=False)
    wait_until(lambda: control.stage == AveragingStage.LOOKING_FOR_GROUP, "matchmaking to start")
    peer.shutdown()
    assert control.result(timeout=RESULT_TIMEOUT) is None
    assert control.done()
    np.testing.assert_array_equal(array, np.ones(4))
    with pytest.raises(averager.AveragerError):
        peer.step(wait=False)


def test_ctrl_c_during_step_cancels_it(group, monkeypatch):
    array = np.ones(4, dtype=np.float32)
    (peer,) = group([[array]])
    started = threading.Event()
    original = averager.StepControl.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        started.set()

    monkeypatch.setattr(averager.StepControl, "__init__", init)

    def interrupt():
        started.wait(RESULT_TIMEOUT)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    with pytest.raises(KeyboardInterrupt):
        peer.step()
    thread.join()
    # The averager still works: a new step starts, and cancels cleanly.
    control = peer.step(wait=False)
    assert control.cancel()
    np.testing.assert_array_equal(array, np.ones(4))


def test_ctrl_c_in_a_script_exits_cleanly(tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(f"""
        import sys, numpy as np, averager
        dht = averager.DHT(host_maddrs={LOCAL!r}, start=True)
        avg = averager.DecentralizedAverager([np.ones(3, dtype=np.float32)], dht, start=True,
                                             prefix="alone", min_matchmaking_time=1.0, request_timeout=0.5)
        try:
            print("stepping", flush=True)
            avg.step()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        avg.shutdown()
        dht.shutdown()
        print("clean", flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "stepping"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=RESULT_TIMEOUT)
    assert proc.returncode == 0, out
    assert out.split() == ["interrupted", "clean"]
