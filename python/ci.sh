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

step() { printf '\n== python: %s\n' "$*"; }

step "format and lint of the native crate"
cargo fmt --manifest-path Cargo.toml --check
cargo clippy --manifest-path Cargo.toml --all-targets -- -D warnings

step "virtualenv with maturin, pytest, numpy, msgpack and torch"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check maturin pytest numpy msgpack torch

step "pip install ./python (dev profile)"
# --no-build-isolation: maturin is already in the venv, no per-build download.
# The dev profile reuses the root build's artifacts; release takes a full optimised build.
# maturin's build hook runs the `maturin` executable, found on PATH.
(cd "$root" && PATH="$venv/bin:$PATH" MATURIN_PEP517_ARGS="--profile dev" \
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-build-isolation \
    --force-reinstall --no-deps ./python)

step "pytest"
status=0
(cd "$here/tests" && "$venv/bin/python" -m pytest -q -p no:cacheprovider .) || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests" >&2
    exit 1
fi
exit "$status"
