#!/usr/bin/env bash
# CI for the Python package: format and lint of the native crate (it is not a member of the root
# workspace), then a dev-profile build into a virtualenv and the pytest suite.
#
# Shares the root target directory, so the dependencies the root `cargo test` compiled are not
# compiled again. The virtualenv (python/.venv, gitignored) and pip's cache are reused between
# runs; the first run downloads torch (several GB).
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD
root=$(cd .. && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
venv="${AVERAGER_PYTHON_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

# Each phase's duration is printed when the next one starts (the whole CI has a time budget).
phase_start=$SECONDS
step() {
    [ -z "${phase:-}" ] || printf '   (%s: %d s)\n' "$phase" $((SECONDS - phase_start))
    phase=$*
    phase_start=$SECONDS
    printf '\n== python: %s\n' "$*"
}

step "format and lint of the native crate"
cargo fmt --manifest-path Cargo.toml --check
cargo clippy --manifest-path Cargo.toml --all-targets -- -D warnings

step "virtualenv with maturin, pytest, numpy, msgpack and torch"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# Only what is missing is downloaded: an existing venv costs a few seconds here.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    maturin pytest numpy msgpack torch

step "pip install ./python (dev profile)"
# --no-build-isolation: maturin is already in the venv, no per-build download.
# The dev profile reuses the root build's artifacts; release takes a full optimised build.
# maturin's build hook runs the `maturin` executable, found on PATH.
(cd "$root" && PATH="$venv/bin:$PATH" MATURIN_PEP517_ARGS="--profile dev" \
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-build-isolation \
    --force-reinstall --no-deps ./python)

step "pytest"
# Serial on purpose: with pytest-xdist (3 workers) the suite took longer (120 s against 79 s, both
# on the shared, loaded 2-core machine): its peers compute more than they wait.
status=0
(cd "$here/tests" && "$venv/bin/python" -m pytest -q -p no:cacheprovider .) || status=$?
printf '   (%s: %d s)\n' "$phase" $((SECONDS - phase_start))
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests" >&2
    exit 1
fi
exit "$status"
