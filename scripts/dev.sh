#!/usr/bin/env bash
# Builds the node in release mode and runs a single-validator dev chain with funded
# accounts. The chain lives in ./.dev (gitignored) and persists across runs; remove the
# directory for a fresh chain. Extra arguments go to `grapevine dev` (see --help), e.g.
#   scripts/dev.sh --rpc-addr 127.0.0.1:8545 --accounts 20
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
ensure_build_deps
build_release
exec "$GRAPEVINE_BIN" dev --home "$REPO_ROOT/.dev" "$@"
