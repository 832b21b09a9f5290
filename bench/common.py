"""Shared helpers for the bench scripts: size parsing, the result record, child-process cleanup.

Every system's benchmark prints one JSON object per grid cell on stdout. The fields that the
table reads are the same for all systems (see README.md, "Result records"):

    system, compression, peers, floats, algbw_mb_s, allreduce_s_median

algbw (per peer) = floats * 4 bytes / median seconds of one all-reduce, in MB/s (MB = 10**6 B).
The float32 byte count is used even when the payload is float16, so columns stay comparable.
"""

import json
import os
import signal
import socket
import statistics
import sys
import time

F32_BYTES = 4


def parse_size(text):
    """'16M' -> 16 * 2**20 floats; '1K' -> 1024; plain digits are taken as is."""
    text = text.strip().upper()
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def size_label(floats):
    """Inverse of parse_size for the table: 16777216 -> '16M'."""
    for suffix, unit in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if floats % unit == 0:
            return f"{floats // unit}{suffix}"
    return str(floats)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def summarize(system, compression, peers, floats, per_round_peer_seconds, **extra):
    """Build the result record from a list of rounds, each a list of per-peer seconds.

    A round's all-reduce time is its slowest peer's time (the round is over when the last peer
    has the result); the reported figure is the median of that over the timed rounds.
    """
    rounds = [max(peer_seconds) for peer_seconds in per_round_peer_seconds]
    median = statistics.median(rounds)
    record = {
        "system": system,
        "compression": compression,
        "peers": peers,
        "floats": floats,
        "algbw_mb_s": floats * F32_BYTES / 1e6 / median,
        "allreduce_s_median": median,
        "allreduce_s_rounds": rounds,
        "repeats": len(rounds),
    }
    record.update(extra)
    return record


def emit(record):
    """Print one result record as a JSON line and flush, so a parent reading stdout sees it."""
    print(json.dumps(record), flush=True)


def driver_rounds(lines):
    """The rounds bench/wan.py asks a worker for: the number of each `round N` line of `lines`
    (the worker's stdin), until a `quit` line or the end of input."""
    for line in lines:
        words = line.split()
        if not words or words[0] == "quit":
            return
        if words[0] == "round":
            yield int(words[1])


def log(message):
    """Progress messages go to stderr, never to the JSON stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stop_processes(processes, grace=5.0):
    """Give child processes `grace` seconds to exit by themselves (they shut down their own
    helpers), then terminate them, wait `grace` seconds more, then kill whatever is left."""

    def join_all():
        deadline = time.monotonic() + grace
        for proc in processes:
            proc.join(max(0.0, deadline - time.monotonic()))

    join_all()
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    join_all()
    for proc in processes:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(1.0)


def collect(result_queue, processes, count, timeout):
    """Wait for `count` results from the children, failing early if one of them dies.

    Each child puts ("ok", rank, payload) or ("error", rank, message) on the queue.
    Returns {rank: payload}; raises RuntimeError on an error, a dead child or the timeout.
    """
    import queue as queue_module

    results = {}
    deadline = time.monotonic() + timeout
    while len(results) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {count - len(results)} peer(s)")
        try:
            status, rank, payload = result_queue.get(timeout=min(1.0, left))
        except queue_module.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"peer process exited with code {dead[0].exitcode}")
            continue
        if status != "ok":
            raise RuntimeError(f"peer {rank}: {payload}")
        results[rank] = payload
    return results


def run_peers(system, processes, result_queue, count, timeout, grace=5.0):
    """Start the peer processes, wait for their results (see `collect`), and always stop them.

    Returns {rank: payload}, or None after logging why the run failed.
    """
    try:
        for proc in processes:
            proc.start()
        return collect(result_queue, processes, count, timeout)
    except RuntimeError as error:
        log(f"{system}: failed: {error}")
        return None
    finally:
        stop_processes(processes, grace=grace)
