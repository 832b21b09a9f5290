"""Averaging in place: numpy and torch tensors, weights, gather, client and auxiliary peers."""

from concurrent.futures import CancelledError

import numpy as np
import pytest
import torch

import averager
from conftest import RESULT_TIMEOUT, run_threads, step_all


def test_numpy_arrays_are_averaged_in_place(group):
    arrays = [[np.full((3, 4), float(i), dtype=np.float32), np.arange(5, dtype=np.float64) * i] for i in range(2)]
    ids = [[id(a) for a in peer] for peer in arrays]
    peers = group(arrays)
    results = step_all(peers)
    expected_keys = {p.peer_id for p in peers}
    for result in results:
        assert result is not None and set(result) == expected_keys
    for i, (peer, mine) in enumerate(zip(peers, arrays)):
        np.testing.assert_allclose(mine[0], np.full((3, 4), 0.5))
        np.testing.assert_allclose(mine[1], np.arange(5) * 0.5)
        with peer.get_tensors() as tensors:
            assert [id(t) for t in tensors] == ids[i]


def test_torch_tensors_of_every_float_dtype_are_averaged_in_place(group):
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    tensors = [[torch.full((2, 3), float(v), dtype=d) for d in dtypes] for v in (1.0, 3.0)]
    model = torch.nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.fill_(0.0)
    other = torch.nn.Linear(4, 2)
    with torch.no_grad():
        other.weight.fill_(2.0)
    tensors[0].append(model.weight)  # a parameter with requires_grad: written through its storage
    tensors[1].append(other.weight)
    peers = group(tensors)
    assert all(r is not None for r in step_all(peers))
    for mine in tensors:
        for t, d in zip(mine, dtypes):
            assert t.dtype == d
            torch.testing.assert_close(t, torch.full((2, 3), 2.0, dtype=d))
    torch.testing.assert_close(model.weight.detach(), torch.full((2, 4), 1.0))


def test_weights(group):
    arrays = [[np.zeros(4, dtype=np.float32)], [np.full(4, 4.0, dtype=np.float32)]]
    peers = group(arrays)
    step_all(peers, per_peer=[dict(weight=1.0), dict(weight=3.0)])
    for mine in arrays:
        np.testing.assert_allclose(mine[0], np.full(4, 3.0))


def test_averaging_alpha_moves_part_of_the_way(group):
    arrays = [[np.zeros(2, dtype=np.float32)], [np.full(2, 4.0, dtype=np.float32)]]
    peers = group(arrays, averaging_alpha=0.5)
    step_all(peers)
    np.testing.assert_allclose(arrays[0][0], [1.0, 1.0])
    np.testing.assert_allclose(arrays[1][0], [3.0, 3.0])


def test_gather_returns_every_members_value(group):
    arrays = [[np.zeros(2, dtype=np.float32)] for _ in range(2)]
    peers = group(arrays)
    gathers = [dict(batch_size=32, name="a", blob=b"\x00\x01"), [1, 2.5, None]]
    results = step_all(peers, per_peer=[dict(gather=g) for g in gathers])
    for result in results:
        assert result == {peers[0].peer_id: gathers[0], peers[1].peer_id: gathers[1]}


def test_client_and_auxiliary_peers(group):
    arrays = [[np.zeros(3, dtype=np.float32)], [np.full(3, 4.0, dtype=np.float32)], [np.full(3, 100.0, dtype=np.float32)]]
    modes = [dict(), dict(client_mode=True), dict(auxiliary=True)]
    peers = group(arrays, per_peer=modes, min_group_size=3, target_group_size=4)
    assert [p.mode for p in peers] == ["node", "client", "aux"]
    assert peers[1].peer_id.startswith("client://")
    results = step_all(peers)
    keys = {p.peer_id for p in peers}
    for result in results:
        assert result is not None and set(result) == keys  # the auxiliary peer is a member too
    np.testing.assert_allclose(arrays[0][0], np.full(3, 2.0))
    np.testing.assert_allclose(arrays[1][0], np.full(3, 2.0))
    np.testing.assert_allclose(arrays[2][0], np.full(3, 100.0))  # contributes nothing, receives nothing


def test_dht_basics(swarm):
    (a,) = swarm(1)
    (b,) = swarm(1)
    assert a.peer_id != b.peer_id
    assert all(m.endswith("/p2p/" + a.peer_id) for m in a.get_visible_maddrs())
    with averager.DHT(initial_peers=a.get_visible_maddrs(), host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True) as c:
        assert c.peer_id
    assert averager.get_dht_time() == pytest.approx(__import__("time").time(), abs=5)


