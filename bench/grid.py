"""Run every system on every cell of the grid, print one table, write results.json.

Called by run.sh (which sets up the venv); run it directly only inside that venv:

    python grid.py --peers 4 --size 64M --compression none --repeats 5

For each (peers, size, compression) cell and each system, one child command runs in its own
session with a timeout; whatever it leaves behind in that session (hivemind's p2pd daemons,
for instance) is killed afterwards. Each command prints JSON result lines on stdout; stderr
goes to logs/<system>-<peers>-<size>-<compression>.log.

The averager's command is AVERAGER_BENCH_CMD (default: 'cargo run --release --') followed by
'bench --processes --peers N --floats F --transport T --compression C --rounds R --json' (T from
--transport, default tcp), run
from the repository root: every peer its own process, as gloo's and hivemind's are. A missing or failing command gives an 'n/a' cell with the reason, never an abort.

With --alternate K each system runs K times per cell, the systems taking turns, and each system's
rounds are pooled into one median (logs then end in -run1 ... -runK): on a machine whose speed
drifts for minutes at a time, every system meets the slow spells alike.
"""

import argparse
import itertools
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time

from common import log, parse_size, size_label
from table import SYSTEMS, algbw, format_table, ratio

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_AVERAGER_CMD = "cargo run --release --"
DEFAULT_TIMEOUTS = {"averager": 900, "gloo": 300, "hivemind": 900}


