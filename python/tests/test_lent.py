"""A step at the head of the queue reads the user's memory in place and writes its result there
(no copy in or out); a write through ``get_tensors()`` before its all-reduce makes it copy its
inputs first, and ``get_tensors()`` during that all-reduce waits for the result."""

import threading

import numpy as np
import torch

from averager import AveragingStage
from conftest import RESULT_TIMEOUT
from test_control import wait_until
from test_state import load_until_found


def lent(control):
    """How many of the step's all-reduces read the user's buffers in place."""
    return dict(control._native.timings())["lent"]


def test_a_lone_step_averages_the_users_memory_in_place(group):
    floats = 1 << 16
    arrays = [[np.full(floats, 2.0 * i, dtype=np.float32), torch.full((64, 32), 10.0 * i)] for i in range(2)]
    pointers = [a[0].ctypes.data for a in arrays]
    peers = group(arrays)
    controls = [p.step(wait=False) for p in peers]
    assert all(c.result(timeout=RESULT_TIMEOUT) is not None for c in controls)
    assert [lent(c) for c in controls] == [1, 1]
    for mine, pointer in zip(arrays, pointers):
        assert mine[0].ctypes.data == pointer
        np.testing.assert_allclose(mine[0], 1.0)
        torch.testing.assert_close(mine[1], torch.full((64, 32), 5.0))


def test_a_write_before_the_all_reduce_makes_the_step_copy_what_it_was_called_with(group):
    arrays = [[np.full(4096, 2.0 * i, dtype=np.float32)] for i in range(2)]
    peers = group(arrays)
    first = peers[0].step(wait=False)
    # Peer 1 has not stepped: peer 0's all-reduce cannot have begun.
    with peers[0].get_tensors() as tensors:
        tensors[0][:] = 100.0
    assert peers[1].step(timeout=RESULT_TIMEOUT) is not None
    assert first.result(timeout=RESULT_TIMEOUT) is not None
    assert lent(first) == 0
    for mine in arrays:
        np.testing.assert_allclose(mine[0], 1.0)


def test_get_tensors_during_an_in_place_all_reduce_waits_for_its_result(group):
    arrays = [[np.full(4096, 2.0 * i, dtype=np.float32)] for i in range(2)]
    peers = group(arrays)
    controls = [p.step(wait=False, require_trigger=True) for p in peers]
    for c in controls:
        wait_until(lambda c=c: c.stage == AveragingStage.AWAITING_TRIGGER, "the group to form")
    # Peer 0's all-reduce begins (and holds its memory); it cannot end before peer 1's does.
    controls[0].allow_allreduce()
    wait_until(lambda: controls[0].stage == AveragingStage.RUNNING_ALLREDUCE, "peer 0's all-reduce")
    seen = []

    def read_then_write():
        with peers[0].get_tensors() as tensors:
            seen.append(tensors[0].copy())
            tensors[0][:] = 50.0

    reader = threading.Thread(target=read_then_write)
    reader.start()
    controls[1].allow_allreduce()
    assert all(c.result(timeout=RESULT_TIMEOUT) is not None for c in controls)
    reader.join(timeout=RESULT_TIMEOUT)
    assert not reader.is_alive()
    assert lent(controls[0]) == 1
    # The reader got the lock only once the result was in, and what it wrote then stays.
    np.testing.assert_allclose(seen[0], 1.0)
    np.testing.assert_allclose(arrays[0][0], 50.0)
    np.testing.assert_allclose(arrays[1][0], 1.0)



def test_a_state_download_during_an_in_place_all_reduce_does_not_wait_for_it(group):
    arrays = [[np.full(4096, 2.0 * i, dtype=np.float32)] for i in range(2)] + [[np.zeros(4096, dtype=np.float32)]]
    peers = group(
        arrays,
        target_group_size=2,
        per_peer=[dict(), dict(allow_state_sharing=False), dict(allow_state_sharing=False)],
    )
    controls = [p.step(wait=False, require_trigger=True) for p in peers[:2]]
    for c in controls:
        wait_until(lambda c=c: c.stage == AveragingStage.AWAITING_TRIGGER, "the group to form")
    controls[0].allow_allreduce()
    wait_until(lambda: controls[0].stage == AveragingStage.RUNNING_ALLREDUCE, "peer 0's all-reduce")
    # Peer 0's all-reduce holds its tensors until peer 1 is triggered; its state is served now,
    # with the values the all-reduce began with.
    metadata, tensors = load_until_found(peers[2])
    assert not controls[0].done()
    np.testing.assert_array_equal(tensors[0], 0.0)
    controls[1].allow_allreduce()
    assert all(c.result(timeout=RESULT_TIMEOUT) is not None for c in controls)
    assert lent(controls[0]) == 1
    for mine in arrays[:2]:
        np.testing.assert_allclose(mine[0], 1.0)
