#!/usr/bin/env bash
# Builds the node in release mode and runs it.
#
# The single-node dev chain (`grapevine dev`) arrives with the dev-node issue; until
# then this builds the binary and shows what it can do.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
ensure_build_deps
build_release
echo "built $GRAPEVINE_BIN"
echo "note: 'grapevine dev' (a single-node chain with funded accounts) is not implemented yet;"
echo "      here is what the binary does today:"
echo
exec "$GRAPEVINE_BIN" --help
