#!/usr/bin/env bash
# Runs the chaos test for a long time: 4 validators under a steady load of transfers
# while validators are killed and restarted, paused and resumed, and the network is
# partitioned and healed at random (tests/tests/chaos.rs). At the end every transfer
# any node reported final must be final everywhere, heads and state roots must agree,
# and total supply must be unchanged. Prints the seed and a summary.
#   scripts/chaos.sh 600            # 10 minutes of faults
#   GRAPEVINE_CHAOS_SEED=N scripts/chaos.sh 600   # replay a run's fault schedule
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

duration="${1:-300}"
case "$duration" in
  ''|*[!0-9]*) echo "usage: scripts/chaos.sh DURATION_SECONDS" >&2; exit 2 ;;
esac
ensure_build_deps ""
build_release --all-targets
export GRAPEVINE_CHAOS_SECS="$duration"
# Bounded: the faults, then at most a few minutes to converge.
timeout "$((duration + 600))" cargo test --release --locked -p grapevine-tests --test chaos -- --nocapture
