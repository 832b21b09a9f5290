#!/usr/bin/env python3
"""The driver of bench/wan.sh: builds the namespaces and links, runs the averager's workers in
them cell by cell, and prints the table (also written to bench/wan-results.json).

Each cell starts fresh workers (`averager worker`, one per namespace): peer 0 first, whose DHT
address the others bootstrap from; then `--rounds` rounds, each one line `round N` to every
worker and one JSON report back. A round's all-reduce time is the slowest peer's. The bound of a
cell is 2(N-1)/N * bytes / rate of its slowest link: what equal shares cost when every byte
crosses that link once each way. The best split of a cell is what the best shares cost on its
links (load balancing's closed form, protocol 5): on the mix, the slowest peer reduces nothing
and only sends and receives its own tensor once."""

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time

# Another prefix lets two runs (of two worktrees) share the machine: their namespaces never meet.
PREFIX = os.environ.get("AVERAGER_WAN_PREFIX", "avwan")
BRIDGE = f"{PREFIX}-br"
# The bridge lives in a namespace of its own: in the root namespace, br_netfilter would pass the
# bridged traffic through the host's firewall (whose FORWARD policy may drop it).
HUB = f"{PREFIX}-hub"
SUBNET = "10.77.0"
HERE = os.path.dirname(os.path.abspath(__file__))
# The share of tbf's rate that TCP carries as payload at MTU 1500: a 1448-byte segment (with
# timestamps) in a 1514-byte frame. No transport over TCP can beat bound / TCP_PAYLOAD.
TCP_PAYLOAD = 1448 / 1514


def best_split_seconds(rates_mbit, nbytes):
    """The all-reduce time of the best shares on these links: the minimum over splits w of the
    slowest member's (1 + (n - 2) w_i) * bytes / b_i, in closed form."""
    rates = [r * 1e6 / 8 for r in rates_mbit]
    n = len(rates)
    if n < 3:
        return nbytes / min(rates) if n == 2 else 0.0
    return max((2 * n - 2) / sum(rates), 1 / min(rates)) * nbytes


def run(*cmd, check=True):
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")


def ns(i):
    return f"{PREFIX}{i}"


def host_veth(i):
    return f"{PREFIX}-h{i}"


