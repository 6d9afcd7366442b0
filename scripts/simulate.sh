#!/usr/bin/env bash
# Runs the seeded consensus simulator over SEEDS seeds (default 1000) and reports the
# rate. A failing seed prints itself; replay it with GRAPEVINE_SIM_SEED=N.
#   scripts/simulate.sh 5000
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
ensure_build_deps
seeds="${1:-1000}"
GRAPEVINE_SIM_SEEDS="$seeds" cargo test --release --locked -p grapevine-consensus --lib \
  sim::simulate -- --nocapture 2>&1 | grep -E "simulated|panicked|seed|test result"
