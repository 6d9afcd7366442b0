#!/usr/bin/env bash
# A testbed of distinct hosts on this machine (as root): each node runs in its own
# network namespace with its own address, and every link between two nodes goes
# through gv-proxy in the root namespace, which emulates delay, jitter, loss and
# bandwidth (this kernel has no netem). Nodes know each other by name (/etc/hosts of
# their namespace). Design, link model and limits: docs/TESTBED.md.
#   scripts/netns-testnet.sh up 4 --rtt 50 --loss 1   # prints "netns testbed ready"
#   scripts/netns-testnet.sh status                   # NAME RPC_URL HEIGHT per node
#   scripts/netns-testnet.sh links --rtt 200          # change every link, live
#   scripts/netns-testnet.sh stop v3; ... start v3
#   scripts/netns-testnet.sh down
# Run without arguments for every command and setting. Needs iproute2 and curl; does
# not build anything (GRAPEVINE_BIN, GV_PROXY_BIN: the binaries to run).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
GRAPEVINE_BIN_ENV="${GRAPEVINE_BIN:-}"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

# lib.sh names the release build; GRAPEVINE_BIN in the environment wins.
GRAPEVINE_BIN="${GRAPEVINE_BIN_ENV:-$GRAPEVINE_BIN}"
GV_PROXY_BIN="${GV_PROXY_BIN:-$(dirname "$GRAPEVINE_BIN")/gv-proxy}"
NETNS_DIR_DEFAULT="${NETNS_DIR:-/tmp/grapevine-netns}"
NETNS_WAIT="${NETNS_WAIT:-60}"
NETNS_STOP_WAIT="${NETNS_STOP_WAIT:-15}"
# Where a running testbed is recorded (its directory), so every command finds it.
STATE_FILE=/run/grapevine-netns.dir
P2P_PORT=26656
RPC_PORT=8545
MAX_NODES=50 # addresses .100+j and .200+j of a /24 must stay below .255
FW_COMMENT=grapevine-netns

usage() {
  cat <<EOF
Usage: scripts/netns-testnet.sh COMMAND [ARGS]   (as root)

Commands:
  up N [--full F] [--rtt MS] [--jitter MS] [--loss PCT] [--rate R] [--dir DIR]
                 Write a network of N validators (v0..) and F full nodes (f0..) with
                 grapevine testnet --hosts into DIR, give each node a namespace gv-NAME
                 with address 10.77.<i>.2, route every link through gv-proxy with the
                 given link settings, start everything and wait until every node's RPC
                 answers; prints "netns testbed ready" last. Refused while a testbed
                 (or a leftover of one) exists: run down first
  down           Stop the nodes and the proxy, delete the namespaces (and their veth
                 pairs and addresses), the hosts files in /etc/netns and the firewall
                 rules. Idempotent; leaves DIR (homes, logs) for inspection
  stop NAME      SIGTERM one node (SIGKILL after ${NETNS_STOP_WAIT} s)
  start NAME     Start a stopped node again and wait until its RPC answers
  links [--rtt MS] [--jitter MS] [--loss PCT] [--rate R] [--route 'LINE']...
                 Rewrite the proxy's control file (it re-reads it every 100 ms): the
                 options set every link (an option left out is 0/off); each --route adds
                 a gv-proxy control line for one route, e.g. --route 'v0>v1 block' or
                 --route 'v2>v3 delay=100'. Prints the new file
  status         One line per node on stdout: NAME RPC_URL HEIGHT (HEIGHT is - when the
                 node does not run or answer); the proxy and links on stderr
  help           This text

Link settings: --rtt is the round trip of every link (each direction is delayed by
half of it); --jitter MS is added to each direction's delay as a uniform value in
[-MS, +MS] (order is kept); --loss PCT is the loss per TCP segment in percent, each
loss delaying delivery by a retransmission timeout; --rate is the bandwidth of each
direction of each link (bytes/s, or 10mbit, 512kbit, 2mb). Routes are named FROM>TO
(the node that dialled, then the node dialled).

Settings (environment), with their current values:
  GRAPEVINE_BIN=$GRAPEVINE_BIN
      the node binary
  GV_PROXY_BIN=$GV_PROXY_BIN
      gv-proxy (cargo build --release --bin gv-proxy, or rustc --edition 2024 -O
      tests/src/bin/gv-proxy.rs -o FILE: it needs std only)
  NETNS_DIR=$NETNS_DIR_DEFAULT
      the directory of a new testbed (--dir overrides)
  NETNS_WAIT=$NETNS_WAIT
      seconds up and start wait for the nodes' RPC
  GRAPEVINE_LOG=${GRAPEVINE_LOG:-}
      passed through to the nodes (their log filter)

Files in DIR: what grapevine testnet --hosts writes (NAME/ homes, accounts.json, keys/,
nodes.tsv), addresses.tsv (NAME, index, address, RPC URL), routes.tsv (the proxy's
routes: FROM>TO, listen, target, source address), links.txt (its control file),
logs/NAME.log, logs/gv-proxy.log, pids/NAME, pids/gv-proxy. The running testbed's
directory is recorded in $STATE_FILE.
EOF
}

