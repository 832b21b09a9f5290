"""hivemind 1.1.12 DecentralizedAverager all-reduce on loopback: one grid cell.

Starts --peers processes. Each runs its own hivemind.DHT (rank 0 bootstraps, the others get
rank 0's multiaddrs as initial_peers) and one DecentralizedAverager with target_group_size =
peers, averaging one float32 tensor of --size elements with NoCompression or
Float16Compression.

What is timed: each peer's averager is a small subclass whose _aggregate_with_group (the part of
averager.step() that runs after matchmaking has assembled the group: load balancing, the
butterfly all-reduce over libp2p, and the in-place update of the local tensor) records its
wall-clock duration, measured inside the averager's own background process. Matchmaking is not
in that figure; the rest of the step (step wall time minus that) is reported separately as
matchmaking_s_median. All peers enter each step together after a multiprocessing barrier.

    python hivemind_bench.py --peers 4 --size 64M --compression none --repeats 5
"""

import argparse
import ctypes
import multiprocessing as mp
import statistics
import sys
import time
import traceback

from common import emit, log, parse_size, run_peers, summarize

PREFIX = "bench"


def make_averager_class():
    """The timed subclass; built lazily so the parent process does not import hivemind."""
    import hivemind

    class TimedAverager(hivemind.DecentralizedAverager):
        """Records how long the all-reduce part of each successful step took, in seconds."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, start=False, **kwargs)
            self.last_allreduce_s = mp.Value(ctypes.c_double, -1.0)

        async def _aggregate_with_group(self, group_info, min_vector_size, **kwargs):
            start = time.perf_counter()
            result = await super()._aggregate_with_group(group_info, min_vector_size, **kwargs)
            self.last_allreduce_s.value = time.perf_counter() - start
            return result

    return TimedAverager


def peer(rank, args, maddr_queue, barrier, result_queue):
    """One hivemind peer: DHT, averager, rounds; reports (allreduce_s, step_s) per timed round."""
    dht = averager = None
    try:
        import torch
        import hivemind
        from hivemind.compression import Float16Compression, NoCompression

        host = ["/ip4/127.0.0.1/tcp/0"]
        if rank == 0:
            dht = hivemind.DHT(start=True, host_maddrs=host)
            maddrs = [str(m) for m in dht.get_visible_maddrs()]
            for _ in range(args.peers - 1):
                maddr_queue.put(maddrs)
        else:
            maddrs = maddr_queue.get(timeout=args.timeout)
            dht = hivemind.DHT(start=True, host_maddrs=host, initial_peers=maddrs)

        compression = Float16Compression() if args.compression == "float16" else NoCompression()
        tensor = torch.zeros(args.floats, dtype=torch.float32)
        averager = make_averager_class()(
            [tensor],
            dht,
            prefix=PREFIX,
            target_group_size=args.peers,
            min_group_size=args.peers,
            min_matchmaking_time=args.matchmaking_time,
            request_timeout=1.0,
            allreduce_timeout=args.timeout,
            compression=compression,
        )
        averager.run_in_background(await_ready=True, timeout=args.timeout)
        expected = (args.peers + 1) / 2  # mean over ranks of (rank + 1)

        rounds = []
        for round_index in range(args.warmup + args.repeats):
            with averager.get_tensors() as tensors:
                tensors[0].fill_(rank + 1)
            averager.last_allreduce_s.value = -1.0
            barrier.wait(timeout=args.timeout)
            start = time.perf_counter()
            gathered = averager.step(timeout=args.timeout)
            step_s = time.perf_counter() - start
            allreduce_s = averager.last_allreduce_s.value
            if gathered is None or allreduce_s < 0:
                raise RuntimeError(f"round {round_index}: averaging step failed")
            if len(gathered) != args.peers:
                raise RuntimeError(f"round {round_index}: group of {len(gathered)}, wanted {args.peers}")
            with averager.get_tensors() as tensors:
                got = (tensors[0][0].item(), tensors[0][-1].item())
            if any(abs(value - expected) > 1e-3 for value in got):
                raise AssertionError(f"round {round_index}: wrong mean {got}, expected {expected}")
            if round_index >= args.warmup:
                rounds.append((allreduce_s, step_s))
        barrier.wait(timeout=args.timeout)  # nobody leaves while others may still need it
        result_queue.put(("ok", rank, rounds))
    except BaseException:
        result_queue.put(("error", rank, traceback.format_exc(limit=4)))
    finally:
        for part in (averager, dht):
            if part is not None:
                try:
                    part.shutdown()
                except Exception:
                    pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, required=True)
    parser.add_argument("--size", required=True, help="floats per peer, e.g. 16M (M = 2**20)")
    parser.add_argument("--compression", choices=["none", "float16"], default="none")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--matchmaking-time", type=float, default=3.0, help="min_matchmaking_time, seconds")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole cell")
    args = parser.parse_args()
    args.floats = parse_size(args.size)

    # fork, as hivemind expects on Linux: its DHT and averager are forked Process objects too.
    # The parent has not imported torch or hivemind, so forking it is cheap and safe.
    ctx = mp.get_context("fork")
    maddr_queue, result_queue = ctx.Queue(), ctx.Queue()
    barrier = ctx.Barrier(args.peers)
    processes = [
        ctx.Process(target=peer, args=(rank, args, maddr_queue, barrier, result_queue)) for rank in range(args.peers)
    ]
    log(f"hivemind: {args.peers} peers x {args.size} floats, {args.compression}, {args.repeats} rounds")
    results = run_peers("hivemind", processes, result_queue, args.peers, args.timeout, grace=15.0)
    if results is None:
        return 1

    per_round_allreduce = [[results[r][i][0] for r in range(args.peers)] for i in range(args.repeats)]
    # Matchmaking and step overhead: the step's wall time minus its all-reduce, per peer and round.
    overhead = [results[r][i][1] - results[r][i][0] for r in range(args.peers) for i in range(args.repeats)]
    import hivemind

    emit(
        summarize(
            "hivemind",
            args.compression,
            args.peers,
            args.floats,
            per_round_allreduce,
            matchmaking_ms_median=1000 * statistics.median(overhead),
            hivemind_version=hivemind.__version__,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