def test_start_false_then_run_in_background_and_a_scheduled_step(group):
    arrays = [[np.full(4, float(i), dtype=np.float32)] for i in range(2)]
    peers = group(arrays, start=False)
    assert not any(p.is_alive() for p in peers)
    with pytest.raises(RuntimeError, match="not running"):
        peers[0].step(timeout=1)
    for peer in peers:
        peer.run_in_background()
    assert all(p.is_alive() for p in peers)
    when = averager.get_dht_time() + 1.0
    results = step_all(peers, scheduled_time=when)
    assert all(r is not None for r in results)
    for mine in arrays:
        np.testing.assert_allclose(mine[0], np.full(4, 0.5))


def test_a_step_reads_the_tensors_as_they_are_when_it_is_called(group):
    # Values set just before step() are the ones averaged (read in place by the all-reduce).
    arrays = [[np.zeros(1 << 16, dtype=np.float32)] for _ in range(2)]
    peers = group(arrays)
    for i, mine in enumerate(arrays):
        mine[0][:] = 2.0 * i
    controls = [p.step(wait=False) for p in peers]
    assert all(c.result(timeout=120) is not None for c in controls)
    for mine in arrays:
        np.testing.assert_allclose(mine[0], 1.0)


def set_all(peer, value):
    with peer.get_tensors() as tensors:
        tensors[0][:] = value


def test_back_to_back_steps_each_average_the_values_set_for_them(group):
    # Peer 0 queues two steps with different values set between them before peer 1 takes part in
    # either: the second step's values must not reach the first step's all-reduce, and the first
    # step's result must not overwrite the second step's values.
    arrays = [[np.zeros(1 << 16, dtype=np.float32)] for _ in range(2)]
    peers = group(arrays)
    set_all(peers[0], 0.0)
    first = peers[0].step(wait=False)
    set_all(peers[0], 10.0)
    second = peers[0].step(wait=False)
    set_all(peers[1], 2.0)
    partner_first = peers[1].step(wait=False)
    assert first.result(timeout=RESULT_TIMEOUT) is not None
    assert partner_first.result(timeout=RESULT_TIMEOUT) is not None
    # Peer 0's second step cannot end yet: peer 1 has not started its own.
    assert not second.done()
    for mine in arrays:
        np.testing.assert_allclose(mine[0], 1.0)
    set_all(peers[1], 30.0)
    partner_second = peers[1].step(wait=False)
    assert second.result(timeout=RESULT_TIMEOUT) is not None
    assert partner_second.result(timeout=RESULT_TIMEOUT) is not None
    for mine in arrays:
        np.testing.assert_allclose(mine[0], 20.0)


def test_steps_from_two_threads_queue_without_losing_results(group):
    # Two threads of each peer step at once, several times: every step succeeds and every
    # result is a mean the peers agree on (no step reads another's half-written values).
    arrays = [[np.full(1 << 16, 4.0 * i, dtype=np.float32)] for i in range(2)]
    peers = group(arrays)
    rounds = 2

    def worker(peer):
        return [peer.step(timeout=RESULT_TIMEOUT) is not None for _ in range(rounds)]

    outcomes = run_threads([lambda p=p: worker(p) for p in peers for _ in range(2)])
    assert all(all(o) for o in outcomes)
    for mine in arrays:
        assert np.all(mine[0] == mine[0][0])
        np.testing.assert_allclose(mine[0], 2.0)


def test_a_queued_step_can_be_cancelled_and_the_queue_moves_on(group):
    arrays = [[np.full(1 << 10, 2.0 * i, dtype=np.float32)] for i in range(2)]
    peers = group(arrays)
    first = peers[0].step(wait=False)
    queued = peers[0].step(wait=False)
    assert queued.cancel()
    with pytest.raises(CancelledError):
        queued.result(timeout=RESULT_TIMEOUT)
    assert peers[1].step(timeout=RESULT_TIMEOUT) is not None
    assert first.result(timeout=RESULT_TIMEOUT) is not None
    for mine in arrays:
        np.testing.assert_allclose(mine[0], 1.0)
    # The cancelled step's values never reach the averager: the next step averages fresh ones.
    set_all(peers[0], 4.0)
    set_all(peers[1], 0.0)
    assert all(r is not None for r in step_all(peers))
    for mine in arrays:
        np.testing.assert_allclose(mine[0], 2.0)