class Network:
    """A bridge in a hub namespace and one namespace per peer, each behind a veth pair."""

    def __init__(self, peers, sysctls=()):
        self.peers = peers
        self.sysctls = list(sysctls)
        # Each peer's link rate in Mbit/s, as the last `shape` set it.
        self.rates = []

    def up(self):
        self.down()
        run("ip", "netns", "add", HUB)
        run("ip", "-n", HUB, "link", "add", BRIDGE, "type", "bridge")
        run("ip", "-n", HUB, "link", "set", BRIDGE, "up")
        for i in range(self.peers):
            run("ip", "netns", "add", ns(i))
            run("ip", "-n", ns(i), "link", "set", "lo", "up")
            run("ip", "-n", HUB, "link", "add", host_veth(i), "type", "veth", "peer", "name", f"{PREFIX}-p{i}")
            run("ip", "-n", HUB, "link", "set", f"{PREFIX}-p{i}", "netns", ns(i))
            run("ip", "-n", ns(i), "link", "set", f"{PREFIX}-p{i}", "name", "eth0")
            run("ip", "-n", ns(i), "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            run("ip", "-n", ns(i), "link", "set", "eth0", "up")
            for setting in self.sysctls:
                run("ip", "netns", "exec", ns(i), "sysctl", "-q", "-w", setting)
            run("ip", "-n", HUB, "link", "set", host_veth(i), "master", BRIDGE)
            run("ip", "-n", HUB, "link", "set", host_veth(i), "up")

    def address(self, i):
        return f"{SUBNET}.{i + 1}"

    def shape(self, rates_mbit):
        """Caps peer i's link at rates_mbit[i] both ways: its upload leaves through eth0 in its
        namespace, its download through its veth's bridge end."""
        self.rates = list(rates_mbit)
        for i, rate in enumerate(rates_mbit):
            # A burst of about 10 ms at the rate, at least 64 KiB (tbf needs rate / HZ at least).
            burst = max(64 * 1024, int(rate * 1e6 / 8 / 100))
            spec = ["root", "tbf", "rate", f"{rate}mbit", "burst", str(burst), "latency", "100ms"]
            run("ip", "netns", "exec", ns(i), "tc", "qdisc", "replace", "dev", "eth0", *spec)
            run("ip", "netns", "exec", HUB, "tc", "qdisc", "replace", "dev", host_veth(i), *spec)

    def down(self):
        # Deleting a namespace deletes its end of each veth, and with it the pair.
        for i in range(self.peers):
            run("ip", "netns", "del", ns(i), check=False)
        run("ip", "netns", "del", HUB, check=False)


def averager_command(args, net, index, prefix, bootstrap, bandwidth):
    """The averager's peer `index`: the hidden `averager worker` subcommand."""
    cmd = [args.binary, "worker", "--index", str(index), "--floats", str(args.floats), "--seed", "0"]
    cmd += ["--group-size", str(args.peers), "--prefix", prefix, "--transport", args.transport]
    cmd += ["--compression", args.compression, "--timeout", str(args.step_timeout)]
    cmd += ["--host", net.address(index)]
    for addr in bootstrap:
        cmd += ["--bootstrap", addr]
    if bandwidth is not None:
        cmd += ["--bandwidth", str(bandwidth)]
    if args.part_size:
        cmd += ["--part-size", str(args.part_size)]
    return cmd


def hivemind_command(args, net, index, prefix, bootstrap, bandwidth):
    """hivemind's peer `index`: bench/hivemind_wan_peer.py in the bench venv's Python."""
    cmd = [args.hivemind_python, os.path.join(HERE, "hivemind_wan_peer.py"), "--index", str(index)]
    cmd += ["--peers", str(args.peers), "--floats", str(args.floats), "--prefix", prefix]
    cmd += ["--compression", args.compression, "--timeout", str(args.step_timeout)]
    cmd += ["--host", net.address(index)]
    for addr in bootstrap:
        cmd += ["--bootstrap", addr]
    if bandwidth is not None:
        cmd += ["--bandwidth", str(bandwidth)]
    return cmd


def tcp_command(args, net, index, prefix, bootstrap, bandwidth, pace=0):
    """The plain-TCP reference's peer `index` (bench/tcp_wan_peer.py): the same bytes over the
    same number of connections, with nothing else."""
    hosts = ",".join(net.address(i) for i in range(args.peers))
    return [sys.executable, os.path.join(HERE, "tcp_wan_peer.py"), "--index", str(index), "--hosts", hosts,
            "--floats", str(args.floats), "--timeout", str(args.step_timeout), "--pace", str(pace)]


def tcp_paced_command(args, net, index, prefix, bootstrap, bandwidth):
    """The plain-TCP reference with each connection's sending rate capped as the averager caps
    its streams with four equal members: a third of the link's TCP payload rate."""
    payload = net.rates[index] * 1e6 / 8 * TCP_PAYLOAD
    return tcp_command(args, net, index, prefix, bootstrap, bandwidth, pace=int(payload / 3))


COMMANDS = {"averager": averager_command, "hivemind": hivemind_command, "tcp": tcp_command,
            "tcp-paced": tcp_paced_command}


class Worker:
    def __init__(self, command, index, log):
        # In bench/, so that the hivemind peer imports its neighbours.
        cmd = ["ip", "netns", "exec", ns(index), *command]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                     cwd=HERE)
        # Lines are split here, not by a buffered reader: select() on the pipe cannot see lines
        # that a reader already pulled into its buffer.
        self.pending = b""

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def readline(self, deadline):
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            data = os.read(fd, 65536)
            if not data:
                raise RuntimeError("a worker exited before its report")
            self.pending += data
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()

    def expect(self, event, timeout):
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(deadline)
            if line is None:
                raise RuntimeError(f"no {event} report within {timeout} s")
            try:
                report = json.loads(line)
            except json.JSONDecodeError:
                continue
            if report.get("event") == event:
                return report

    def cpu_seconds(self):
        """User + system CPU time so far of the worker (`ip netns exec` execs it: same pid) and
        of its live descendants (hivemind's averager process, DHT and p2pd daemons)."""
        total, todo = 0.0, [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        todo += [int(c) for c in f.read().split()]
            except (OSError, IndexError, ValueError):
                continue
        return total

    def stop(self):
        try:
            self.send("quit")
            self.proc.stdin.close()
            self.proc.wait(timeout=20)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def start_trace(args, name, system, rates, r):
    """With --trace, bench/wan_trace.py sampling the links through round `r` (see its docs)."""
    if not args.trace:
        return None
    out = os.path.join(args.trace, f"trace-{system}-{name}-r{r}.jsonl")
    meta = json.dumps({"system": system, "cell": name, "round": r, "rates_mbit": rates})
    cmd = ["ip", "netns", "exec", HUB, sys.executable, os.path.join(HERE, "wan_trace.py"), "sample",
           "--peers", str(args.peers), "--out", out, "--meta", meta]
    tracer = subprocess.Popen(cmd, stdin=subprocess.PIPE, text=True)
    # The first line holds the qdiscs' counters before the round: let it be written first.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (os.path.exists(out) and os.path.getsize(out) > 0):
        time.sleep(0.02)
    return tracer


def stop_trace(tracer):
    if tracer is not None:
        tracer.stdin.close()
        try:
            tracer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            tracer.kill()


def run_cell(args, net, name, rates, informed, log, system="averager"):
    net.shape(rates)
    prefix = f"wan-{system}-{name}-{os.getpid()}"
    command = COMMANDS[system]
    workers = []
    try:
        first = Worker(command(args, net, 0, prefix, [], rates[0] / 8 if informed else None), 0, log)
        workers.append(first)
        ready = first.expect("ready", 120)
        bootstrap = [a for a in ready.get("dht", []) if f"/{net.address(0)}/" in a] or ready.get("dht", [])
        for i in range(1, args.peers):
            bandwidth = rates[i] / 8 if informed else None
            workers.append(Worker(command(args, net, i, prefix, bootstrap, bandwidth), i, log))
        for w in workers[1:]:
            w.expect("ready", 120)
        rounds = []
        for r in range(1, args.rounds + 1):
            tracer = start_trace(args, name, system, rates, r)
            cpu_before = sum(w.cpu_seconds() for w in workers)
            for w in workers:
                w.send(f"round {r}")
            try:
                reports = [w.expect("round", args.step_timeout + 60) for w in workers]
            finally:
                stop_trace(tracer)
            cpu = sum(w.cpu_seconds() for w in workers) - cpu_before
            errors = [rep.get("error") for rep in reports if rep.get("error")]
            allreduce = [rep.get("allreduce_s") for rep in reports]
            step = [(rep.get("matchmaking_s") or 0) + (rep.get("allreduce_s") or 0) for rep in reports]
            rounds.append({
                "round": r,
                "allreduce_s": None if errors or None in allreduce else max(allreduce),
                "peers_allreduce_s": allreduce,
                "step_s": max(step),
                "cpu_s": cpu,
                "errors": errors,
                "estimates_mb_s": [rep.get("bandwidth_estimate") for rep in reports],
            })
            print(f"wan: {system} {name} round {r}: {rounds[-1]}", file=sys.stderr, flush=True)
        return rounds
    finally:
        for w in workers:
            w.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", help="the averager binary (required unless --table)")
    parser.add_argument("--hivemind-python", default="")
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--size", default="16M", help="floats per peer (M = 2**20); 16M = 64 MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transport", default="grpc")
    parser.add_argument("--compression", default="none")
    parser.add_argument("--step-timeout", type=float, default=300.0)
    parser.add_argument("--cells", default="200,1000,mix,mix-informed")
    parser.add_argument("--systems", default="averager,hivemind",
                        help="which to run, in order: averager, hivemind (when --hivemind-python is "
                        "given) and tcp, the plain-TCP reference (bench/tcp_wan_peer.py: the same bytes "
                        "over the same connections with no computation, what TCP itself achieves)")
    parser.add_argument("--out", default=os.path.join(HERE, "wan-results.json"))
    parser.add_argument("--part-size", type=int, help="the averager's bytes per part (default: its config's "
                        "part_size_bytes, 512 KiB as hivemind's)")
    parser.add_argument("--sysctl", action="append", default=[], metavar="KEY=VALUE",
                        help="a network sysctl set in every peer's namespace (repeatable), to diagnose; "
                        "figures measured with one are not the benchmark's")
    parser.add_argument("--trace", metavar="DIR", help="sample every link through every round into DIR "
                        "(bench/wan_trace.py; `python3 bench/wan_trace.py summary DIR/*.jsonl` reads them)")
    parser.add_argument("--table", metavar="RESULTS", help="only print the table of a results file")
    args = parser.parse_args()
    if args.table:
        with open(args.table) as f:
            print_table(json.load(f))
        return
    if not args.binary:
        parser.error("--binary is required")
    load_before = open("/proc/loadavg").read().split()[:3]
    size = args.size.upper()
    args.floats = int(float(size[:-1]) * 2**20) if size.endswith("M") else int(size)
    mix = [50, 100, 200, 400][: args.peers] + [400] * max(0, args.peers - 4)
    cells = {
        "200": ([200] * args.peers, False),
        "1000": ([1000] * args.peers, False),
        "mix": (mix, False),
        "mix-informed": (mix, True),
        # Equal shares every round (each peer told its link's rate): the link bound without the
        # estimate's noise.
        "200-informed": ([200] * args.peers, True),
        "1000-informed": ([1000] * args.peers, True),
    }
    hivemind = bool(args.hivemind_python) and os.access(args.hivemind_python, os.X_OK)
    if args.hivemind_python and not hivemind:
        print(f"wan: skipping hivemind: {args.hivemind_python} is not an executable", file=sys.stderr)
    systems = [s for s in args.systems.split(",") if s != "hivemind" or hivemind]
    unknown = [s for s in systems if s not in COMMANDS]
    if unknown:
        parser.error(f"unknown systems: {', '.join(unknown)} (averager, hivemind, tcp, tcp-paced)")
    net = Network(args.peers, args.sysctl)
    bytes_per_peer = args.floats * 4
    results = []
    os.makedirs(os.path.join(HERE, "logs"), exist_ok=True)
    if args.trace:
        os.makedirs(args.trace, exist_ok=True)
    log_path = os.path.join(HERE, "logs", "wan-workers.log")
    try:
        net.up()
        with open(log_path, "w") as log:
            for name in args.cells.split(","):
                rates, informed = cells[name]
                bound = 2 * (args.peers - 1) / args.peers * bytes_per_peer * 8 / (min(rates) * 1e6)
                best = best_split_seconds(rates, bytes_per_peer)
                # Every system on the same links, one after the other.
                for system in systems:
                    try:
                        rounds = run_cell(args, net, name, rates, informed, log, system)
                    except RuntimeError as e:
                        print(f"wan: {system} {name}: {e}", file=sys.stderr, flush=True)
                        rounds = [{"round": 1, "allreduce_s": None, "step_s": None, "errors": [str(e)]}]
                    results.append({"system": system, "cell": name, "rates_mbit": rates, "informed": informed,
                                    "bound_s": bound, "best_split_s": best, "rounds": rounds})
    finally:
        net.down()
    load = open("/proc/loadavg").read().split()[:3]
    run = {"peers": args.peers, "bytes_per_peer": bytes_per_peer, "transport": args.transport,
           "compression": args.compression, "rounds": args.rounds, "load_before": load_before, "load": load,
           "cells": results}
    with open(args.out, "w") as f:
        json.dump(run, f, indent=1)
    print_table(run)


def print_table(run):
    """The table of a run (as written to the results file)."""
    print(f"{run['peers']} peers x {run['bytes_per_peer'] / 1e6:.1f} MB, transport {run.get('transport')}, "
          f"compression {run.get('compression')}, {run.get('rounds')} rounds per cell; load before: "
          f"{' '.join(run.get('load_before', ['?']))}, after: {' '.join(run['load'])}")
    print("| system | cell | links (Mbit/s) | bandwidth | bound (s) | TCP ceiling (s) | best split (s) "
          "| all-reduce round 1 (s) "
          "| rounds 2+ median (s) | best split / rounds 2+ | every round (s) | step median (s) | CPU s per round |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cell in run["cells"]:
        best = cell.get("best_split_s") or best_split_seconds(cell["rates_mbit"], run["bytes_per_peer"])
        times = [r["allreduce_s"] for r in cell["rounds"]]
        later = [t for t in times[1:] if t is not None]
        med = statistics.median(later) if later else None
        steps = [r["step_s"] for r in cell["rounds"] if r["step_s"]]
        cpu = [r["cpu_s"] for r in cell["rounds"] if r.get("cpu_s") is not None]
        every = " / ".join("failed" if t is None else f"{t:.2f}" for t in times)
        fmt = lambda v: "failed" if v is None else f"{v:.2f}"
        ratio = f"{best / med:.0%}" if med else "-"
        print(f"| {cell['system']} | {cell['cell']} | {'/'.join(map(str, cell['rates_mbit']))} | "
              f"{'told' if cell['informed'] else 'not given'} | {cell['bound_s']:.2f} | "
              f"{cell['bound_s'] / TCP_PAYLOAD:.2f} | {best:.2f} | "
              f"{fmt(times[0])} | "
              f"{fmt(med)} | {ratio} | {every} | {fmt(statistics.median(steps)) if steps else '-'} | "
              f"{fmt(statistics.median(cpu)) if cpu else '-'} |")


if __name__ == "__main__":
    main()