die() {
  echo "error: $*" >&2
  exit 1
}

is_num() {
  [[ "$1" =~ ^[0-9]+(\.[0-9]+)?$ ]]
}

need_root() {
  [ "$(id -u)" = 0 ] || die "this script creates network namespaces and must run as root (sudo $0 $*)"
  command -v ip >/dev/null 2>&1 || die "ip (iproute2) is missing: apt-get install -y iproute2"
  command -v curl >/dev/null 2>&1 || die "curl is missing: apt-get install -y curl"
}

# ---- the testbed's directory ------------------------------------------------------------

DIR=""

# load_dir: DIR of the running testbed (from STATE_FILE), or fail.
load_dir() {
  [ -f "$STATE_FILE" ] || die "no netns testbed is up ($STATE_FILE is missing); run: $0 up N"
  DIR="$(cat "$STATE_FILE")"
  [ -f "$DIR/addresses.tsv" ] || die "the testbed directory $DIR has no addresses.tsv; run: $0 down"
}

# node_index NAME: the node's index i (its subnet 10.77.<i>.0/24); fails on an unknown name.
node_index() {
  local v
  v="$(awk -F'\t' -v n="$1" '$1 == n { print $2; found = 1 } END { exit !found }' "$DIR/addresses.tsv")" ||
    die "no node named '$1'; nodes: $(cut -f1 "$DIR/addresses.tsv" | tr '\n' ' ')"
  printf '%s\n' "$v"
}

node_names() {
  cut -f1 "$DIR/addresses.tsv"
}

# ---- processes ----------------------------------------------------------------------------

pid_of() {
  local f="$DIR/pids/$1"
  [ -f "$f" ] && cat "$f"
  return 0
}

node_pattern() {
  printf '%s' "run --home $DIR/$1 "
}

node_alive() {
  process_alive "$(pid_of "$1")" "$(node_pattern "$1")"
}

proxy_alive() {
  process_alive "$(pid_of gv-proxy)" "$DIR/routes.tsv "
}

# stop_pid NAME PATTERN: SIGTERM, wait up to NETNS_STOP_WAIT s, SIGKILL; one line.
stop_pid() {
  local name="$1" pattern="$2" pid deadline
  pid="$(pid_of "$name")"
  if ! process_alive "$pid" "$pattern"; then
    echo "  $name: not running"
    rm -f "$DIR/pids/$name"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  kill -CONT "$pid" 2>/dev/null || true
  deadline=$((SECONDS + NETNS_STOP_WAIT))
  while process_alive "$pid" "$pattern" && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.1
  done
  if process_alive "$pid" "$pattern"; then
    kill -KILL "$pid" 2>/dev/null || true
    echo "  $name: still running after ${NETNS_STOP_WAIT} s, killed (pid $pid)"
  else
    echo "  $name: stopped (pid $pid)"
  fi
  rm -f "$DIR/pids/$name"
}

# close_extra_fds: closes this (sub)shell's descriptors above 2, so a node or the
# proxy holds none of the caller's (a lock taken with flock around this script must
# not live on in them).
close_extra_fds() {
  local fd
  for fd in /proc/"$BASHPID"/fd/*; do
    fd="${fd##*/}"
    # (No redirection on this loop: bash would keep a copy of the fd it redirects
    # among the ones closed here, and restore a closed one after.)
    if is_uint "$fd" && [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
  done
}

