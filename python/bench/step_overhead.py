"""Step overhead of the Python API against the Rust API, on the same peers in the same process.

Two averagers share one DHT node (and so one two-worker tokio runtime) and average ``--floats``
float32 each (default 16 M = 64 MB) over gRPC on 127.0.0.1. Rounds alternate between the Rust
API (``Averager::step`` on the tensors the averager holds, through the native module's
``bench_core_step``: no copy to or from Python) and the Python API (``DecentralizedAverager.step``:
the same core step on the user's arrays, read and written in place, ``python/src/lender.rs``),
in the order R P P R R P ... so
that drift in the machine's load falls on both alike. Each step is timed from the call to its
return, per peer; Python steps also report their phases (``StepControl`` timings from the Rust
side). Prints one JSON line per round, then a summary (median and interquartile range)."""

import argparse
import json
import os
import statistics
import threading
import time

import numpy as np

import averager


def quartiles(values):
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def run_round(peers, kind, timeout):
    """Both peers step at once from their own threads; per peer: (seconds, ok, phases)."""
    out = [None] * len(peers)

    def run(i):
        peer = peers[i]
        if kind == "rust":
            ok, secs, matchmaking, allreduce = peer._engine.bench_core_step(timeout)
            out[i] = (secs, ok, dict(matchmaking=matchmaking, allreduce=allreduce))
            return
        start = time.perf_counter()
        control = peer.step(wait=False, timeout=timeout)
        ok = control.result(timeout=timeout) is not None
        secs = time.perf_counter() - start
        phases = dict(control._native.timings())
        phases["returned"] = secs
        out[i] = (secs, ok, phases)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(peers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def summary(rows, kind):
    secs = [s for r in rows if r["api"] == kind for s in r["step_secs"]]
    return quartiles(secs) if len(secs) >= 2 else (float("nan"),) * 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--floats", type=int, default=16 << 20)
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds of each API")
    parser.add_argument("--torch", action="store_true", help="torch tensors instead of numpy arrays")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    python_api = "python-torch" if args.torch else "python-numpy"
    print(json.dumps({"uptime_start": os.getloadavg()}), flush=True)
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
    # Warm-up (connections, first-touch of every buffer), not reported.
    for kind in ("rust", "python"):
        run_round(peers, kind, args.timeout)
    rows = []
    order = ["rust", "python", "python", "rust"]
    for n in range(2 * args.rounds):
        kind = order[n % 4]
        result = run_round(peers, kind, args.timeout)
        row = {
            "api": "rust" if kind == "rust" else python_api,
            "round": n,
            "step_secs": [r[0] for r in result],
            "ok": all(r[1] for r in result),
            "phases": [r[2] for r in result],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    for p in peers:
        p.shutdown()
    dht.shutdown()

    rust = summary(rows, "rust")
    py = summary(rows, python_api)
    # Rounds come in adjacent pairs (R P, P R, ...): the per-peer difference within a pair is
    # the overhead with the least drift in it.
    diffs = []
    for a, b in zip(rows[0::2], rows[1::2]):
        r, p = (a, b) if a["api"] == "rust" else (b, a)
        diffs.extend(ps - rs for ps, rs in zip(p["step_secs"], r["step_secs"]))
    phases = {}
    for row in rows:
        if row["api"] != python_api:
            continue
        for ph in row["phases"]:
            derived = {
                "copy_in": ph["copy_in"],
                "core step": ph["core_done"] - ph["core_started"],
                "matchmaking": ph["matchmaking"],
                "allreduce": ph["allreduce"],
                "result_wait (user lock)": ph["result_wait"],
                "result_write (into the user's memory, inside the core step)": ph["result_write"],
                "after core (report)": ph["finished"] - ph["core_done"],
                "until Python returns": ph["returned"] - ph["finished"],
            }
            for k, v in derived.items():
                phases.setdefault(k, []).append(v)
    rust_phases = {}
    for row in rows:
        if row["api"] == "rust":
            for ph in row["phases"]:
                for k, v in ph.items():
                    rust_phases.setdefault(k, []).append(v)
    report = {
        "uptime_end": os.getloadavg(),
        "ok_rounds": sum(r["ok"] for r in rows),
        "rounds": len(rows),
        "rust_q1_median_q3": rust,
        python_api + "_q1_median_q3": py,
        "overhead_of_medians": py[1] / rust[1] - 1,
        "paired_diff_q1_median_q3": quartiles(diffs),
        "paired_overhead_median": statistics.median(diffs) / rust[1],
        "python_phase_medians": {k: statistics.median(v) for k, v in phases.items()},
        "rust_phase_medians": {k: statistics.median(v) for k, v in rust_phases.items()},
    }
    print(json.dumps(report, indent=1), flush=True)


if __name__ == "__main__":
    main()
