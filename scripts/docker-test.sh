#!/usr/bin/env bash
# The container test (issue 28): the image and deploy/compose.yaml, end to end.
#
#   scripts/docker-test.sh      # after a release build (scripts/test.sh runs it last)
#
# 1. Docker: as root, installs docker.io, docker-compose, debootstrap and jq when
#    missing and starts dockerd (left running); builds the base image
#    grapevine-base:bookworm with debootstrap when absent (no registry needed).
#    If Docker cannot run here it prints `== docker test: SKIPPED (reason)`, exits 0.
# 2. Builds the Dockerfile's `prebuilt` target from the suite's binary ($GRAPEVINE_BIN,
#    debug info stripped) on that base image; never compiles, never pulls.
# 3. Writes homes with `grapevine testnet --hosts validator0,..,validator3,full0`,
#    starts deploy/compose.yaml (own project name, RPC on free loopback ports), waits
#    until every container's health check passes.
# 4. Sends a transfer to each node (--wait); checks every node has every balance and
#    the same block hash at a common height.
# 5. Stops validator2, sends transfers while it is down, starts it again: it must catch
#    up (height, block hash and balances agree) and be healthy.
# 6. Tears everything down (compose down -v, the image, the temporary directory), also
#    on failure or interruption, after printing the nodes' logs when something failed.
#
# Settings: GRAPEVINE_BIN (default: the release build), DOCKER_TEST_RPC_PORT (first
# host port to try for the nodes' RPC, default 18645), DOCKER_TEST_KEEP=1 (leave the
# network up and the directory in place for a look; then tear down by hand with the
# printed command).
set -euo pipefail
bin_from_env="${GRAPEVINE_BIN:-}"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
GRAPEVINE_BIN="${bin_from_env:-$GRAPEVINE_BIN}"
cd "$REPO_ROOT"

NAMES=(validator0 validator1 validator2 validator3 full0)
RESTARTED=validator2
START=$(date +%s)
step() { echo "== docker test [$(( $(date +%s) - START ))s] $*"; }
fail() { echo "== docker test FAILED: $*" >&2; exit 1; }

step "checking Docker"
if ! ensure_docker || ! ensure_base_image; then
  echo "== docker test: SKIPPED ($DOCKER_SKIP_REASON)"
  exit 0
fi
echo "   docker: $(docker version --format 'client {{.Client.Version}}, daemon {{.Server.Version}}' 2>/dev/null)," \
  "storage driver $(docker info --format '{{.Driver}}' 2>/dev/null), compose: ${DOCKER_COMPOSE[*]}"

[ -x "$GRAPEVINE_BIN" ] || fail "no node binary at $GRAPEVINE_BIN (build it first: scripts/test.sh, or cargo build --release)"
"$GRAPEVINE_BIN" testnet --help | grep -q -- '--hosts' || fail "$GRAPEVINE_BIN has no \`testnet --hosts\`"
"$GRAPEVINE_BIN" health --help >/dev/null 2>&1 || fail "$GRAPEVINE_BIN has no \`health\` command (the image's HEALTHCHECK)"

