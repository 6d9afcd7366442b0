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

# ---- processes (scripts/testnet.sh, scripts/netns-testnet.sh) -----------------------

is_uint() {
  [[ "$1" =~ ^[0-9]+$ ]]
}

# proc_state PID: the one-letter state of /proc/PID/stat (R, S, T for stopped, Z, ...).
proc_state() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  stat="${stat##*) }"
  printf '%s\n' "${stat%% *}"
}

# process_alive PID PATTERN: the process exists, is no zombie and (where /proc tells)
# its command line holds PATTERN, so a recycled pid is not taken for ours. An empty
# PATTERN asks only whether the process exists.
process_alive() {
  local pid="$1" pattern="$2"
  is_uint "$pid" || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/stat" ]; then
    [ "$(proc_state "$pid")" != Z ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern" || return 1
  fi
  return 0
}

# ---- Docker (scripts/docker-test.sh, docs/OPERATIONS.md "Containers") -------------

GRAPEVINE_BASE_IMAGE="${GRAPEVINE_BASE_IMAGE:-grapevine-base:bookworm}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
DOCKER_SKIP_REASON=""
DOCKER_COMPOSE=()

# apt_install PKG...: install Debian packages as root; 1 when not root, no apt-get, or
# the install fails.
apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  echo "installing $* (apt-get)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >&2
}

# start_dockerd [ARGS]: start dockerd in its own session (so a `timeout` around the
# caller does not take it down), wait up to 30 s for it to answer. 1 if it does not.
start_dockerd() {
  echo "starting dockerd${*:+ $*} (log: $DOCKERD_LOG)" >&2
  setsid dockerd "$@" >>"$DOCKERD_LOG" 2>&1 </dev/null &
  local pid=$! i
  for i in $(seq 60); do
    docker info >/dev/null 2>&1 && { echo "dockerd is up (pid $pid)" >&2; return 0; }
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.5
  done
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 1
}

# ensure_docker: a Docker daemon this shell can use, and compose (DOCKER_COMPOSE:
# docker-compose v1, else `docker compose` v2) and jq. As root with apt-get it installs
# Debian's docker.io, docker-compose and jq when missing and starts dockerd when no
# daemon answers (overlay2, else the vfs storage driver); the daemon is left running.
# Never exits: returns 1 with the reason in DOCKER_SKIP_REASON when Docker cannot run.
ensure_docker() {
  DOCKER_SKIP_REASON=""
  if ! docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null 2>&1 && ! apt_install docker.io; then
      if [ "$(id -u)" != 0 ]; then
        DOCKER_SKIP_REASON="no Docker daemon answers and installing docker.io needs root"
      else
        DOCKER_SKIP_REASON="no Docker daemon answers and docker.io could not be installed"
      fi
      return 1
    fi
    if ! docker info >/dev/null 2>&1; then
      if [ "$(id -u)" != 0 ]; then
        DOCKER_SKIP_REASON="no Docker daemon answers (starting dockerd needs root)"
        return 1
      fi
      if ! start_dockerd && ! start_dockerd --storage-driver vfs; then
        DOCKER_SKIP_REASON="dockerd does not start here: $(grep -iE 'level=(error|fatal)|failed' "$DOCKERD_LOG" | tail -n 1 | cut -c1-300)"
        return 1
      fi
    fi
  fi
  if docker-compose version >/dev/null 2>&1; then
    DOCKER_COMPOSE=(docker-compose)
  elif docker compose version >/dev/null 2>&1; then
    DOCKER_COMPOSE=(docker compose)
  elif apt_install docker-compose && docker-compose version >/dev/null 2>&1; then
    DOCKER_COMPOSE=(docker-compose)
  else
    DOCKER_SKIP_REASON="neither docker-compose nor \`docker compose\` is installed (apt-get install docker-compose, as root)"
    return 1
  fi
  if ! command -v jq >/dev/null 2>&1 && ! apt_install jq; then
    DOCKER_SKIP_REASON="jq is missing (apt-get install jq, as root)"
    return 1
  fi
  return 0
}

# ensure_base_image: GRAPEVINE_BASE_IMAGE (grapevine-base:bookworm), a Debian bookworm
# image made without a registry: debootstrap (minbase) into a folder, then docker import.
# Built only when absent (about 30 s with a fast mirror; DEBIAN_MIRROR picks the mirror).
# Then checks that a container starts. Returns 1 with DOCKER_SKIP_REASON if it cannot.
ensure_base_image() {
  if ! docker image inspect "$GRAPEVINE_BASE_IMAGE" >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
      DOCKER_SKIP_REASON="image $GRAPEVINE_BASE_IMAGE is missing and debootstrap needs root"
      return 1
    fi
    if ! command -v debootstrap >/dev/null 2>&1 && ! apt_install debootstrap; then
      DOCKER_SKIP_REASON="image $GRAPEVINE_BASE_IMAGE is missing and debootstrap could not be installed"
      return 1
    fi
    local rootfs log start rc=0
    rootfs="$(mktemp -d /var/tmp/grapevine-base.XXXXXX)"
    log="$rootfs.log"
    start=$(date +%s)
    echo "building $GRAPEVINE_BASE_IMAGE: debootstrap bookworm (log: $log)" >&2
    timeout 900 debootstrap --variant=minbase bookworm "$rootfs" \
      "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$log" 2>&1 || rc=$?
    if [ "$rc" = 0 ]; then
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
      tar --numeric-owner -C "$rootfs" -c . |
        docker import -c 'CMD ["bash"]' - "$GRAPEVINE_BASE_IMAGE" >/dev/null || rc=$?
    fi
    rm -rf "$rootfs"
    if [ "$rc" != 0 ]; then
      DOCKER_SKIP_REASON="could not build $GRAPEVINE_BASE_IMAGE with debootstrap (exit $rc; see $log)"
      return 1
    fi
    rm -f "$log"
    echo "built $GRAPEVINE_BASE_IMAGE in $(( $(date +%s) - start ))s" >&2
  fi
  local out
  if ! out="$(timeout 60 docker run --rm --network none "$GRAPEVINE_BASE_IMAGE" true 2>&1)"; then
    DOCKER_SKIP_REASON="containers do not start here: $(tail -n 1 <<<"$out" | cut -c1-300)"
    return 1
  fi
  return 0
}
