#!/usr/bin/env bash
# Benchmark the averager against torch.distributed (gloo) and hivemind 1.1.12 on this machine.
#
#   bench/run.sh                                   # the whole grid: peers {2,4} x size {16M,64M} x {none,float16}
#   bench/run.sh --peers 4 --size 64M --compression none --repeats 5
#   bench/run.sh --systems gloo,hivemind           # leave a system out
#
# Creates bench/.venv on first use and installs the pinned packages into it from PyPI (several GB:
# torch's Linux wheels from PyPI pull CUDA libraries). Set TORCH_INDEX_URL to a reachable CPU-only
# torch index to install torch from there first instead. Every other flag is grid.py's
# (bench/.venv/bin/python bench/grid.py --help). Prints one table; writes bench/results.json and
# per-run logs in bench/logs/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"
stamp="$venv/.bench-installed"
wanted="$(cat "$here/requirements.txt" "$here/constraints.txt" | sha256sum | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "bench: creating $venv" >&2
    "$python" -m venv "$venv"
fi
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]]; then
    echo "bench: installing pinned packages into $venv (first run takes a few minutes)" >&2
    pip=("$venv/bin/pip" install --disable-pip-version-check --only-binary hivemind)
    if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
        timeout 1800 "${pip[@]}" --index-url "$TORCH_INDEX_URL" -c "$here/constraints.txt" torch
    fi
    timeout 3600 "${pip[@]}" -r "$here/requirements.txt" -c "$here/constraints.txt"
    "$venv/bin/python" - <<'PY'
import os, torch, torch.distributed as dist, hivemind
p2pd = os.path.join(os.path.dirname(hivemind.__file__), "hivemind_cli", "p2pd")
assert dist.is_gloo_available(), "this torch has no gloo backend"
assert os.access(p2pd, os.X_OK), f"hivemind's p2pd daemon is missing: {p2pd}"
print(f"bench: torch {torch.__version__}, hivemind {hivemind.__version__}, p2pd bundled", flush=True)
PY
    echo "$wanted" >"$stamp"
fi

echo "bench: $(uptime)" >&2
exec "$venv/bin/python" "$here/grid.py" "$@"
