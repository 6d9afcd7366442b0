#!/usr/bin/env bash
# Runs a local multi-node network on this machine: builds the node in release mode,
# writes the homes with `grapevine testnet` (first start only), runs every node in the
# background and waits until the chain finalizes. State, logs and pids live in
# ./testnet (gitignored; TESTNET_DIR moves it); `clean` removes it for a fresh chain.
#   scripts/testnet.sh start 4        # 4 validators; then: status, logs validator0, stop
#   TESTNET_FULL_NODES=2 scripts/testnet.sh start
#   TESTNET_FAULT_PROXY=1 scripts/testnet.sh start   # then: partition A,B C,D; heal
# Run without arguments for every command and setting. Needs curl.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

TESTNET_DIR="${TESTNET_DIR:-$REPO_ROOT/testnet}"
TESTNET_BASE_PORT="${TESTNET_BASE_PORT:-27000}"
TESTNET_FULL_NODES="${TESTNET_FULL_NODES:-0}"
TESTNET_WAIT="${TESTNET_WAIT:-60}"
TESTNET_STOP_WAIT="${TESTNET_STOP_WAIT:-15}"
TESTNET_FAULT_PROXY="${TESTNET_FAULT_PROXY:-}"
NODES_TSV="$TESTNET_DIR/nodes.tsv"
PIDS_DIR="$TESTNET_DIR/pids"
LOGS_DIR="$TESTNET_DIR/logs"
# With a fault proxy (grapevine testnet --fault-proxy): its routes and its control file.
PROXIES_TSV="$TESTNET_DIR/proxies.tsv"
FAULTS_TXT="$TESTNET_DIR/faults.txt"
PROXY_BIN="$(dirname "$GRAPEVINE_BIN")/gv-proxy"
PROXY_READY_WAIT=10

