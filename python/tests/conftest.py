"""Shared fixtures: DHT nodes on 127.0.0.1 and groups of averagers with fast matchmaking."""

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

import averager

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
# Generous: these bound waits on a loaded 2-core machine, they never pace a test.
RESULT_TIMEOUT = 120
# allreduce_timeout: a broken round fails the step instead of hanging the suite.
FAST = dict(min_matchmaking_time=1.0, request_timeout=0.5, allreduce_timeout=60.0)


@pytest.fixture
def swarm():
    """Starts DHT nodes that join one swarm: ``swarm(n)`` returns ``n`` more nodes."""
    nodes = []

    def make(n=1, **kwargs):
        new = []
        for _ in range(n):
            peers = nodes[0].get_visible_maddrs() if nodes else ()
            node = averager.DHT(initial_peers=peers, host_maddrs=LOCAL, start=True, **kwargs)
            nodes.append(node)
            new.append(node)
        return new

    yield make
    for node in reversed(nodes):
        node.shutdown()


@pytest.fixture
def group(swarm):
    """``group(tensor_lists, **kwargs)``: one averager per tensor list, each on its own DHT node,
    all under a fresh prefix; ``kwargs`` may hold per-peer lists under ``per_peer``."""
    made = []

    def make(tensor_lists, cls=averager.DecentralizedAverager, per_peer=None, **kwargs):
        prefix = "test" + uuid.uuid4().hex[:12]
        options = dict(FAST, target_group_size=len(tensor_lists), start=True, prefix=prefix)
        options.update(kwargs)
        nodes = swarm(len(tensor_lists))
        peers = []
        for i, (tensors, node) in enumerate(zip(tensor_lists, nodes)):
            extra = dict(per_peer[i]) if per_peer else {}
            peer_cls = extra.pop("cls", cls)
            peers.append(peer_cls(tensors, node, **{**options, **extra}))
        made.extend(peers)
        return peers

    yield make
    for peer in made:
        peer.shutdown()


def step_all(peers, per_peer=None, **kwargs):
    """Runs one step on every peer at once; returns their results in order."""
    controls = []
    for i, peer in enumerate(peers):
        options = dict(kwargs, **(per_peer[i] if per_peer else {}))
        controls.append(peer.step(wait=False, **options))
    return [c.result(timeout=RESULT_TIMEOUT) for c in controls]


def run_threads(fns):
    with ThreadPoolExecutor(len(fns)) as pool:
        return [f.result(timeout=RESULT_TIMEOUT) for f in [pool.submit(fn) for fn in fns]]