# start_node NAME: runs the node in its namespace, in its own session, and records its
# pid (the subshell, nohup, ip netns exec and setsid all exec: $! is the node's pid).
start_node() {
  local name="$1" i
  i="$(node_index "$name")"
  mkdir -p "$DIR/logs" "$DIR/pids"
  {
    echo
    echo "=== $(date '+%F %T') scripts/netns-testnet.sh: starting $name in gv-$name ==="
  } >>"$DIR/logs/$name.log"
  (
    close_extra_fds
    exec nohup ip netns exec "gv-$name" setsid "$GRAPEVINE_BIN" run --home "$DIR/$name" \
      --rpc-addr "10.77.$i.2:$RPC_PORT"
  ) </dev/null >>"$DIR/logs/$name.log" 2>&1 &
  echo "$!" >"$DIR/pids/$name"
}

rpc_url() {
  printf 'http://10.77.%s.2:%s\n' "$1" "$RPC_PORT"
}

# height_of URL: the node's final height, empty if it does not answer.
height_of() {
  curl -sS -m 2 -X POST -H 'content-type: application/json' \
    -d '{"jsonrpc":"2.0","id":1,"method":"getStatus","params":[]}' "$1/" 2>/dev/null |
    sed -n 's/.*"height"[[:space:]]*:[[:space:]]*"\{0,1\}\([0-9][0-9]*\).*/\1/p' || true
}

print_log_tail() {
  echo "--- last ${2:-20} lines of $DIR/logs/$1.log ---" >&2
  tail -n "${2:-20}" "$DIR/logs/$1.log" >&2 2>/dev/null || echo "(no log)" >&2
}

# wait_rpc NAME...: until every named node's RPC answers (NETNS_WAIT s), or fail.
wait_rpc() {
  local name h deadline=$((SECONDS + NETNS_WAIT)) ok pid
  while :; do
    ok=1
    for name in "$@"; do
      pid="$(pid_of "$name")"
      if ! node_alive "$name" && process_alive "$pid" ""; then
        # Forked but not yet the node: still this script's subshell, before its exec.
        ok=0
        continue
      fi
      if ! node_alive "$name"; then
        echo "error: $name exited" >&2
        print_log_tail "$name" 30
        return 1
      fi
      h="$(height_of "$(rpc_url "$(node_index "$name")")")"
      [ -n "$h" ] || ok=0
    done
    [ "$ok" = 1 ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: not every RPC answers after ${NETNS_WAIT} s: $*" >&2
      for name in "$@"; do print_log_tail "$name" 10; done
      return 1
    fi
    sleep 0.5
  done
}

# ---- links --------------------------------------------------------------------------------

# link_line RTT JITTER LOSS RATE: the control file's default line.
link_line() {
  local rtt="$1" jitter="$2" loss="$3" rate="$4" delay
  delay="$(awk -v r="$rtt" 'BEGIN { printf "%g", r / 2 }')"
  printf '* delay=%s jitter=%s loss=%s' "$delay" "$jitter" "$loss"
  [ -n "$rate" ] && [ "$rate" != 0 ] && printf ' rate=%s' "$rate"
  printf '\n'
}

# write_links: links.txt from stdin, atomically (gv-proxy never reads half a file).
write_links() {
  local tmp
  tmp="$(mktemp "$DIR/links.txt.XXXXXX")"
  cat >"$tmp"
  chmod 644 "$tmp"
  mv "$tmp" "$DIR/links.txt"
}

# parse_link_opts ARGS...: sets RTT JITTER LOSS RATE ROUTES (and DIR_OPT, FULL with up).
parse_link_opts() {
  RTT=0 JITTER=0 LOSS=0 RATE="" ROUTES=() DIR_OPT="" FULL=0
  while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || die "$1 needs a value"
    case "$1" in
      --rtt) is_num "$2" || die "--rtt: milliseconds, got '$2'"; RTT="$2" ;;
      --jitter) is_num "$2" || die "--jitter: milliseconds, got '$2'"; JITTER="$2" ;;
      --loss)
        is_num "${2%\%}" || die "--loss: percent, got '$2'"
        LOSS="${2%\%}"
        ;;
      --rate) [[ "$2" =~ ^[0-9.]+[a-zA-Z]*$ ]] || die "--rate: e.g. 10mbit or 1250000, got '$2'"; RATE="$2" ;;
      --route) ROUTES+=("$2") ;;
      --dir) [ "$CMD" = up ] || die "--dir is an option of up"; DIR_OPT="$2" ;;
      --full) [ "$CMD" = up ] || die "--full is an option of up"; is_uint "$2" || die "--full: a number, got '$2'"; FULL="$2" ;;
      *) die "unknown option '$1' (see: $0 help)" ;;
    esac
    shift 2
  done
}