usage() {
  cat <<EOF
Usage: scripts/testnet.sh COMMAND [ARGS]

Commands:
  start [N]          Build, write a testnet of N validators (default 4) unless one exists,
                     start every node in the background, wait until blocks finalize
  stop               SIGTERM every node, SIGKILL what is left after ${TESTNET_STOP_WAIT} s;
                     then the fault proxy, if any
  status             Per node: pid and state, height, peer count; the fault proxy's state
                     and how many of its routes are blocked
  logs NAME [ARGS]   Follow a node's log (tail -n 100 -f; ARGS replace those tail options);
                     NAME gv-proxy: the fault proxy's log
  kill NAME          SIGKILL one node (status then shows it dead)
  restart NAME       Stop one node if running, start it again, wait until it catches up
  pause NAME         SIGSTOP one node (it stops answering and voting)
  resume NAME        SIGCONT a paused node
  partition GROUP GROUP...
                     Cut the network into groups (GROUP: comma-separated node names, e.g.
                     partition validator0,validator1 validator2,validator3): blocks every
                     route between nodes of different groups. A node named in no group is
                     cut off from everyone (all its routes, both ways, are blocked).
                     Replaces the previous partition. Needs a testnet with a fault proxy
                     (TESTNET_FAULT_PROXY=1 when it was generated)
  heal               Unblock every route (nodes redial on their own; after a long cut
                     their dial backoff can take ~30 s)
  clean              stop, then remove the testnet directory
  help               This text

Node names are validator0.., full0.. (see status). Settings (environment), with their
current values:
  TESTNET_DIR=$TESTNET_DIR
      the testnet's directory
  TESTNET_BASE_PORT=$TESTNET_BASE_PORT
      first port of a new testnet: node i uses base+2i (RPC) and base+2i+1 (p2p); with
      TESTNET_FAULT_PROXY=1 the proxy's routes take the ports after the nodes'
  TESTNET_FULL_NODES=$TESTNET_FULL_NODES
      non-validating full nodes of a new testnet
  TESTNET_ACCOUNTS=${TESTNET_ACCOUNTS:-}
      funded accounts of a new testnet (empty: grapevine's default, 10)
  TESTNET_WAIT=$TESTNET_WAIT
      seconds start and restart wait for the chain
  TESTNET_FAULT_PROXY=$TESTNET_FAULT_PROXY
      1: a new testnet routes every link between nodes through a fault proxy (gv-proxy),
      so partition and heal can cut and restore links. A property of the generated
      testnet: one with proxies.tsv always runs its proxy; clean for a new one
  TESTNET_SKIP_BUILD=${TESTNET_SKIP_BUILD:-}
      1: use the binaries as built (grapevine, gv-proxy in $(dirname "$GRAPEVINE_BIN")),
      do not run cargo
  GRAPEVINE_LOG=${GRAPEVINE_LOG:-}
      passed through to the nodes (their log filter)

Files in the testnet directory: nodes.tsv (written by grapevine testnet), nodes.json
(name, rpc, p2p, home, pid of each node), logs/NAME.log, pids/NAME, accounts.json, keys/.
With a fault proxy: proxies.tsv (its routes: FROM>TO, listen and target address; node
FROM reaches validator TO only through that route, and peer exchange is off), faults.txt
(the blocked routes, one name a line; gv-proxy re-reads it every 100 ms),
logs/gv-proxy.log, pids/gv-proxy. The proxy is no node: not in nodes.json.
EOF
}

die() {
  echo "error: $*" >&2
  exit 1
}

need_curl() {
  command -v curl >/dev/null 2>&1 && return 0
  echo "error: this command talks to the nodes' RPC with curl, which is missing. Run:" >&2
  echo "  sudo apt-get install -y curl" >&2
  exit 1
}

need_testnet() {
  [ -f "$NODES_TSV" ] || die "no testnet in $TESTNET_DIR (run: scripts/testnet.sh start)"
}

# ---- nodes.tsv: name, rpc host:port, p2p host:port, home --------------------------

node_names() {
  cut -f1 "$NODES_TSV"
}

# node_field NAME COLUMN (2 rpc, 3 p2p, 4 home); fails on an unknown name.
node_field() {
  local v
  v="$(awk -F'\t' -v n="$1" -v c="$2" '$1 == n { print $c; found = 1 } END { exit !found }' "$NODES_TSV")" ||
    die "no node named '$1' in $TESTNET_DIR; nodes: $(node_names | tr '\n' ' ')"
  printf '%s\n' "$v"
}

# ---- pids ---------------------------------------------------------------------------

pid_of() {
  local f="$PIDS_DIR/$1"
  [ -f "$f" ] && cat "$f"
  return 0
}

# alive PID HOME: the node of HOME runs as PID (lib.sh's process_alive).
alive() {
  process_alive "$1" "--home $2 "
}

node_alive() {
  alive "$(pid_of "$1")" "$(node_field "$1" 4)"
}

# ---- nodes.json ---------------------------------------------------------------------

json_str() {
  local s="$1"
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  printf '"%s"' "$s"
}

write_nodes_json() {
  local tmp="$TESTNET_DIR/nodes.json.tmp" name rpc p2p home pid sep=""
  {
    printf '['
    while IFS=$'\t' read -r name rpc p2p home; do
      [ -n "$name" ] || continue
      pid="$(pid_of "$name")"
      is_uint "$pid" || pid=null
      printf '%s\n  {"name": %s, "rpc": %s, "p2p": %s, "home": %s, "pid": %s}' "$sep" \
        "$(json_str "$name")" "$(json_str "http://$rpc")" "$(json_str "$p2p")" \
        "$(json_str "$home")" "$pid"
      sep=","
    done <"$NODES_TSV"
    printf '\n]\n'
  } >"$tmp"
  mv "$tmp" "$TESTNET_DIR/nodes.json"
}

# ---- RPC ----------------------------------------------------------------------------

# get_status RPC (host:port): the getStatus response, empty if the node does not answer.
get_status() {
  curl -sS -m 2 -X POST -H 'content-type: application/json' \
    -d '{"jsonrpc":"2.0","id":1,"method":"getStatus","params":[]}' "http://$1/" 2>/dev/null || true
}

json_height() {
  sed -n 's/.*"height"[[:space:]]*:[[:space:]]*"\{0,1\}\([0-9][0-9]*\).*/\1/p' <<<"$1"
}

json_peers() {
  sed -n 's/.*"peerCount"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p' <<<"$1"
}

json_syncing() {
  sed -n 's/.*"syncing"[[:space:]]*:[[:space:]]*\(true\|false\).*/\1/p' <<<"$1"
}

# height_of RPC: the node's final height, empty if it does not answer.
height_of() {
  json_height "$(get_status "$1")"
}

# ---- starting and stopping ------------------------------------------------------------

# start_node NAME: runs the node in the background, in its own session so that a
# Ctrl-C in this terminal does not reach it, and records its pid.
start_node() {
  local name="$1" home pid
  home="$(node_field "$name" 4)"
  mkdir -p "$LOGS_DIR" "$PIDS_DIR"
  {
    echo
    echo "=== $(date '+%F %T') scripts/testnet.sh: starting $name ==="
  } >>"$LOGS_DIR/$name.log"
  if command -v setsid >/dev/null 2>&1; then
    # setsid execs the node (this background child is no group leader), so $! is its pid.
    nohup setsid "$GRAPEVINE_BIN" run --home "$home" </dev/null >>"$LOGS_DIR/$name.log" 2>&1 &
  else
    nohup "$GRAPEVINE_BIN" run --home "$home" </dev/null >>"$LOGS_DIR/$name.log" 2>&1 &
  fi
  pid=$!
  echo "$pid" >"$PIDS_DIR/$name"
}

# stop_nodes TIMEOUT NAME...: SIGTERM the live ones among NAME..., wait up to TIMEOUT
# seconds, SIGKILL the rest; prints one line per node.
stop_nodes() {
  local timeout="$1" name pid home deadline left
  shift
  local -a names=() pids=() homes=()
  for name in "$@"; do
    pid="$(pid_of "$name")"
    home="$(node_field "$name" 4)"
    if alive "$pid" "$home"; then
      kill -TERM "$pid" 2>/dev/null || true
      kill -CONT "$pid" 2>/dev/null || true # a paused node handles SIGTERM only once resumed
      names+=("$name")
      pids+=("$pid")
      homes+=("$home")
    else
      echo "  $name: not running"
      rm -f "$PIDS_DIR/$name"
    fi
  done
  [ "${#names[@]}" -gt 0 ] || return 0
  deadline=$((SECONDS + timeout))
  while :; do
    left=0
    for i in "${!names[@]}"; do
      alive "${pids[$i]}" "${homes[$i]}" && left=$((left + 1))
    done
    [ "$left" -eq 0 ] && break
    [ "$SECONDS" -ge "$deadline" ] && break
    sleep 0.2
  done
  for i in "${!names[@]}"; do
    if alive "${pids[$i]}" "${homes[$i]}"; then
      kill -KILL "${pids[$i]}" 2>/dev/null || true
      echo "  ${names[$i]}: still running after ${timeout} s, killed (pid ${pids[$i]})"
    else
      echo "  ${names[$i]}: stopped (pid ${pids[$i]})"
    fi
    rm -f "$PIDS_DIR/${names[$i]}"
  done
}

print_log_tail() {
  local name="$1" lines="${2:-20}"
  echo "--- last $lines lines of $LOGS_DIR/$name.log ---" >&2
  tail -n "$lines" "$LOGS_DIR/$name.log" >&2 2>/dev/null || echo "(no log)" >&2
}

# ---- the fault proxy (gv-proxy) --------------------------------------------------------

has_proxies() {
  [ -f "$PROXIES_TSV" ]
}

need_proxies() {
  need_testnet
  has_proxies || die "this testnet was generated without --fault-proxy; run:" \
    "scripts/testnet.sh clean && TESTNET_FAULT_PROXY=1 scripts/testnet.sh start"
}

# abs_path PATH: PATH with its directory made absolute (the directory must exist).
abs_path() {
  local d
  d="$(cd "$(dirname "$1")" && pwd -P)" || return 1
  printf '%s/%s\n' "$d" "$(basename "$1")"
}

# proxy_alive PID: the gv-proxy of this testnet's proxies.tsv runs as PID.
proxy_alive() {
  local routes
  routes="$(abs_path "$PROXIES_TSV")" || return 1
  process_alive "$1" "gv-proxy $routes "
}

# route_count: how many routes proxies.tsv holds (0 without the file).
route_count() {
  if [ -f "$PROXIES_TSV" ]; then
    awk 'NF { n++ } END { print n + 0 }' "$PROXIES_TSV"
  else
    echo 0
  fi
}

# blocked_count: how many routes faults.txt blocks (0 without the file).
blocked_count() {
  if [ -f "$FAULTS_TXT" ]; then
    awk 'NF { n++ } END { print n + 0 }' "$FAULTS_TXT"
  else
    echo 0
  fi
}

# write_faults: faults.txt from stdin, atomically (gv-proxy never reads half a file).
write_faults() {
  local tmp
  tmp="$(mktemp "$FAULTS_TXT.XXXXXX")"
  cat >"$tmp"
  chmod 644 "$tmp"
  mv "$tmp" "$FAULTS_TXT"
}

# start_proxy: runs gv-proxy on proxies.tsv, in its own session like the nodes, and
# waits until it listens (the nodes' links go through it, so it starts first). One
# running already is kept.
start_proxy() {
  local pid dir log="$LOGS_DIR/gv-proxy.log" deadline
  pid="$(pid_of gv-proxy)"
  if proxy_alive "$pid"; then
    echo "gv-proxy is running already (pid $pid); keeping it"
    return 0
  fi
  [ -x "$PROXY_BIN" ] || die "no gv-proxy at $PROXY_BIN (unset TESTNET_SKIP_BUILD to build it)"
  dir="$(cd "$TESTNET_DIR" && pwd -P)"
  mkdir -p "$LOGS_DIR" "$PIDS_DIR"
  : >"$log" # emptied here, so an old log's ready line cannot be taken for this one's
  if command -v setsid >/dev/null 2>&1; then
    nohup setsid "$PROXY_BIN" "$dir/proxies.tsv" "$dir/faults.txt" </dev/null >>"$log" 2>&1 &
  else
    nohup "$PROXY_BIN" "$dir/proxies.tsv" "$dir/faults.txt" </dev/null >>"$log" 2>&1 &
  fi
  pid=$!
  echo "$pid" >"$PIDS_DIR/gv-proxy"
  deadline=$((SECONDS + PROXY_READY_WAIT))
  while ! grep -qx 'gv-proxy ready' "$log"; do
    # $! is this shell's child: no recycled pid to mistake, and /proc may still show
    # nohup or setsid, so kill -0 and the state tell whether it lives.
    if ! kill -0 "$pid" 2>/dev/null || [ "$(proc_state "$pid")" = Z ]; then
      echo "error: gv-proxy exited during start" >&2
      print_log_tail gv-proxy
      rm -f "$PIDS_DIR/gv-proxy"
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$PIDS_DIR/gv-proxy"
      echo "error: gv-proxy did not get ready within ${PROXY_READY_WAIT} s; killed it (pid $pid)" >&2
      print_log_tail gv-proxy
      exit 1
    fi
    sleep 0.1
  done
  echo "started gv-proxy (pid $pid): $(route_count) routes, $(blocked_count) blocked"
}

# stop_proxy: SIGTERM the proxy, SIGKILL it after TESTNET_STOP_WAIT s; one line.
stop_proxy() {
  local pid deadline
  pid="$(pid_of gv-proxy)"
  [ -n "$pid" ] || return 0
  if ! proxy_alive "$pid"; then
    echo "  gv-proxy: not running"
  else
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true
    deadline=$((SECONDS + TESTNET_STOP_WAIT))
    while proxy_alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.1
    done
    if proxy_alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      echo "  gv-proxy: still running after ${TESTNET_STOP_WAIT} s, killed (pid $pid)"
    else
      echo "  gv-proxy: stopped (pid $pid)"
    fi
  fi
  rm -f "$PIDS_DIR/gv-proxy"
}

# ---- commands -----------------------------------------------------------------------

cmd_start() {
  local n="${1:-4}" name rpc p2p home h first="" v0 deadline ok
  if ! is_uint "$n" || [ "$n" -lt 1 ]; then
    die "start: N must be a number of validators >= 1, got '$n'"
  fi
  is_uint "$TESTNET_BASE_PORT" || die "TESTNET_BASE_PORT must be a number"
  is_uint "$TESTNET_FULL_NODES" || die "TESTNET_FULL_NODES must be a number"
  case "$TESTNET_FAULT_PROXY" in
    "" | 0 | 1) ;;
    *) die "TESTNET_FAULT_PROXY must be 1 (or empty/0), got '$TESTNET_FAULT_PROXY'" ;;
  esac
  need_curl

  # shellcheck disable=SC2119 # neither takes this script's arguments
  if [ "${TESTNET_SKIP_BUILD:-0}" != 1 ]; then
    ensure_build_deps
    build_release
  fi
  [ -x "$GRAPEVINE_BIN" ] || die "no node binary at $GRAPEVINE_BIN (unset TESTNET_SKIP_BUILD to build it)"

  if [ -f "$TESTNET_DIR/genesis.json" ]; then
    [ -f "$NODES_TSV" ] || die "$TESTNET_DIR has a genesis.json but no nodes.tsv; remove it (scripts/testnet.sh clean)"
    local have
    have="$(grep -c '^validator' "$NODES_TSV" || true)"
    if [ $# -gt 0 ] && [ "$have" != "$n" ]; then
      echo "note: $TESTNET_DIR holds a testnet of $have validators already; starting it as it is" \
        "(scripts/testnet.sh clean for a new one)" >&2
    fi
    # The fault proxy is a property of the generated testnet (its nodes' configs).
    if [ "$TESTNET_FAULT_PROXY" = 1 ] && ! has_proxies; then
      echo "note: $TESTNET_DIR was generated without a fault proxy; TESTNET_FAULT_PROXY=1 applies" \
        "to a new testnet only (scripts/testnet.sh clean first)" >&2
    elif [ "$TESTNET_FAULT_PROXY" = 0 ] && has_proxies; then
      echo "note: $TESTNET_DIR was generated with a fault proxy, which its nodes' links need;" \
        "starting it with the proxy (scripts/testnet.sh clean for a new testnet without)" >&2
    fi
  else
    local -a args=(testnet --validators "$n" --full-nodes "$TESTNET_FULL_NODES"
      --base-port "$TESTNET_BASE_PORT" --out "$TESTNET_DIR")
    [ -n "${TESTNET_ACCOUNTS:-}" ] && args+=(--accounts "$TESTNET_ACCOUNTS")
    [ "$TESTNET_FAULT_PROXY" = 1 ] && args+=(--fault-proxy)
    mkdir -p "$(dirname "$TESTNET_DIR")"
    "$GRAPEVINE_BIN" "${args[@]}"
  fi
  need_testnet

  local running=()
  for name in $(node_names); do
    node_alive "$name" && running+=("$name (pid $(pid_of "$name"))")
  done
  if [ "${#running[@]}" -gt 0 ]; then
    echo "error: nodes of $TESTNET_DIR are running already: ${running[*]}" >&2
    echo "  scripts/testnet.sh status | stop | restart NAME" >&2
    exit 1
  fi
  # Something else on a node's RPC port would answer for it: refuse rather than mislead.
  while IFS=$'\t' read -r name rpc p2p home; do
    if curl -s -m 1 -o /dev/null "http://$rpc/health"; then
      die "$rpc ($name's RPC port) is in use by another process; stop it or use another TESTNET_DIR/TESTNET_BASE_PORT"
    fi
  done <"$NODES_TSV"

  mkdir -p "$LOGS_DIR" "$PIDS_DIR"
  if has_proxies; then
    # A new start is a healed network: a partition left over from before is dropped.
    local blocked
    blocked="$(blocked_count)"
    if [ "$blocked" != 0 ]; then
      echo "note: unblocking the $blocked routes left blocked in $FAULTS_TXT (partition cuts them again)"
    fi
    write_faults </dev/null
    start_proxy
  fi
  for name in $(node_names); do
    start_node "$name"
  done
  write_nodes_json
  echo "started $(node_names | wc -l) nodes of $TESTNET_DIR; waiting up to ${TESTNET_WAIT} s for blocks to finalize"

  # Ready: every node answers getStatus, and validator0's height grew since first seen
  # (so a chain restarted at height 50 must finalize a block too).
  v0="$(node_names | head -n 1)"
  deadline=$((SECONDS + TESTNET_WAIT))
  local -A heights=()
  while :; do
    ok=1
    while IFS=$'\t' read -r name rpc p2p home; do
      if ! node_alive "$name"; then
        echo "error: $name exited during start" >&2
        print_log_tail "$name" 30
        echo "the other nodes are left running: scripts/testnet.sh status | stop" >&2
        exit 1
      fi
      h="$(height_of "$rpc")"
      heights[$name]="$h"
      [ -n "$h" ] || ok=0
    done <"$NODES_TSV"
    h="${heights[$v0]}"
    if [ -n "$h" ] && [ -z "$first" ]; then first="$h"; fi
    if [ "$ok" = 1 ] && [ "$h" -gt "$first" ]; then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: the testnet is not finalizing after ${TESTNET_WAIT} s" >&2
      local shown=0
      for name in $(node_names); do
        echo "  $name: height ${heights[$name]:-(no answer)}" >&2
      done
      for name in $(node_names); do
        if [ -z "${heights[$name]}" ]; then
          print_log_tail "$name"
          shown=1
        fi
      done
      if [ "$shown" = 0 ]; then # all answer, none finalizes: the validators' logs tell why
        for name in $(node_names); do
          case "$name" in validator*) print_log_tail "$name" ;; esac
        done
      fi
      echo "the nodes are left running: scripts/testnet.sh status | logs NAME | stop" >&2
      exit 1
    fi
    sleep 1
  done

  echo "testnet is finalizing (validator0 at height ${heights[$v0]}):"
  while IFS=$'\t' read -r name rpc p2p home; do
    printf '  %-12s http://%-21s height %s\n' "$name" "$rpc" "${heights[$name]}"
  done <"$NODES_TSV"
  echo "accounts: $TESTNET_DIR/accounts.json (keys in $TESTNET_DIR/keys), nodes: $TESTNET_DIR/nodes.json"
}

