#!/usr/bin/env python3
"""Traces the links of bench/wan.sh through one round (`bench/wan.sh --trace DIR`), and
summarises traces (`python3 bench/wan_trace.py summary DIR/trace-*.jsonl`).

`sample` runs in the hub namespace (started by wan.py, stopped by closing its stdin): every
`--interval` seconds it reads the byte counters of every peer's veth from /proc/net/dev (the
bridge end's tx is the peer's download after its tbf, its rx the peer's upload after the peer's
own tbf), and every `--ss-every` samples the TCP sockets of every peer namespace (`ss -tin`:
cwnd, rtt, retransmits, bytes queued but not sent). One JSON object per line.

`summary` prints, per peer, how busy each direction of its link was over the round and where
it was not: the round split into tenths, each tenth's rate as a share of the link's, and the
share of the round's time in which a direction carried under half the rate."""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time

# Another prefix lets two runs (of two worktrees) share the machine: their namespaces never meet.
PREFIX = os.environ.get("AVERAGER_WAN_PREFIX", "avwan")


def read_dev():
    """{device: (rx_bytes, tx_bytes)} of this namespace's devices."""
    counters = {}
    with open("/proc/net/dev") as f:
        for line in f.readlines()[2:]:
            name, data = line.split(":", 1)
            fields = data.split()
            counters[name.strip()] = (int(fields[0]), int(fields[8]))
    return counters


SS_FIELDS = {
    "cwnd": re.compile(r"\bcwnd:(\d+)"),
    "rtt_ms": re.compile(r"\brtt:([\d.]+)/"),
    "retrans": re.compile(r"\bretrans:\d+/(\d+)"),
    "notsent": re.compile(r"\bnotsent:(\d+)"),
    "unacked": re.compile(r"\bunacked:(\d+)"),
    "pacing": re.compile(r"\bpacing_rate ([\d.]+[KMG]?)bps"),
    "delivery": re.compile(r"\bdelivery_rate ([\d.]+[KMG]?)bps"),
    "rcv_space": re.compile(r"\brcv_space:(\d+)"),
    "bytes_acked": re.compile(r"\bbytes_acked:(\d+)"),
    "bytes_received": re.compile(r"\bbytes_received:(\d+)"),
    "wscale": re.compile(r"\bwscale:(\d+),(\d+)"),
    "cc": re.compile(r"^\s*(\w+)\s+wscale:"),
}


def rate(text):
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1], 1)
    return float(text.rstrip("KMG")) * scale


def read_ss(peer):
    """The established TCP sockets of peer `peer`'s namespace, with the fields above."""
    out = subprocess.run(["ip", "netns", "exec", f"{PREFIX}{peer}", "ss", "-tinH", "state", "established"],
                         capture_output=True, text=True).stdout
    sockets, current = [], None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            parts = line.split()
            current = {"local": parts[-2], "peer": parts[-1], "recvq": int(parts[0]), "sendq": int(parts[1])}
            sockets.append(current)
            continue
        if current is None:
            continue
        for key, pattern in SS_FIELDS.items():
            m = pattern.search(line)
            if m:
                if key in ("pacing", "delivery"):
                    current[key] = rate(m.group(1))
                elif key == "wscale":
                    current[key] = [int(m.group(1)), int(m.group(2))]
                elif key == "cc":
                    current[key] = m.group(1)
                elif key == "rtt_ms":
                    current[key] = float(m.group(1))
                else:
                    current[key] = int(m.group(1))
    return sockets


def qdisc_drops(peers):
    """Per peer, [dropped, overlimits] packets of its upload tbf (in its namespace) and of its
    download tbf (the bridge end of its veth, in this one)."""
    def stats(cmd):
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        for q in json.loads(out or "[]"):
            if q.get("kind") == "tbf":
                return [q.get("drops", 0), q.get("overlimits", 0)]
        return [0, 0]
    return {i: {"up": stats(["ip", "netns", "exec", f"{PREFIX}{i}", "tc", "-s", "-j", "qdisc", "show", "dev", "eth0"]),
                "down": stats(["tc", "-s", "-j", "qdisc", "show", "dev", f"{PREFIX}-h{i}"])} for i in peers}


