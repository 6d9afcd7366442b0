# Shared by the scripts in this directory: sourced, not run.
#
# - Puts cargo's build output in one persistent directory outside the clone
#   (~/.cache/grapevine/target unless CARGO_TARGET_DIR is set), so a new clone or a CI
#   run on a machine that built before does not compile RocksDB's C++ again (~21 min).
# - Installs what Rust does not bring (libclang for RocksDB's bindgen, a C++ compiler)
#   when missing and running as root; otherwise prints the exact command and fails.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/grapevine/target}"
mkdir -p "$CARGO_TARGET_DIR"
GRAPEVINE_BIN="$CARGO_TARGET_DIR/release/grapevine"

have_libclang() {
  [ -n "${LIBCLANG_PATH:-}" ] && return 0
  compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null && return 0
  compgen -G '/usr/lib/*/libclang.so' >/dev/null && return 0
  compgen -G '/usr/lib/*/libclang-*.so' >/dev/null && return 0
  return 1
}

# ensure_build_deps: libclang (bindgen) and a C++ compiler (RocksDB), plus rustfmt and
# clippy when $1 is "lint".
ensure_build_deps() {
  local missing=()
  have_libclang || missing+=(libclang-dev)
  command -v c++ >/dev/null 2>&1 || missing+=(g++)
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing ${missing[*]} (needed to build RocksDB)" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    else
      echo "error: building RocksDB needs: ${missing[*]}. Run:" >&2
      echo "  sudo apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
  fi
  if [ "${1:-}" = lint ]; then
    for c in rustfmt clippy; do
      if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
          rustup component add "$c" >&2
        else
          echo "error: cargo $c is missing; install the $c component of your Rust toolchain" >&2
          exit 1
        fi
      fi
    done
  fi
}

# ensure_browser: Chromium for the explorer's browser test. Installed when missing and
# possible (root with apt-get); otherwise the test says it was skipped.
ensure_browser() {
  command -v chromium >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (for the explorer's browser test)" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2; }; then
      echo "warning: could not install chromium; the explorer browser test will be skipped" >&2
    fi
  else
    echo "note: chromium is missing; the explorer browser test will be skipped. To run it:" >&2
    echo "  sudo apt-get install -y chromium" >&2
  fi
}

# build_release: the one build every script uses (release profile, locked deps).
build_release() {
  (cd "$REPO_ROOT" && cargo build --release --locked --workspace "$@")
}