cmd_stop() {
  if [ ! -f "$NODES_TSV" ] && [ ! -f "$PIDS_DIR/gv-proxy" ]; then
    echo "no testnet in $TESTNET_DIR"
    return 0
  fi
  echo "stopping the nodes of $TESTNET_DIR"
  if [ -f "$NODES_TSV" ]; then
    # shellcheck disable=SC2046 # node names hold no spaces
    stop_nodes "$TESTNET_STOP_WAIT" $(node_names)
    write_nodes_json
  fi
  # After the nodes, so none of them sees its links cut while shutting down.
  stop_proxy
}

cmd_status() {
  need_testnet
  need_curl
  local name rpc p2p home pid state s h peers syncing
  printf '%-12s %-22s %-8s %-8s %-8s %-6s %s\n' NODE RPC PID STATE HEIGHT PEERS SYNCING
  while IFS=$'\t' read -r name rpc p2p home; do
    pid="$(pid_of "$name")"
    h="-" peers="-" syncing="-"
    if [ -z "$pid" ]; then
      state=stopped pid="-"
    elif ! alive "$pid" "$home"; then
      state=dead
    else
      state=running
      [ "$(proc_state "$pid")" = T ] && state=paused
      s="$(get_status "$rpc")"
      if [ -n "$s" ]; then
        h="$(json_height "$s")"
        peers="$(json_peers "$s")"
        syncing="$(json_syncing "$s")"
      else
        h="?"
      fi
    fi
    printf '%-12s %-22s %-8s %-8s %-8s %-6s %s\n' "$name" "http://$rpc" "$pid" "$state" \
      "${h:-?}" "${peers:-?}" "${syncing:-?}"
  done <"$NODES_TSV"
  pid="$(pid_of gv-proxy)"
  if has_proxies || [ -n "$pid" ]; then
    if [ -z "$pid" ]; then
      state="stopped (the nodes' links go through it: they cannot connect)"
    elif ! proxy_alive "$pid"; then
      state="dead (pid $pid; the nodes' links go through it: they cannot connect)"
    else
      state=running
      [ "$(proc_state "$pid")" = T ] && state=paused
      state="$state (pid $pid)"
    fi
    printf '%-12s %s; %s of %s routes blocked (%s)\n' gv-proxy "$state" "$(blocked_count)" \
      "$(route_count)" "$FAULTS_TXT"
  fi
}