TMP="$(mktemp -d /tmp/grapevine-docker-test.XXXXXX)"
NET="$TMP/net"
PROJECT="gvtest$$"
IMAGE="grapevine:docker-test-$$"
export GRAPEVINE_TESTNET_DIR="$NET" GRAPEVINE_IMAGE="$IMAGE"
compose() { timeout 180 "${DOCKER_COMPOSE[@]}" -p "$PROJECT" -f "$REPO_ROOT/deploy/compose.yaml" "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ "$rc" != 0 ] && [ -d "$NET" ]; then
    echo "== docker test: the nodes' state and last log lines" >&2
    compose ps >&2
    for n in "${NAMES[@]}"; do
      echo "--- $n" >&2
      compose logs --no-color --tail 25 "$n" 2>&1 | tail -n 25 >&2
    done
  fi
  if [ -n "${DOCKER_TEST_KEEP:-}" ]; then
    echo "== docker test: kept (DOCKER_TEST_KEEP). Tear down with:"
    echo "   GRAPEVINE_TESTNET_DIR=$NET ${DOCKER_COMPOSE[*]} -p $PROJECT -f deploy/compose.yaml down -v; docker image rm $IMAGE; rm -rf $TMP"
  else
    step "tearing down"
    [ -d "$NET" ] && compose down -v --remove-orphans -t 20 >/dev/null 2>&1
    docker image rm "$IMAGE" >/dev/null 2>&1
    rm -rf "$TMP"
  fi
  if [ "$rc" = 0 ]; then
    echo "== docker test passed in $(( $(date +%s) - START ))s"
  else
    echo "== docker test FAILED after $(( $(date +%s) - START ))s" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "building image $IMAGE (Dockerfile target prebuilt on $GRAPEVINE_BASE_IMAGE)"
mkdir "$TMP/context"
cp Dockerfile "$TMP/context/"
# Without the debug info (mostly RocksDB's line tables) the binary is 20 MB, not 470.
objcopy --strip-debug "$GRAPEVINE_BIN" "$TMP/context/grapevine" 2>/dev/null ||
  cp "$GRAPEVINE_BIN" "$TMP/context/grapevine"
timeout 300 docker build --target prebuilt --build-arg RUNTIME_IMAGE="$GRAPEVINE_BASE_IMAGE" \
  -t "$IMAGE" "$TMP/context" >"$TMP/build.log" 2>&1 || { cat "$TMP/build.log" >&2; fail "docker build"; }
[ "$(docker image inspect -f '{{.Config.User}}' "$IMAGE")" = 10001:10001 ] || fail "the image does not run as 10001"

# Free loopback ports for the nodes' RPC.
port="${DOCKER_TEST_RPC_PORT:-18645}"
declare -A RPC
for n in "${NAMES[@]}"; do
  while ss -Htln "sport = :$port" | grep -q .; do port=$((port + 1)); done
  RPC[$n]="http://127.0.0.1:$port"
  export "GRAPEVINE_RPC_PORT_${n^^}=$port"
  port=$((port + 1))
done

step "writing homes: grapevine testnet --hosts $(IFS=,; echo "${NAMES[*]}")"
"$GRAPEVINE_BIN" testnet --hosts "$(IFS=,; echo "${NAMES[*]}")" --full-nodes 1 --out "$NET" >/dev/null
# The image's user (uid 10001) writes the homes; without root, run as ourselves.
if [ "$(id -u)" = 0 ]; then
  for n in "${NAMES[@]}"; do chown -R 10001:10001 "$NET/$n"; done
else
  export GRAPEVINE_USER="$(id -u):$(id -g)"
fi

step "starting the network (compose project $PROJECT)"
compose up -d >/dev/null 2>&1 || { compose up -d; fail "compose up"; }
for n in "${NAMES[@]}"; do echo "   $n: RPC ${RPC[$n]}"; done

# container NAME: the container id of a service.
container() { compose ps -q "$1"; }
# health NAME: the docker health status of a service's container.
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$(container "$1")" 2>/dev/null; }
height() { "$GRAPEVINE_BIN" status --rpc "${RPC[$1]}" 2>/dev/null | jq -r '.height // empty' 2>/dev/null; }
block_hash() { "$GRAPEVINE_BIN" block --rpc "${RPC[$1]}" "$2" 2>/dev/null | jq -r '.hash // empty' 2>/dev/null; }
balance() { "$GRAPEVINE_BIN" balance --rpc "${RPC[$1]}" "$2" 2>/dev/null; }

# wait_healthy SECONDS NAME...: until docker reports each container healthy.
wait_healthy() {
  local deadline=$(( $(date +%s) + $1 )) n all
  shift
  while :; do
    all=1
    for n in "$@"; do [ "$(health "$n")" = healthy ] || all=""; done
    [ -n "$all" ] && return 0
    [ "$(date +%s)" -lt "$deadline" ] || {
      for n in "$@"; do echo "   $n: $(health "$n")" >&2; done
      return 1
    }
    sleep 1
  done
}

# check_same_chain: every node has the same block at the lowest of their heights.
check_same_chain() {
  local min="" n h hash first=""
  for n in "${NAMES[@]}"; do
    h="$(height "$n")"
    [ -n "$h" ] || fail "$n does not answer getStatus"
    if [ -z "$min" ] || [ "$h" -lt "$min" ]; then min="$h"; fi
  done
  for n in "${NAMES[@]}"; do
    hash="$(block_hash "$n" "$min")"
    [ -n "$hash" ] || fail "$n has no block $min"
    [ -z "$first" ] && first="$hash"
    [ "$hash" = "$first" ] || fail "$n's block $min is $hash, validator0's is $first"
  done
  echo "   every node has block $min = $first"
}

# check_balances ADDR=AMOUNT...: every node reports each balance.
check_balances() {
  local n pair got
  for n in "${NAMES[@]}"; do
    for pair in "$@"; do
      got="$(balance "$n" "${pair%%=*}")"
      [ "$got" = "${pair#*=}" ] || fail "$n: balance of ${pair%%=*} is '$got', expected ${pair#*=}"
    done
  done
}

# transfer NAME ACCOUNT AMOUNT: a new key, ACCOUNT's key sends it AMOUNT through
# node NAME and waits for finality; prints "ADDR=AMOUNT".
transfer() {
  local to
  to="$("$GRAPEVINE_BIN" keygen --out "$TMP/to-$1-$2.json" 2>/dev/null | grep -o 'gv[0-9a-f]*' | head -n 1)"
  [ -n "$to" ] || fail "keygen printed no address"
  local out="$TMP/transfer-$1-$2.txt"
  "$GRAPEVINE_BIN" transfer --rpc "${RPC[$1]}" --key "$NET/keys/account-$2.json" \
    --to "$to" --amount "$3" --wait --timeout 60 >"$out" 2>&1 ||
    { cat "$out" >&2; fail "transfer through $1 did not become final"; }
  # It prints the transaction's hash, then the receipt (JSON).
  sed -n '/^{/,$p' "$out" | jq -e '.receipt.status == "success"' >/dev/null ||
    { cat "$out" >&2; fail "transfer through $1 failed"; }
  echo "   $1: account-$2 -> $to: $3, final at height $(sed -n '/^{/,$p' "$out" | jq -r .height)" >&2
  echo "$to=$3"
}

step "waiting until every container is healthy (docker HEALTHCHECK: grapevine health)"
wait_healthy 150 "${NAMES[@]}" || fail "not every node became healthy within 150 s"

step "a transfer through each node"
sent=()
i=0
for n in "${NAMES[@]}"; do
  t="$(transfer "$n" "$i" $((1000 + i)))" || exit 1
  sent+=("$t")
  i=$((i + 1))
done
check_balances "${sent[@]}"
echo "   every node has all ${#sent[@]} balances"
check_same_chain

step "stopping $RESTARTED, sending transfers while it is down"
stopped_at="$(height "$RESTARTED")"
compose stop -t 30 "$RESTARTED" >/dev/null 2>&1 || fail "compose stop $RESTARTED"
t1="$(transfer validator0 5 2000)" || exit 1
t2="$(transfer full0 6 2001)" || exit 1
down=("$t1" "$t2")
# The chain must move on without it, well past where it stopped.
target=$((stopped_at + 20))
deadline=$(( $(date +%s) + 90 ))
until h="$(height validator0)" && [ -n "$h" ] && [ "$h" -ge "$target" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "the chain did not reach height $target without $RESTARTED (at ${h:-?})"
  sleep 1
done
echo "   $RESTARTED stopped at height $stopped_at; the others are at $h"

step "starting $RESTARTED again; it must catch up"
compose start "$RESTARTED" >/dev/null 2>&1 || fail "compose start $RESTARTED"
deadline=$(( $(date +%s) + 120 ))
until r="$(height "$RESTARTED")" && [ -n "$r" ] && [ "$r" -ge "$h" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "$RESTARTED did not catch up to height $h within 120 s (at ${r:-?})"
  sleep 1
done
echo "   $RESTARTED is at height $r (the others were at $h when it started)"
[ "$(block_hash "$RESTARTED" "$h")" = "$(block_hash validator0 "$h")" ] || fail "$RESTARTED's block $h differs from validator0's"
wait_healthy 90 "$RESTARTED" || fail "$RESTARTED did not become healthy again"
check_balances "${sent[@]}" "${down[@]}"
echo "   every node, $RESTARTED included, has all $(( ${#sent[@]} + ${#down[@]} )) balances"
step "a transfer through $RESTARTED after its restart"
after="$(transfer "$RESTARTED" 7 3000)" || exit 1
check_balances "$after"
check_same_chain
