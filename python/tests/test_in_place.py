"""The core writes a step's result straight into the user's own memory (``StepOptions::apply_to``
in Rust): views of larger arrays, torch parameters, results in many parts, the ``get_tensors()``
lock, and a clear error for memory it cannot write in place."""

import numpy as np
import pytest
import torch

import averager
from conftest import RESULT_TIMEOUT, step_all

# Small parts: each tensor's result arrives in many pieces, written one by one.
SMALL_PARTS = dict(part_size_bytes=1024)


def test_results_land_in_views_of_larger_arrays_and_nowhere_else(group):
    floats = 4096
    bases = [np.full(floats + 20, -7.0, dtype=np.float32) for _ in range(2)]
    views = [b[10 : 10 + floats] for b in bases]
    for i, v in enumerate(views):
        v[:] = np.arange(floats, dtype=np.float32) * (2 * i)
    peers = group([[v] for v in views], **SMALL_PARTS)
    assert all(r is not None for r in step_all(peers))
    for base, view, peer in zip(bases, views, peers):
        np.testing.assert_allclose(base[10 : 10 + floats], np.arange(floats))
        # The memory around the view is not the averager's: untouched.
        np.testing.assert_array_equal(base[:10], -7.0)
        np.testing.assert_array_equal(base[10 + floats :], -7.0)
        with peer.get_tensors() as tensors:
            assert tensors[0] is view


def test_torch_parameters_and_row_views_are_updated_in_place(group):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(64, 32) for _ in range(2)]
    matrices = [torch.full((3, 256), float(10 * i)) for i in range(2)]
    lists = [[layer.weight, layer.bias, m[1]] for layer, m in zip(layers, matrices)]
    pointers = [[t.data_ptr() for t in ts] for ts in lists]
    expected = [(a.detach() + b.detach()) / 2 for a, b in zip(lists[0][:2], lists[1][:2])]
    peers = group(lists, **SMALL_PARTS)
    assert all(r is not None for r in step_all(peers))
    for ts, ptrs, m in zip(lists, pointers, matrices):
        torch.testing.assert_close(ts[0].detach(), expected[0])
        torch.testing.assert_close(ts[1].detach(), expected[1])
        assert [t.data_ptr() for t in ts] == ptrs
        torch.testing.assert_close(m[1], torch.full((256,), 5.0))
        # Rows 0 and 2 of the matrix are not averaged.
        assert m[0].eq(m[0][0]).all() and m[2].eq(m[2][0]).all() and m[0][0] != 5.0


def test_the_result_waits_for_get_tensors_and_replaces_what_was_written_meanwhile(group):
    # The binding's semantics: after a step, the tensors hold the average of the step's inputs
    # (what step() read), including over values written while it ran; the result is never
    # written while get_tensors() holds the lock.
    arrays = [[np.full(2048, 2.0 * i, dtype=np.float32)] for i in range(2)]
    peers = group(arrays, **SMALL_PARTS)
    first = peers[0].step(wait=False)
    with peers[0].get_tensors() as tensors:
        tensors[0][:] = 100.0
        # The partner's step ends (the group averaged), but peer 0's result waits for this lock.
        assert peers[1].step(timeout=RESULT_TIMEOUT) is not None
        assert not first.done()
        np.testing.assert_array_equal(tensors[0], 100.0)
    assert first.result(timeout=RESULT_TIMEOUT) is not None
    for mine in arrays:
        np.testing.assert_allclose(mine[0], 1.0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: np.zeros(64, dtype=np.float32)[::2], "not C-contiguous"),
        (lambda: np.zeros((8, 8), dtype=np.float32).T, "not C-contiguous"),
        (lambda: torch.zeros(8, 8).t(), "not contiguous"),
        (lambda: torch.zeros(64)[::2], "not contiguous"),
        (lambda: np.frombuffer(bytearray(257), dtype=np.float32, count=64, offset=1), "not aligned"),
        (lambda: torch.frombuffer(bytearray(257), dtype=torch.float32, count=64, offset=1), "not aligned"),
    ],
)
def test_strided_tensors_are_refused_with_a_clear_error(swarm, make, message):
    # Nothing can be written in place into strided memory with one pass over a buffer, nor read
    # as its dtype from misaligned memory: refused at construction, before any step, with the
    # fix in the message.
    (node,) = swarm(1)
    with pytest.raises(ValueError, match=message):
        averager.DecentralizedAverager([make()], node, prefix="strided", start=True)