cmd_logs() {
  [ $# -ge 1 ] || die "usage: scripts/testnet.sh logs NAME [tail options]"
  need_testnet
  local name="$1" log
  shift
  [ "$name" = gv-proxy ] || node_field "$name" 1 >/dev/null
  log="$LOGS_DIR/$name.log"
  [ -f "$log" ] || die "no log for $name yet ($log)"
  if [ $# -gt 0 ]; then
    exec tail "$@" "$log"
  fi
  exec tail -n 100 -f "$log"
}

cmd_kill() {
  [ $# -eq 1 ] || die "usage: scripts/testnet.sh kill NAME"
  need_testnet
  local name="$1" pid home i
  home="$(node_field "$name" 4)"
  pid="$(pid_of "$name")"
  alive "$pid" "$home" || die "$name is not running"
  kill -KILL "$pid"
  for i in $(seq 50); do
    alive "$pid" "$home" || break
    sleep 0.1
  done
  # The pid stays recorded, so status reports the node dead rather than stopped.
  write_nodes_json
  echo "killed $name (pid $pid)"
}

cmd_restart() {
  [ $# -eq 1 ] || die "usage: scripts/testnet.sh restart NAME"
  need_testnet
  need_curl
  local name="$1" rpc target=0 h other orpc deadline
  rpc="$(node_field "$name" 2)"
  [ -x "$GRAPEVINE_BIN" ] || die "no node binary at $GRAPEVINE_BIN"
  if node_alive "$name"; then
    echo "stopping $name"
    stop_nodes "$TESTNET_STOP_WAIT" "$name"
  fi
  # The height to catch up to: the highest among the other nodes now.
  for other in $(node_names); do
    if [ "$other" = "$name" ] || ! node_alive "$other"; then continue; fi
    orpc="$(node_field "$other" 2)"
    h="$(height_of "$orpc")"
    if [ -n "$h" ] && [ "$h" -gt "$target" ]; then target="$h"; fi
  done
  start_node "$name"
  write_nodes_json
  echo "started $name (pid $(pid_of "$name")); waiting up to ${TESTNET_WAIT} s for it to reach height $target"
  deadline=$((SECONDS + TESTNET_WAIT))
  while :; do
    if ! node_alive "$name"; then
      echo "error: $name exited" >&2
      print_log_tail "$name" 30
      exit 1
    fi
    h="$(height_of "$rpc")"
    if [ -n "$h" ] && [ "$h" -ge "$target" ]; then
      echo "$name is at height $h (caught up with $target)"
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: $name is at height ${h:-(no answer)} after ${TESTNET_WAIT} s, short of $target" >&2
      print_log_tail "$name"
      exit 1
    fi
    sleep 1
  done
}

cmd_signal() { # cmd_signal STOP|CONT NAME
  local sig="$1" name="${2:-}" pid verb
  if [ -z "$name" ] || [ $# -ne 2 ]; then die "usage: scripts/testnet.sh pause|resume NAME"; fi
  need_testnet
  node_field "$name" 1 >/dev/null
  node_alive "$name" || die "$name is not running"
  pid="$(pid_of "$name")"
  kill "-$sig" "$pid"
  [ "$sig" = STOP ] && verb=paused || verb=resumed
  echo "$verb $name (pid $pid)"
}

# proxy_note: warns when the proxy does not run (faults.txt then takes effect once
# it does, at the next start).
proxy_note() {
  proxy_alive "$(pid_of gv-proxy)" ||
    echo "note: gv-proxy is not running; the nodes' links are all down until scripts/testnet.sh start"
}

cmd_partition() {
  [ $# -ge 1 ] || die "usage: scripts/testnet.sh partition GROUP [GROUP...], GROUP: NAME,NAME,..." \
    "(e.g. partition validator0,validator1 validator2,validator3)"
  need_proxies
  local arg name route from to gf gt cut=0 total=0 i=0
  local -a names=() shown=() isolated=()
  local -A group_of=()
  for arg in "$@"; do
    i=$((i + 1))
    IFS=, read -r -a names <<<"$arg"
    [ "${#names[@]}" -gt 0 ] || die "partition: group $i is empty"
    for name in "${names[@]}"; do
      [ -n "$name" ] || die "partition: empty node name in group '$arg'"
      node_field "$name" 1 >/dev/null
      [ -z "${group_of[$name]:-}" ] ||
        die "partition: $name is in group ${group_of[$name]} and group $i; a node belongs to one group"
      group_of[$name]=$i
    done
    shown+=("${names[*]}")
  done
  # A route is cut unless both its ends are in the same group.
  local routes
  routes="$(
    while IFS=$'\t' read -r route _; do
      [ -n "$route" ] || continue
      from="${route%%>*}" to="${route#*>}"
      gf="${group_of[$from]:-}" gt="${group_of[$to]:-}"
      if [ -z "$gf" ] || [ "$gf" != "$gt" ]; then printf '%s\n' "$route"; fi
    done <"$PROXIES_TSV"
  )"
  [ -n "$routes" ] && cut="$(printf '%s\n' "$routes" | wc -l)"
  total="$(route_count)"
  { [ -z "$routes" ] || printf '%s\n' "$routes"; } | write_faults
  for name in $(node_names); do
    [ -n "${group_of[$name]:-}" ] || isolated+=("$name")
  done
  echo "partitioned $TESTNET_DIR: cut $cut of $total routes (listed in $FAULTS_TXT)"
  for i in "${!shown[@]}"; do
    echo "  group $((i + 1)): ${shown[$i]}"
  done
  if [ "${#isolated[@]}" -gt 0 ]; then
    echo "  cut off from everyone (in no group): ${isolated[*]}"
  fi
  proxy_note
}

cmd_heal() {
  [ $# -eq 0 ] || die "usage: scripts/testnet.sh heal"
  need_proxies
  local blocked
  blocked="$(blocked_count)"
  write_faults </dev/null
  echo "healed $TESTNET_DIR: unblocked $blocked routes ($FAULTS_TXT is empty); the nodes redial" \
    "on their own, which can take ~30 s after a long cut (dial backoff)"
  proxy_note
}

cmd_clean() {
  local dir
  if [ ! -e "$TESTNET_DIR" ]; then
    echo "nothing to clean: $TESTNET_DIR does not exist"
    return 0
  fi
  dir="$(cd "$TESTNET_DIR" && pwd -P)"
  case "$dir" in
    / | "$HOME" | "$(cd "$REPO_ROOT" && pwd -P)") die "refusing to remove $dir" ;;
  esac
  [ -f "$dir/nodes.tsv" ] || [ -f "$dir/genesis.json" ] ||
    die "$dir does not look like a testnet (no nodes.tsv or genesis.json); not removing it"
  cmd_stop
  rm -rf "$dir"
  echo "removed $dir"
}

cmd="${1:-help}"
[ $# -gt 0 ] && shift
case "$cmd" in
  start) [ $# -le 1 ] || die "usage: scripts/testnet.sh start [N]"; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  logs) cmd_logs "$@" ;;
  kill) cmd_kill "$@" ;;
  restart) cmd_restart "$@" ;;
  pause) cmd_signal STOP "$@" ;;
  resume) cmd_signal CONT "$@" ;;
  partition) cmd_partition "$@" ;;
  heal) cmd_heal "$@" ;;
  clean) cmd_clean ;;
  help | -h | --help) usage ;;
  *)
    usage >&2
    exit 1
    ;;
esac
