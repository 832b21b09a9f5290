"""One hivemind 1.1.12 peer of bench/wan.sh, started inside its own network namespace: the
counterpart of `averager worker`, speaking the same line protocol to bench/wan.py.

It starts a hivemind.DHT on --host (bootstrapping from --bootstrap, if any) and a
DecentralizedAverager over one float32 tensor of --floats elements, then prints
`{"event": "ready", "dht": [maddrs]}`. Each `round N` line on stdin runs one step and prints
`{"event": "round", "round": N, "allreduce_s": ..., "matchmaking_s": ..., "error": ...}`, where
allreduce_s is the time of the all-reduce part of the step (hivemind_bench.py's TimedAverager)
and matchmaking_s the rest of the step. `quit` (or end of input) stops it.

    python hivemind_wan_peer.py --index 0 --peers 4 --floats 16777216 --host 10.77.0.1 --prefix p
"""

import argparse
import sys
import time

from common import driver_rounds, emit


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--peers", type=int, required=True)
    parser.add_argument("--floats", type=int, required=True)
    parser.add_argument("--host", required=True, help="the namespace's address to listen on")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--bandwidth", type=float, default=None)
    parser.add_argument("--compression", choices=["none", "float16"], default="none")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--matchmaking-time", type=float, default=3.0)
    args = parser.parse_args()

    import torch
    import hivemind
    from hivemind.compression import Float16Compression, NoCompression

    from hivemind_bench import make_averager_class

    dht = hivemind.DHT(start=True, host_maddrs=[f"/ip4/{args.host}/tcp/0"], initial_peers=args.bootstrap)
    compression = Float16Compression() if args.compression == "float16" else NoCompression()
    tensor = torch.zeros(args.floats, dtype=torch.float32)
    averager = make_averager_class()(
        [tensor],
        dht,
        prefix=args.prefix,
        target_group_size=args.peers,
        min_group_size=args.peers,
        min_matchmaking_time=args.matchmaking_time,
        request_timeout=1.0,
        allreduce_timeout=args.timeout,
        compression=compression,
        bandwidth=args.bandwidth,
    )
    try:
        averager.run_in_background(await_ready=True, timeout=args.timeout)
        emit({"event": "ready", "dht": [str(m) for m in dht.get_visible_maddrs()]})
        expected = (args.peers + 1) / 2  # the mean over peers of (index + 1)
        for round_no in driver_rounds(sys.stdin):
            report = {"event": "round", "round": round_no, "error": None}
            with averager.get_tensors() as tensors:
                tensors[0].fill_(args.index + 1)
            averager.last_allreduce_s.value = -1.0
            start = time.perf_counter()
            gathered = averager.step(timeout=args.timeout)
            step_s = time.perf_counter() - start
            allreduce_s = averager.last_allreduce_s.value
            if gathered is None or allreduce_s < 0:
                report["error"] = "the step failed"
            elif len(gathered) != args.peers:
                report["error"] = f"a group of {len(gathered)}, not {args.peers}"
            else:
                with averager.get_tensors() as tensors:
                    got = (tensors[0][0].item(), tensors[0][-1].item())
                if any(abs(value - expected) > 1e-3 for value in got):
                    report["error"] = f"wrong mean {got}, expected {expected}"
                report["allreduce_s"] = allreduce_s
                report["matchmaking_s"] = step_s - allreduce_s
            emit(report)
    finally:
        averager.shutdown()
        dht.shutdown()


if __name__ == "__main__":
    sys.exit(main())