links_text() {
  link_line "$RTT" "$JITTER" "$LOSS" "$RATE"
  local r
  for r in "${ROUTES[@]}"; do
    printf '%s\n' "$r"
  done
}

# ---- firewall -----------------------------------------------------------------------------
# Nodes never learn another node's 10.77.<j>.2 and their namespaces have no default
# route, so nothing is forwarded between them anyway; where iptables exists (Docker
# installs it and turns ip_forward on) forwarding from or to the testbed's interfaces is
# dropped too.

fw_add() {
  command -v iptables >/dev/null 2>&1 || return 0
  iptables -w -I FORWARD -i gvh-+ -m comment --comment "$FW_COMMENT" -j DROP 2>/dev/null ||
    iptables -w -I FORWARD -i gvh-+ -j DROP || {
    echo "warning: could not add an iptables FORWARD rule (the namespaces have no default route, so nodes still cannot reach each other directly)" >&2
    return 0
  }
  iptables -w -I FORWARD -o gvh-+ -m comment --comment "$FW_COMMENT" -j DROP 2>/dev/null ||
    iptables -w -I FORWARD -o gvh-+ -j DROP || true
}

fw_remove() {
  command -v iptables >/dev/null 2>&1 || return 0
  local dir rule n
  for dir in -i -o; do
    for rule in "-m comment --comment $FW_COMMENT -j DROP" "-j DROP"; do
      n=0
      # shellcheck disable=SC2086 # the rule's words
      while [ "$n" -lt 20 ] && iptables -w -D FORWARD "$dir" gvh-+ $rule 2>/dev/null; do
        n=$((n + 1))
      done
    done
  done
}

# ---- commands -----------------------------------------------------------------------------

leftovers() {
  local out=""
  [ -f "$STATE_FILE" ] && out="$out state file $STATE_FILE ($(cat "$STATE_FILE"));"
  local ns
  ns="$(ip netns list 2>/dev/null | awk '$1 ~ /^gv-/ { print $1 }' | tr '\n' ' ')"
  [ -n "$ns" ] && out="$out namespaces $ns;"
  [ -n "$(ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^gvh-/')" ] && out="$out gvh-* links;"
  compgen -G '/etc/netns/gv-*' >/dev/null && out="$out /etc/netns/gv-*;"
  printf '%s' "$out"
}