def sample(args):
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    peers = list(range(args.peers))
    start = time.monotonic()
    n = 0
    with open(args.out, "w") as out:
        out.write(json.dumps({"meta": json.loads(args.meta), "qdisc_start": qdisc_drops(peers)}) + "\n")
        while not stop.is_set():
            t = time.monotonic() - start
            dev = read_dev()
            record = {"t": round(t, 4), "bytes": {}}
            for i in peers:
                rx, tx = dev.get(f"{PREFIX}-h{i}", (0, 0))
                # The peer's view: what it uploaded (the bridge end received) and downloaded.
                record["bytes"][i] = [rx, tx]
            if args.ss_every and n % args.ss_every == 0:
                record["ss"] = {i: read_ss(i) for i in peers}
            out.write(json.dumps(record) + "\n")
            n += 1
            # Sleep to the next tick, not for an interval: ss calls must not stretch the grid.
            next_tick = start + n * args.interval
            stop.wait(max(0.0, next_tick - time.monotonic()))
        out.write(json.dumps({"qdisc_end": qdisc_drops(peers)}) + "\n")


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(args):
    for path in args.traces:
        records = load(path)
        meta = records[0] if "meta" in records[0] else {}
        end = records[-1] if "qdisc_end" in records[-1] else {}
        records = [r for r in records if "bytes" in r]
        rates = meta.get("meta", {}).get("rates_mbit")
        print(f"== {path}  {meta.get('meta', {})}")
        peers = sorted(records[0]["bytes"], key=int)
        times = [r["t"] for r in records]
        for p in peers:
            up = [r["bytes"][p][0] for r in records]
            down = [r["bytes"][p][1] for r in records]
            link = rates[int(p)] * 1e6 / 8 if rates else None
            for name, series in (("up", up), ("down", down)):
                total = series[-1] - series[0]
                # The round: from the first to the last sample in which the direction moved.
                moving = [k for k in range(1, len(series)) if series[k] - series[k - 1] > 3000]
                if not moving:
                    continue
                first, last = moving[0] - 1, moving[-1]
                span = times[last] - times[first]
                tenths = []
                for d in range(10):
                    a = times[first] + span * d / 10
                    b = times[first] + span * (d + 1) / 10
                    ia = min(range(len(times)), key=lambda k: abs(times[k] - a))
                    ib = min(range(len(times)), key=lambda k: abs(times[k] - b))
                    dt = times[ib] - times[ia]
                    tenths.append((series[ib] - series[ia]) / dt / link if dt > 0 and link else 0.0)
                slow = 0.0
                for k in range(first + 1, last + 1):
                    dt = times[k] - times[k - 1]
                    if link and dt > 0 and (series[k] - series[k - 1]) / dt < 0.5 * link:
                        slow += dt
                avg = total / span / link if link else 0
                if args.bin:
                    row, k, edge = [], first, times[first]
                    while edge < times[last]:
                        j = k
                        while j < last and times[j] < edge + args.bin:
                            j += 1
                        dt = times[j] - times[k]
                        row.append(f"{(series[j] - series[k]) / dt / link * 100:3.0f}" if dt > 0 and link else "  -")
                        k, edge = j, times[j]
                    print(f"peer {p} {name:4s} every {args.bin}s from {times[first]:.2f}: {' '.join(row)}")
                print(f"peer {p} {name:4s} {total / 1e6:7.1f} MB in {times[first]:.2f}-{times[last]:.2f} s "
                      f"({span:.2f} s) = {avg:.0%} of link; under half rate {slow:.2f} s; tenths: "
                      + " ".join(f"{x:.0%}" for x in tenths))
        # Sockets: retransmits by the end, and cwnd / rtt / notsent medians over the samples.
        ss = [r for r in records if "ss" in r]
        if ss:
            for p in peers:
                last = {}
                cwnds, rtts, notsent, ccs = [], [], [], set()
                for r in ss:
                    for s in r["ss"].get(p, []):
                        key = (s["local"], s["peer"])
                        last[key] = s
                        ccs.add(s.get("cc", "?"))
                        if s.get("bytes_acked", 0) > 1e6:
                            cwnds.append(s.get("cwnd", 0))
                            rtts.append(s.get("rtt_ms", 0))
                            notsent.append(s.get("notsent", 0))
                retrans = sum(s.get("retrans", 0) for s in last.values())
                med = lambda v: sorted(v)[len(v) // 2] if v else 0
                drops = ""
                if meta.get("qdisc_start") and end:
                    a, b = meta["qdisc_start"][p], end["qdisc_end"][p]
                    drops = (f", tbf drops up {b['up'][0] - a['up'][0]} down {b['down'][0] - a['down'][0]}")
                print(f"peer {p} sockets: {len(last)}, retransmitted segments {retrans}, cwnd median {med(cwnds)}, "
                      f"rtt median {med(rtts):.1f} ms (max {max(rtts) if rtts else 0:.1f}), notsent median "
                      f"{med(notsent)}{drops}; congestion control {'/'.join(sorted(ccs))}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--peers", type=int, default=4)
    s.add_argument("--interval", type=float, default=0.02)
    s.add_argument("--ss-every", type=int, default=10)
    s.add_argument("--out", required=True)
    s.add_argument("--meta", default="{}", help="a JSON object written first (rates_mbit: the links)")
    m = sub.add_parser("summary")
    m.add_argument("traces", nargs="+")
    m.add_argument("--bin", type=float, default=0.0, help="also print each direction's rate (%% of the link) "
                   "in bins of this many seconds")
    args = parser.parse_args()
    sample(args) if args.command == "sample" else summary(args)


if __name__ == "__main__":
    main()
