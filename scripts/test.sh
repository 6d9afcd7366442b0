#!/usr/bin/env bash
# The whole test suite: format check, clippy with warnings as errors, every test.
# Everything runs in the release profile so RocksDB's C++ is compiled once and shared
# by the build, clippy and the tests (a dev-profile command would compile it again).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
ensure_build_deps lint
ensure_browser

start=$(date +%s)
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo build --release (target dir: $CARGO_TARGET_DIR)"
build_release --all-targets
echo "== cargo clippy --release -D warnings"
cargo clippy --release --locked --workspace --all-targets -- -D warnings
echo "== cargo test --release"
# Every test bounds itself; this bounds the whole run too, so a hang fails fast
# instead of eating CI's 90 minutes.
timeout 2400 cargo test --release --locked --workspace
# tests/tests/netns.rs passes without running where it cannot make namespaces; say so.
if [ "$(id -u)" = 0 ] && ip netns add "gv-probe-$$" 2>/dev/null; then
  ip netns del "gv-probe-$$"
  echo "== netns testbed test (tests/tests/netns.rs): ran, as root"
else
  echo "== netns testbed test (tests/tests/netns.rs): SKIPPED (needs root and iproute2's ip netns)"
fi
# The container image and compose network (scripts/docker-test.sh), where Docker can run.
# As root this installs docker.io and starts dockerd, which sets iptables' FORWARD
# policy to DROP (docs/OPERATIONS.md, "Containers").
echo "== docker test: needs Docker (as root, installs docker.io and starts dockerd when missing)"
if ensure_docker && ensure_base_image; then
  echo "== docker test (scripts/docker-test.sh)"
  timeout -k 60 900 scripts/docker-test.sh
else
  echo "== docker test: SKIPPED ($DOCKER_SKIP_REASON)"
fi
echo "== all checks passed in $(( $(date +%s) - start ))s"
