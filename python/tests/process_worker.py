"""One peer of the multi-process test: joins the swarm, averages once, prints the outcome as JSON."""

import json
import sys

import numpy as np

import averager


def main() -> None:
    bootstrap, prefix, rank, peers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with averager.DHT(initial_peers=[bootstrap], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True) as dht:
        tensors = [np.full(1000, float(rank), dtype=np.float32), np.arange(3, dtype=np.float64) * rank]
        avg = averager.DecentralizedAverager(
            tensors, dht, start=True, prefix=prefix, target_group_size=peers, min_group_size=peers,
            min_matchmaking_time=2.0, request_timeout=1.0,
        )
        result = avg.step(gather=dict(rank=rank), timeout=120)
        out = {
            "peer_id": avg.peer_id,
            "gathered": None if result is None else {k: v for k, v in result.items()},
            "t0": tensors[0][:3].tolist(),
            "t0_tail": tensors[0][-3:].tolist(),
            "t1": tensors[1].tolist(),
        }
        avg.shutdown()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
