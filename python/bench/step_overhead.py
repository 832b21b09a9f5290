"""The Python side of the step-overhead measurement: the same two peers as step_overhead.rs
(one DHT node and so one two-worker runtime, 64 MB of float32 each, gRPC on 127.0.0.1), stepped
from two Python threads; prints each timed round as one JSON line."""

import argparse
import json
import threading
import time

import numpy as np

import averager


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--floats", type=int, default=16 << 20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--torch", action="store_true", help="torch tensors instead of numpy arrays")
    args = parser.parse_args()
    dht = averager.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    peers = []
    for i in range(2):
        if args.torch:
            import torch

            tensor = torch.full((args.floats,), float(i))
        else:
            tensor = np.full(args.floats, float(i), dtype=np.float32)
        peers.append(averager.DecentralizedAverager(
            [tensor], dht, start=True, prefix="overhead", target_group_size=2,
            min_matchmaking_time=1.0, request_timeout=0.5,
        ))
    for round_ in range(args.rounds + 1):  # round 0 warms up and is not reported
        times = [None, None]

        def run(i: int) -> None:
            start = time.perf_counter()
            ok = peers[i].step(timeout=120) is not None
            times[i] = (time.perf_counter() - start, ok)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if round_ > 0:
            api = "python-torch" if args.torch else "python-numpy"
            print(json.dumps({"api": api, "round": round_, "step_secs": [t[0] for t in times],
                              "ok": all(t[1] for t in times)}), flush=True)
    for p in peers:
        p.shutdown()
    dht.shutdown()


if __name__ == "__main__":
    main()
