#!/bin/sh
# Churn soak (not part of CI): 8 `averager node` processes for 3 minutes, one killed with SIGKILL
# every 5 s and restarted with --load-state; asserts no hang, no NaN or out-of-range value, state
# loads and rounds that keep completing, and reports the figures (see cli-tests/soak.rs).
#
#   bench/soak.sh                                  # 8 nodes, 180 s, a kill every 5 s
#   SOAK_PEERS=6 SOAK_SECONDS=600 SOAK_KILL_EVERY=3 bench/soak.sh
#
# Extra arguments go to cargo (e.g. --release).
set -eu
cd "$(dirname "$0")/.."
exec cargo test "$@" --test soak -- --ignored --nocapture long_soak
