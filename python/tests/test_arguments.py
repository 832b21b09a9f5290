"""Bad arguments fail at construction (or at the call) with ValueError / TypeError."""

import numpy as np
import pytest
import torch

import averager as av

OK = dict(start=True, prefix="args", min_matchmaking_time=1.0, request_timeout=0.5)


@pytest.fixture
def dht():
    node = av.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    yield node
    node.shutdown()


def tensors():
    return [np.zeros(4, dtype=np.float32)]


@pytest.mark.parametrize(
    "overrides,error",
    [
        (dict(prefix="a.b"), ValueError),
        (dict(prefix=3), TypeError),
        (dict(initial_group_bits="012"), ValueError),
        (dict(bandwidth=-1.0), ValueError),
        (dict(client_mode=True, auxiliary=True), ValueError),
        (dict(target_group_size=0), ValueError),
        (dict(min_group_size=0), ValueError),
        (dict(part_size_bytes=0), ValueError),
        (dict(request_timeout=-1), ValueError),
        (dict(min_matchmaking_time="soon"), TypeError),
        (dict(sender_timeout=2.0, reducer_timeout=2.0), ValueError),
        (dict(reducer_timeout=1.0), ValueError),
        (dict(compression=42), TypeError),
        (dict(compression="no-such-codec"), ValueError),
        (dict(compression=av.Compression("no-such-codec")), ValueError),
        (dict(tensor_infos=[av.CompressionInfo(), av.CompressionInfo()]), ValueError),
        (dict(client_mode=True, allow_state_sharing=True), ValueError),
        (dict(compression=av.PerTensorCompression({"x": av.Float16Compression()})), ValueError),
        (dict(compression=av.PerTensorCompression([])), ValueError),
    ],
)
def test_bad_constructor_arguments(dht, overrides, error):
    with pytest.raises(error):
        av.DecentralizedAverager(tensors(), dht, **{**OK, **overrides})


@pytest.mark.parametrize(
    "bad,error",
    [
        ([np.zeros(4, dtype=np.int64)], TypeError),
        ([np.zeros((4, 4), dtype=np.float32)[:, 0]], ValueError),
        ([torch.zeros(4, dtype=torch.int32)], TypeError),
        ([torch.zeros(4, 4).t()], ValueError),
        ([[0.0, 1.0]], TypeError),
        ("not tensors", TypeError),
    ],
)
def test_bad_tensors(dht, bad, error):
    with pytest.raises(error):
        av.DecentralizedAverager(bad, dht, **OK)


def test_read_only_array(dht):
    array = np.zeros(3, dtype=np.float32)
    array.flags.writeable = False
    with pytest.raises(ValueError):
        av.DecentralizedAverager([array], dht, **OK)


def test_bad_dht(dht):
    with pytest.raises(TypeError):
        av.DecentralizedAverager(tensors(), "dht", **OK)
    with pytest.raises(ValueError):
        av.DHT(initial_peers=["not a multiaddr"], host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    with pytest.raises(ValueError):
        av.DHT(host_maddrs=["nonsense"])
    with pytest.raises(TypeError):
        av.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], no_such_option=1)


def test_bad_step_arguments(dht):
    peer = av.DecentralizedAverager(tensors(), dht, **OK)
    try:
        with pytest.raises(ValueError):
            peer.step(weight=-1.0)
        with pytest.raises(ValueError):
            peer.step(weight=float("nan"))
        with pytest.raises(TypeError):
            peer.step(gather=object())
        with pytest.raises(ValueError):
            peer.step(timeout=-3)
        with pytest.raises(ValueError):
            peer.step(timeout=2.0, scheduled_time=av.get_dht_time() + 100, wait=False)
    finally:
        peer.shutdown()


def test_tensors_that_change_shape_fail_the_step_not_the_interpreter(dht):
    t = torch.zeros(4)
    peer = av.DecentralizedAverager([t], dht, **OK)
    try:
        with peer.get_tensors():
            t.resize_(8)
        with pytest.raises(ValueError):
            peer.step(wait=False)
    finally:
        peer.shutdown()
