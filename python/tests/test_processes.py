"""Several OS processes average over the real networked backends (Kademlia + gRPC, 127.0.0.1)."""

import json
import os
import subprocess
import sys
import uuid

import averager
from conftest import LOCAL, RESULT_TIMEOUT

PEERS = 3


def test_three_processes_average():
    # Each process exits right after its step: this also checks that a reducer delivers its last
    # replies before its step returns (a peer gone too early left a groupmate un-averaged).
    worker = os.path.join(os.path.dirname(__file__), "process_worker.py")
    prefix = "procs" + uuid.uuid4().hex[:8]
    with averager.DHT(host_maddrs=LOCAL, start=True) as bootstrap:
        address = bootstrap.get_visible_maddrs()[0]
        procs = [
            subprocess.Popen(
                [sys.executable, worker, address, prefix, str(rank), str(PEERS)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for rank in range(PEERS)
        ]
        outs = []
        try:
            for proc in procs:
                out, _ = proc.communicate(timeout=RESULT_TIMEOUT * 2)
                assert proc.returncode == 0, out
                outs.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
    mean = sum(range(PEERS)) / PEERS
    ids = {o["peer_id"] for o in outs}
    assert len(ids) == PEERS
    for out in outs:
        assert out["gathered"] == {o["peer_id"]: {"rank": rank} for rank, o in enumerate(outs)}, outs
        assert out["t0"] == [mean] * 3, outs
        assert out["t0_tail"] == [mean] * 3, outs
        assert out["t1"] == [0.0, mean, 2 * mean], outs
