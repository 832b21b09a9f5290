"""torch.distributed (gloo) all-reduce on loopback: the baseline for one grid cell.

Starts --peers processes (spawned, not forked), each joins one gloo process group on
127.0.0.1 and runs --warmup untimed all-reduces, then --repeats timed ones. A timed round is:
refill the tensor (untimed), dist.barrier(), then time dist.all_reduce(tensor) alone with
time.perf_counter(). Prints one JSON record (see common.summarize) on stdout.

Compression is emulated: for 'float16' the tensor all-reduced is float16 with the same element
count; algbw is still reported against the float32 byte count (floats * 4).

    python gloo_bench.py --peers 4 --size 64M --compression none --repeats 5
"""

import argparse
import datetime
import multiprocessing as mp
import sys
import time
import traceback

from common import emit, free_port, log, parse_size, run_peers, summarize

DTYPES = {"none": "float32", "float16": "float16"}


def peer(rank, args, port, result_queue):
    """One gloo rank: join the group, run the rounds, report per-round seconds."""
    try:
        import torch
        import torch.distributed as dist

        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=args.peers,
            timeout=datetime.timedelta(seconds=args.timeout),
        )
        dtype = getattr(torch, DTYPES[args.compression])
        tensor = torch.empty(args.floats, dtype=dtype)
        expected = args.peers * (args.peers + 1) / 2  # sum over ranks of (rank + 1)
        seconds = []
        for round_index in range(args.warmup + args.repeats):
            tensor.fill_(rank + 1)
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            elapsed = time.perf_counter() - start
            if round_index >= args.warmup:
                seconds.append(elapsed)
            got = (tensor[0].item(), tensor[-1].item())
            if got != (expected, expected):
                raise AssertionError(f"wrong sum {got}, expected {expected}")
        dist.barrier()
        dist.destroy_process_group()
        result_queue.put(("ok", rank, seconds))
    except BaseException:
        result_queue.put(("error", rank, traceback.format_exc(limit=3)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, required=True)
    parser.add_argument("--size", required=True, help="floats per peer, e.g. 16M (M = 2**20)")
    parser.add_argument("--compression", choices=sorted(DTYPES), default="none")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole cell")
    args = parser.parse_args()
    args.floats = parse_size(args.size)

    ctx = mp.get_context("spawn")
    result_queue = ctx.Queue()
    port = free_port()
    processes = [ctx.Process(target=peer, args=(rank, args, port, result_queue)) for rank in range(args.peers)]
    log(f"gloo: {args.peers} peers x {args.size} floats, {args.compression}, {args.repeats} rounds")
    results = run_peers("gloo", processes, result_queue, args.peers, args.timeout)
    if results is None:
        return 1
    per_round = [[results[rank][i] for rank in range(args.peers)] for i in range(args.repeats)]
    import torch

    emit(
        summarize(
            "gloo",
            args.compression,
            args.peers,
            args.floats,
            per_round,
            payload_dtype=DTYPES[args.compression],
            torch_version=torch.__version__,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