def command_for(system, peers, floats, compression, args):
    """The argv that benchmarks `system` on one cell, and the directory to run it in."""
    if system == "averager":
        base = shlex.split(os.environ.get("AVERAGER_BENCH_CMD", DEFAULT_AVERAGER_CMD))
        rest = ["bench", "--processes", "--peers", str(peers), "--floats", str(floats)]
        rest += ["--transport", args.transport]
        rest += ["--compression", compression, "--rounds", str(args.repeats), "--json"]
        return base + rest, REPO
    script = os.path.join(HERE, f"{system}_bench.py")
    argv = [sys.executable, script, "--peers", str(peers), "--size", str(floats)]
    argv += ["--compression", compression, "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    return argv, HERE


def kill_session(pgid):
    """SIGKILL every process still in the child's process group (it was started as a session leader)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def last_line(path):
    """The last non-empty line of a log file after its first line (the command, written by
    run_one or build_averager), shortened: the usual reason a command failed."""
    try:
        with open(path, errors="replace") as file:
            next(file, None)
            lines = [line.strip() for line in file if line.strip()]
    except OSError:
        return ""
    return lines[-1][:160] if lines else ""


def run_one(system, peers, floats, compression, args, run=0):
    """Run one system on one cell (its `run`-th turn with --alternate); returns its result record
    or {'error': reason}."""
    argv, cwd = command_for(system, peers, floats, compression, args)
    turn = f"-run{run + 1}" if args.alternate > 1 else ""
    log_path = os.path.join(args.log_dir, f"{system}-{peers}-{size_label(floats)}-{compression}{turn}.log")
    timeout = args.timeout or DEFAULT_TIMEOUTS[system]
    load_before = os.getloadavg()[0]
    log(f"{system}: {peers} peers x {size_label(floats)} x {compression} (load {load_before:.2f})")
    with open(log_path, "w") as log_file:
        log_file.write(f"$ (cd {cwd} && {shlex.join(argv)})\n")
        log_file.flush()
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, stdout=subprocess.PIPE, stderr=log_file, text=True, start_new_session=True
            )
        except OSError as error:
            return {"error": f"not available: cannot start {argv[0]}: {error.strerror}"}
        # Read on a thread and wait for the command itself, not for the end of its stdout: a
        # command that exits and leaves children holding the pipe (hivemind's script after a
        # peer's wrong mean, its other peers waiting on a dead group) would otherwise hold the
        # cell until its timeout. Those children are killed with the session either way.
        chunks = []
        reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout}s (log: {log_path})"}
        finally:
            kill_session(proc.pid)
            proc.wait()
            reader.join()
            proc.stdout.close()
        stdout = "".join(chunks)
    records = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        matches = (record.get("peers"), record.get("floats"), record.get("compression")) == (
            peers,
            floats,
            compression,
        )
        if record.get("system") == system and "algbw_mb_s" in record and matches:
            records.append(record)
    if not records:
        reason = last_line(log_path) or f"exit code {proc.returncode}, no result line"
        prefix = "not available" if system == "averager" else "failed"
        return {"error": f"{prefix} (exit {proc.returncode}): {reason}"}
    record = records[-1]
    record["load_1m_before"] = load_before
    record["load_1m_after"] = os.getloadavg()[0]
    return record


def pooled(records, floats):
    """One system's runs of one cell (``--alternate``) as one result: every run's rounds pooled,
    the algbw from their median, the peak RSS the largest per peer. A run that failed is listed in
    ``runs`` but adds nothing; when every run failed, the last one's error stands."""
    ok = [record for record in records if "error" not in record]
    if len(records) == 1 or not ok:
        return records[-1]
    merged = dict(ok[-1])
    merged["runs"] = [
        {key: record.get(key) for key in ("algbw_mb_s", "allreduce_s_median", "load_1m_before", "error")}
        for record in records
    ]
    rounds = [seconds for record in ok for seconds in record.get("allreduce_s_rounds") or []]
    if rounds:
        merged["allreduce_s_rounds"] = rounds
        merged["allreduce_s_median"] = statistics.median(rounds)
        merged["algbw_mb_s"] = floats * 4 / merged["allreduce_s_median"] / 1e6
    else:  # a command that does not list its rounds: the median of the runs' figures
        merged["algbw_mb_s"] = statistics.median(record["algbw_mb_s"] for record in ok)
    peaks = [record.get("peak_rss_mb") for record in ok if record.get("peak_rss_mb")]
    if peaks:
        merged["peak_rss_mb"] = [
            max((p for p in column if p is not None), default=None) for column in zip(*peaks)
        ]
    merged["load_1m_before"] = records[0].get("load_1m_before")
    return merged


def build_averager(args):
    """With the default command, build the release binary once up front (logged), so that no
    cell's timeout is spent compiling. Returns None, or the reason the build failed."""
    if "AVERAGER_BENCH_CMD" in os.environ:
        return None
    log_path = os.path.join(args.log_dir, "cargo-build.log")
    log(f"averager: cargo build --release (log: {log_path})")
    with open(log_path, "w") as log_file:
        log_file.write(f"$ (cd {REPO} && cargo build --release)\n")
        log_file.flush()
        try:
            proc = subprocess.Popen(
                ["cargo", "build", "--release"], cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            return f"not available: cannot run cargo: {error.strerror}"
        try:
            proc.wait(timeout=args.build_timeout)
        except subprocess.TimeoutExpired:
            kill_session(proc.pid)
            proc.wait()
            return f"not available: cargo build timed out after {args.build_timeout}s"
    if proc.returncode != 0:
        return f"not available: cargo build --release failed: {last_line(log_path)}"
    return None


def split_list(values, convert=str):
    """Flags may repeat and may hold comma lists: --peers 2 --peers 4, or --peers 2,4."""
    return [convert(part) for value in values for part in value.split(",") if part]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", action="append", default=[], help="default 2,4")
    parser.add_argument("--size", action="append", default=[], help="floats per peer; default 16M,64M (M = 2**20)")
    parser.add_argument("--compression", action="append", default=[], help="none and/or float16; default both")
    parser.add_argument("--systems", action="append", default=[], help="default averager,gloo,hivemind")
    parser.add_argument(
        "--transport", default="tcp", help="the averager's transport (tcp, grpc, quic, libp2p); default tcp"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per cell (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (gloo, hivemind)")
    parser.add_argument(
        "--alternate",
        type=int,
        default=1,
        help="runs per system and cell, the systems taking turns (A B C A B C ...); each system's "
        "rounds are pooled, so a slow spell of the machine falls on every system alike",
    )
    parser.add_argument("--timeout", type=int, default=0, help="seconds per system and cell; 0 = per-system default")
    parser.add_argument("--build-timeout", type=int, default=1800, help="seconds for cargo build --release")
    parser.add_argument("--out", default=os.path.join(HERE, "results.json"))
    parser.add_argument("--log-dir", default=os.path.join(HERE, "logs"))
    args = parser.parse_args()
    if args.alternate < 1:
        parser.error("--alternate must be at least 1")
    # On SIGTERM unwind like on Ctrl-C, so run_one's cleanup kills the running child's session.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    peers_list = split_list(args.peers, int) or [2, 4]
    sizes = split_list(args.size, parse_size) or [parse_size("16M"), parse_size("64M")]
    compressions = split_list(args.compression) or ["none", "float16"]
    systems = split_list(args.systems) or list(SYSTEMS)
    for name in compressions:
        if name not in ("none", "float16"):
            parser.error(f"unknown compression {name!r}")
    for name in systems:
        if name not in SYSTEMS:
            parser.error(f"unknown system {name!r}")
    os.makedirs(args.log_dir, exist_ok=True)

    results = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_1m_start": os.getloadavg()[0]},
        "repeats": args.repeats,
        "warmup": args.warmup,
        "alternate": args.alternate,
        "averager_command": os.environ.get("AVERAGER_BENCH_CMD", DEFAULT_AVERAGER_CMD),
        "cells": [],
    }
    build_error = build_averager(args) if "averager" in systems else None
    for peers, floats, compression in itertools.product(peers_list, sizes, compressions):
        cell = {"peers": peers, "floats": floats, "compression": compression, "results": {}}
        runs = {system: [] for system in systems}
        for run in range(args.alternate):
            for system in systems:
                if system == "averager" and build_error:
                    runs[system].append({"error": build_error})
                else:
                    runs[system].append(run_one(system, peers, floats, compression, args, run))
        for system in systems:
            cell["results"][system] = pooled(runs[system], floats)
        averager = algbw(cell, "averager")
        cell["averager_over_gloo"] = ratio(averager, algbw(cell, "gloo"))
        cell["averager_over_hivemind"] = ratio(averager, algbw(cell, "hivemind"))
        results["cells"].append(cell)
        with open(args.out, "w") as file:  # after every cell, so an interrupted run keeps what it has
            json.dump(results, file, indent=2)
    results["machine"]["load_1m_end"] = os.getloadavg()[0]
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with open(args.out, "w") as file:
        json.dump(results, file, indent=2)
    print(format_table(results))
    print(f"\nresults: {args.out}; logs: {args.log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
