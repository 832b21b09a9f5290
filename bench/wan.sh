#!/usr/bin/env bash
# The all-reduce on rate-limited links: one network namespace per peer behind a bridge, each
# peer's link capped in both directions with `tc tbf` (rate limits only: netem is absent from some
# kernels), 4 peers x 64 MB by default. Cells: every link at 200 Mbit/s, every link at 1 Gbit/s,
# and the 50/100/200/400 Mbit/s mix, the mix twice: without a bandwidth (each peer declares what
# it measured) and with each peer told its link rate. Reports each cell's all-reduce time against
# the link bound 2(N-1)/N * bytes / rate (with equal shares, the slowest link's rate).
#
#   sudo bench/wan.sh                       # needs root (ip netns, tc); builds nothing
#   sudo bench/wan.sh --rounds 5 --size 16M --binary target/release/averager
#
# The averager runs as the hidden `averager worker` per namespace, driven by bench/wan.py over
# stdin/stdout. hivemind runs on the same links when bench/run.sh's venv (bench/.venv) exists;
# otherwise the script says why it skipped it. `--systems averager,tcp` adds the plain-TCP
# reference (bench/tcp_wan_peer.py): the all-reduce's bytes over as many connections with nothing
# else, what TCP itself achieves on these links. Every namespace, veth and the bridge are removed on
# exit, also on Ctrl+C or an error.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
binary="$repo/target/release/averager"
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done

if [[ "$(id -u)" != 0 ]]; then
    echo "wan: needs root for network namespaces and tc (run with sudo)" >&2
    exit 2
fi
for tool in ip tc python3; do
    command -v "$tool" >/dev/null || { echo "wan: $tool is missing" >&2; exit 2; }
done
if [[ ! -x "$binary" ]]; then
    echo "wan: no averager binary at $binary (cargo build --release -p averager --bin averager)" >&2
    exit 2
fi

hivemind_python=""
if [[ -x "$here/.venv/bin/python" ]] && "$here/.venv/bin/python" -c "import hivemind" 2>/dev/null; then
    hivemind_python="$here/.venv/bin/python"
else
    echo "wan: skipping hivemind: bench/.venv has no hivemind (bench/run.sh creates it)" >&2
fi

# wan.py removes what it created too; this also covers a driver that was killed.
prefix="${AVERAGER_WAN_PREFIX:-avwan}"
cleanup() {
    for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^$prefix-" || true); do
        ip link del "$link" 2>/dev/null || true
    done
    for netns in $(ip netns list | awk '{print $1}' | grep -E "^$prefix(-hub|[0-9]+)\$" || true); do
        ip netns pids "$netns" 2>/dev/null | xargs -r kill 2>/dev/null || true
        ip netns del "$netns" 2>/dev/null || true
    done
}
trap cleanup EXIT INT TERM

echo "wan: $(uptime)" >&2
python3 "$here/wan.py" --binary "$binary" --hivemind-python "$hivemind_python" ${args[@]+"${args[@]}"}
