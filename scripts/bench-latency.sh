#!/usr/bin/env bash
# Finality over links with latency and loss (as root): for each link setting below,
# brings up 4 validators in the netns testbed (scripts/netns-testnet.sh), waits until
# they finalize, runs `grapevine bench --rpc` against all four at 2,000 transfers/s for
# 20 s, tears the testbed down, and at the end prints a markdown table with the goals
# of docs/PERFORMANCE.md:
#   p50 finality <= 3 round trips + 150 ms; p99 <= 2 x p50; 1% loss costs <= 20% p50.
#   scripts/bench-latency.sh                 # RTT 0, 50, 100, 200 ms; then 50 ms + 1% loss
#   BENCH_LATENCY_RUNS="50:0 50:1" scripts/bench-latency.sh
# Builds the node and gv-proxy (release) first, unless GRAPEVINE_BIN names a binary to
# use (GV_PROXY_BIN then defaults to the gv-proxy beside it). Each bench's own report
# and its JSON line go to stderr and to DIR/bench-RTT-LOSS.txt.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
GRAPEVINE_BIN_ENV="${GRAPEVINE_BIN:-}"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
GRAPEVINE_BIN="${GRAPEVINE_BIN_ENV:-$GRAPEVINE_BIN}"
export GRAPEVINE_BIN

RUNS="${BENCH_LATENCY_RUNS:-0:0 50:0 100:0 200:0 50:1}" # RTT_MS:LOSS_PCT
RATE="${BENCH_LATENCY_RATE:-2000}"
SECONDS_OF_LOAD="${BENCH_LATENCY_SECONDS:-20}"
OUT="${BENCH_LATENCY_OUT:-/tmp/grapevine-bench-latency}"
NETNS="$REPO_ROOT/scripts/netns-testnet.sh"

die() {
  echo "error: $*" >&2
  exit 1
}

case "${1:-}" in
  -h | --help | help)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    echo "Settings: BENCH_LATENCY_RUNS='$RUNS' BENCH_LATENCY_RATE=$RATE"
    echo "  BENCH_LATENCY_SECONDS=$SECONDS_OF_LOAD BENCH_LATENCY_OUT=$OUT"
    exit 0
    ;;
  "") ;;
  *) die "no arguments (settings are environment variables; see --help)" ;;
esac
[ "$(id -u)" = 0 ] || die "the testbed needs network namespaces: run as root"
if [ -z "$GRAPEVINE_BIN_ENV" ]; then
  ensure_build_deps
  echo "== cargo build --release (node and gv-proxy)" >&2
  build_release --bins >&2
fi
[ -x "$GRAPEVINE_BIN" ] || die "no node binary at $GRAPEVINE_BIN (set GRAPEVINE_BIN)"
command -v jq >/dev/null 2>&1 || apt_install jq || die "jq is missing: apt-get install -y jq"
mkdir -p "$OUT"

# status_heights: the heights of the testbed's nodes, one a line (- when no answer).
status_heights() {
  "$NETNS" status 2>/dev/null | awk '{ print $3 }'
}

# wait_finalizing: until every node answers and the lowest height grew by 2 since the
# first answer (60 s at most).
wait_finalizing() {
  local deadline=$((SECONDS + 60)) first="" low
  while :; do
    low="$(status_heights | awk '$1 == "-" { bad = 1 } { if (min == "" || $1 < min) min = $1 } END { print bad ? "" : min }')"
    if [ -n "$low" ]; then
      [ -n "$first" ] || first="$low"
      [ "$low" -ge $((first + 2)) ] && return 0
    fi
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 1
  done
}

cleanup() {
  "$NETNS" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

declare -a rows=()
declare -A p50_at=()
for run in $RUNS; do
  rtt="${run%%:*}" loss="${run#*:}"
  echo "=== RTT $rtt ms, loss $loss% ===" >&2
  "$NETNS" down >/dev/null 2>&1 || true
  if ! "$NETNS" up 4 --rtt "$rtt" --loss "$loss" --dir "$OUT/testbed" >&2 || ! wait_finalizing; then
    echo "the testbed (RTT $rtt ms, loss $loss%) did not come up or finalize" >&2
    "$NETNS" down >&2 || true
    rows+=("$rtt $loss - - - - no-testbed")
    continue
  fi
  urls="$("$NETNS" status 2>/dev/null | awk '{ print $2 }' | paste -sd,)"
  report="$OUT/bench-$rtt-$loss.txt"
  # The report (stderr) and the JSON line (the last of stdout) apart, so that no log
  # line can pass for the JSON.
  "$GRAPEVINE_BIN" bench --rpc "$urls" --accounts "$OUT/testbed/accounts.json" \
    --rate "$RATE" --duration "$SECONDS_OF_LOAD" --json 2> >(tee "$report" >&2) |
    tee "$report.json" >&2 || true
  json="$(tail -n 1 "$report.json")"
  "$NETNS" down >&2
  if ! jq -e .tps >/dev/null 2>&1 <<<"$json"; then
    echo "bench printed no JSON line (see $report)" >&2
    rows+=("$rtt $loss - - - - bench-failed")
    continue
  fi
  tps="$(jq -r '.tps' <<<"$json")"
  sent="$(jq -r '.sentPerS' <<<"$json")"
  p50="$(jq -r '.latency_ms.p50' <<<"$json")"
  p99="$(jq -r '.latency_ms.p99' <<<"$json")"
  p50_at["$rtt:$loss"]="$p50"
  rows+=("$rtt $loss $sent $tps $p50 $p99 ok")
done

echo
echo "Finality with links of a given round trip and loss between the 4 validators"
echo "(scripts/bench-latency.sh: grapevine bench at $RATE transfers/s for $SECONDS_OF_LOAD s;"
echo "latency from submission to final on the first node):"
echo
echo "| RTT ms | loss % | sent tx/s | finalized tx/s | p50 ms | p99 ms | goal | met |"
echo "|---:|---:|---:|---:|---:|---:|---|---|"
for row in "${rows[@]}"; do
  read -r rtt loss sent tps p50 p99 how <<<"$row"
  if [ "$how" != ok ]; then
    echo "| $rtt | $loss | - | - | - | - | - | $how (see stderr) |"
    continue
  fi
  goal_p50=$((3 * rtt + 150))
  goals="p50 <= $goal_p50, p99 <= $(awk -v p="$p50" 'BEGIN { printf "%.0f", 2 * p }')"
  verdict="$(awk -v p50="$p50" -v p99="$p99" -v g="$goal_p50" 'BEGIN {
    out = ""
    if (p50 > g) out = out sprintf("p50 %+.0f ms over; ", p50 - g)
    if (p99 > 2 * p50) out = out sprintf("p99 %.1fx p50; ", p99 / p50)
    print out }')"
  if [ "$loss" != 0 ] && [ -n "${p50_at[$rtt:0]:-}" ]; then
    base="${p50_at[$rtt:0]}"
    limit="$(awk -v b="$base" 'BEGIN { printf "%.0f", 1.2 * b }')"
    goals="$goals, p50 <= 1.2 x $base = $limit"
    verdict="$verdict$(awk -v p="$p50" -v b="$base" 'BEGIN {
      if (p > 1.2 * b) printf "loss costs %+.0f%% p50; ", 100 * (p / b - 1) }')"
  fi
  if [ -z "$verdict" ]; then verdict=met; else verdict="not met: ${verdict%; }"; fi
  echo "| $rtt | $loss | $sent | $tps | $p50 | $p99 | $goals | $verdict |"
done