cmd_up() {
  [ $# -ge 1 ] || die "usage: $0 up N [--full F] [--rtt MS] [--jitter MS] [--loss PCT] [--rate R] [--dir DIR]"
  local n="$1"
  shift
  is_uint "$n" && [ "$n" -ge 1 ] || die "up: N must be a number of validators >= 1, got '$n'"
  parse_link_opts "$@"
  [ "${#ROUTES[@]}" -eq 0 ] || die "--route is an option of links"
  local total=$((n + FULL))
  [ "$total" -le "$MAX_NODES" ] || die "up: at most $MAX_NODES nodes"
  [ -x "$GRAPEVINE_BIN" ] || die "no node binary at $GRAPEVINE_BIN (build it, or set GRAPEVINE_BIN)"
  [ -x "$GV_PROXY_BIN" ] || die "no gv-proxy at $GV_PROXY_BIN (build it, or set GV_PROXY_BIN)"
  local left
  left="$(leftovers)"
  [ -z "$left" ] || die "a netns testbed (or a leftover of one) exists:$left run: $0 down"

  DIR="${DIR_OPT:-$NETNS_DIR_DEFAULT}"
  mkdir -p "$(dirname "$DIR")"
  DIR="$(cd "$(dirname "$DIR")" && pwd -P)/$(basename "$DIR")"
  if [ -e "$DIR" ]; then
    if [ -f "$DIR/.netns-testbed" ]; then
      rm -rf "$DIR" # an old testbed's homes and logs
    elif [ -n "$(ls -A "$DIR")" ]; then
      die "$DIR exists and is no netns testbed directory; choose another --dir"
    fi
  fi
  mkdir -p "$DIR"
  touch "$DIR/.netns-testbed" # so that the next up may replace it

  local -a names=()
  local i j
  for ((i = 0; i < n; i++)); do names+=("v$i"); done
  for ((i = 0; i < FULL; i++)); do names+=("f$i"); done
  local hosts
  hosts="$(IFS=,; echo "${names[*]}")"
  "$GRAPEVINE_BIN" testnet --hosts "$hosts" --full-nodes "$FULL" --out "$DIR" >"$DIR/testnet.out" ||
    die "grapevine testnet --hosts failed (output in $DIR/testnet.out)"
  # Each node is reached at another address by each peer (its proxy route), so no
  # single advertised address is right: drop external_address, and peers record the
  # address they see a node from (a proxy address of theirs) with its listen port.
  sed -i '/^external_address = /d' "$DIR"/*/config.toml
  # Benchmarks load every node from one address (the root namespace's): no RPC rate limit.
  sed -i 's/^rate_limit = .*/rate_limit = 0/' "$DIR"/*/config.toml

  echo "$DIR" >"$STATE_FILE"
  for i in "${!names[@]}"; do
    printf '%s\t%s\t10.77.%s.2\t%s\n' "${names[$i]}" "$i" "$i" "$(rpc_url "$i")"
  done >"$DIR/addresses.tsv"

  # Namespaces, veth pairs, addresses, hosts files.
  local x y
  for i in "${!names[@]}"; do
    x="${names[$i]}"
    ip netns add "gv-$x"
    ip link add "gvh-$x" type veth peer name eth0 netns "gv-$x"
    ip addr add "10.77.$i.1/24" dev "gvh-$x"
    ip link set "gvh-$x" up
    ip -n "gv-$x" link set lo up
    ip -n "gv-$x" addr add "10.77.$i.2/24" dev eth0
    ip -n "gv-$x" link set eth0 up
    mkdir -p "/etc/netns/gv-$x"
    {
      echo "# written by scripts/netns-testnet.sh for namespace gv-$x"
      echo "127.0.0.1 localhost"
      echo "::1 localhost"
      echo "10.77.$i.2 $x"
    } >"/etc/netns/gv-$x/hosts"
    for j in "${!names[@]}"; do
      [ "$i" = "$j" ] && continue
      y="${names[$j]}"
      # X reaches Y at 10.77.i.(100+j), an address of the root side of X's veth.
      ip addr add "10.77.$i.$((100 + j))/24" dev "gvh-$x"
      echo "10.77.$i.$((100 + j)) $y" >>"/etc/netns/gv-$x/hosts"
      # The proxy reaches X for Y at 10.77.i.(200+j), from 10.77.i.(100+j): the
      # /32 route's src makes the kernel pick that source address.
      ip -n "gv-$x" addr add "10.77.$i.$((200 + j))/32" dev eth0
    done
  done
  for i in "${!names[@]}"; do
    x="${names[$i]}"
    for j in "${!names[@]}"; do
      [ "$i" = "$j" ] && continue
      ip route add "10.77.$i.$((200 + j))/32" dev "gvh-$x" src "10.77.$i.$((100 + j))"
    done
  done
  fw_add

  # The proxy's routes: X>Y listens where X reaches Y and connects to Y's address for X
  # from the address Y reaches X at.
  for i in "${!names[@]}"; do
    for j in "${!names[@]}"; do
      [ "$i" = "$j" ] && continue
      printf '%s>%s\t10.77.%s.%s:%s\t10.77.%s.%s:%s\t10.77.%s.%s\n' \
        "${names[$i]}" "${names[$j]}" "$i" "$((100 + j))" "$P2P_PORT" \
        "$j" "$((200 + i))" "$P2P_PORT" "$j" "$((100 + i))"
    done
  done >"$DIR/routes.tsv"
  links_text | write_links

  mkdir -p "$DIR/logs" "$DIR/pids"
  : >"$DIR/logs/gv-proxy.log"
  (
    close_extra_fds
    exec nohup setsid "$GV_PROXY_BIN" "$DIR/routes.tsv" "$DIR/links.txt"
  ) </dev/null >>"$DIR/logs/gv-proxy.log" 2>&1 &
  echo "$!" >"$DIR/pids/gv-proxy"
  local deadline=$((SECONDS + 10))
  while ! grep -qx 'gv-proxy ready' "$DIR/logs/gv-proxy.log"; do
    # Before its exec the process is this script's subshell: only its exit counts.
    if ! process_alive "$(pid_of gv-proxy)" "" || [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: gv-proxy did not start" >&2
      tail -n 20 "$DIR/logs/gv-proxy.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "gv-proxy (pid $(pid_of gv-proxy)): $(wc -l <"$DIR/routes.tsv") routes; links: $(head -n 1 "$DIR/links.txt")"

  for x in "${names[@]}"; do
    start_node "$x"
  done
  echo "started ${#names[@]} nodes in namespaces gv-${names[0]}..; waiting up to ${NETNS_WAIT} s for their RPC"
  wait_rpc "${names[@]}" || die "the testbed is left up: $0 status | down"
  for x in "${names[@]}"; do
    printf '  %-4s %s  (namespace gv-%s, log %s)\n' "$x" "$(rpc_url "$(node_index "$x")")" "$x" "$DIR/logs/$x.log"
  done
  echo "accounts: $DIR/accounts.json (keys in $DIR/keys)"
  echo "netns testbed ready"
}

cmd_down() {
  [ $# -eq 0 ] || die "usage: $0 down"
  local ns x name
  if [ -f "$STATE_FILE" ]; then
    DIR="$(cat "$STATE_FILE")"
    if [ -f "$DIR/addresses.tsv" ]; then
      echo "stopping the nodes of $DIR"
      for name in $(node_names); do
        stop_pid "$name" "$(node_pattern "$name")"
      done
      stop_pid gv-proxy "$DIR/routes.tsv "
    fi
  fi
  # Whatever still runs in a testbed namespace (a node started by hand) goes too.
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^gv-/ { print $1 }'); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      echo "  killing pid $pid left in $ns"
      kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true # deletes its veth pair, both ends
  done
  for x in $(ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^gvh-/ { sub(/@.*/, "", $2); print $2 }'); do
    ip link del "$x" 2>/dev/null || true
  done
  for x in /etc/netns/gv-*; do
    [ -e "$x" ] && rm -rf "$x"
  done
  rmdir /etc/netns 2>/dev/null || true
  fw_remove
  rm -f "$STATE_FILE"
  if [ -n "$DIR" ]; then
    echo "netns testbed down (homes and logs left in $DIR)"
  else
    echo "netns testbed down"
  fi
}

cmd_stop() {
  [ $# -eq 1 ] || die "usage: $0 stop NAME"
  load_dir
  node_index "$1" >/dev/null
  stop_pid "$1" "$(node_pattern "$1")"
}

cmd_start() {
  [ $# -eq 1 ] || die "usage: $0 start NAME"
  load_dir
  node_index "$1" >/dev/null
  node_alive "$1" && die "$1 is running already (pid $(pid_of "$1"))"
  start_node "$1"
  wait_rpc "$1" || exit 1
  echo "started $1 (pid $(pid_of "$1")): $(rpc_url "$(node_index "$1")")"
}

cmd_links() {
  load_dir
  parse_link_opts "$@"
  links_text | write_links
  cat "$DIR/links.txt"
  proxy_alive || echo "note: gv-proxy is not running (no links at all until $0 down; up)" >&2
}

cmd_status() {
  [ $# -eq 0 ] || die "usage: $0 status"
  load_dir
  local name i url h
  while IFS=$'\t' read -r name i _ url; do
    h=-
    if node_alive "$name"; then
      h="$(height_of "$url")"
      [ -n "$h" ] || h=-
    fi
    printf '%s %s %s\n' "$name" "$url" "$h"
  done <"$DIR/addresses.tsv"
  if proxy_alive; then
    echo "gv-proxy: running (pid $(pid_of gv-proxy)), $(wc -l <"$DIR/routes.tsv") routes" >&2
  else
    echo "gv-proxy: NOT running: no node reaches another" >&2
  fi
  sed 's/^/links: /' "$DIR/links.txt" >&2
}

CMD="${1:-help}"
[ $# -gt 0 ] && shift
case "$CMD" in
  help | -h | --help) usage; exit 0 ;;
  up | down | stop | start | links | status) need_root "$CMD" ;;
  *) usage >&2; exit 1 ;;
esac
case "$CMD" in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  stop) cmd_stop "$@" ;;
  start) cmd_start "$@" ;;
  links) cmd_links "$@" ;;
  status) cmd_status "$@" ;;
esac
