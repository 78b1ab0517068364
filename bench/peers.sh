# peers.sh — sourced by bench/ab.sh and bench/timeline.sh: the peer kit's upstream and nginx proxy, and
# gateway builds beside them, each on a free loopback port, everything stopped and removed on exit.
#
# Set SCRIPT (the name errors are given under) before sourcing. Defines CONF (the kit's templates), RUN (a
# private directory), PORT and PID (by target name), NAMES (targets in start order), upstream and
# upstream_port, and the functions below.

CONF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../../shared/bench/conf"
die() { echo "$SCRIPT: $*" >&2; exit 2; }
# needs TOOL...: the tools are installed and the kit is there.
needs() {
  local tool
  for tool; do
    command -v "$tool" >/dev/null || die "$tool is not installed (run ../shared/bench/setup.sh)"
  done
  [ -f "$CONF/upstream.nginx.conf" ] || die "$CONF not found: the peer kit lives in ../shared/bench"
}

RUN="$(mktemp -d)"
PIDS=()
cleanup() {
  {
    for pid in "${PIDS[@]}"; do kill "$pid" || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" || true; done
  } 2>/dev/null
  rm -rf "$RUN"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
render() { # template output port upstream_port
  sed -e "s|@RUN_DIR@|$RUN|g" -e "s|@PORT@|$3|g" -e "s|@UPSTREAM_PORT@|$4|g" -e "s|@NPROC@|$(nproc)|g" "$1" > "$2"
}
answers() { # port
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done
  return 1
}

declare -A PORT=() PID=()
NAMES=()

# The kit's upstream (one nginx worker), answering.
start_upstream() {
  mkdir -p "$RUN/upstream-tmp"
  upstream_port="$(free_port)"
  render "$CONF/upstream.nginx.conf" "$RUN/upstream.conf" "$upstream_port" "$upstream_port"
  nginx -p "$RUN" -e "$RUN/upstream.error.log" -c "$RUN/upstream.conf" & upstream=$!; PIDS+=($!)
  answers "$upstream_port" || die "the upstream did not answer"
}

# start_nginx NAME PREFIX CONFIG: an nginx proxy rendered into CONFIG for PORT[NAME], run from PREFIX.
start_nginx() {
  nginx -p "$2" -e "$2/nginx.error.log" -c "$3" & PID[$1]=$!; PIDS+=($!); NAMES+=("$1")
}

# The kit's nginx proxy, as target `nginx`.
start_kit_nginx() {
  mkdir -p "$RUN/nginx-tmp"
  PORT[nginx]="$(free_port)"
  render "$CONF/nginx.conf" "$RUN/nginx.conf" "${PORT[nginx]}" "$upstream_port"
  start_nginx nginx "$RUN" "$RUN/nginx.conf"
}

# start_gateways NAME=BINARY...: `BINARY gateway` in front of the upstream for each, as target NAME.
start_gateways() {
  local spec name bin
  for spec; do
    name="${spec%%=*}"; bin="${spec#*=}"
    [ "$name" != "$spec" ] && [ -n "$name" ] || die "'$spec': say NAME=BINARY"
    [ -z "${PORT[$name]:-}" ] || die "'$name' is taken (by another build or a peer)"
    [ -x "$bin" ] || die "$bin is not an executable"
    PORT[$name]="$(free_port)"
    "$bin" gateway --listen "127.0.0.1:${PORT[$name]}" --upstream "127.0.0.1:$upstream_port" > "$RUN/$name.log" 2>&1 &
    PID[$name]=$!; PIDS+=($!); NAMES+=("$name")
  done
}

# warm_up CONNS: every target answers, then takes 2 s of wrk, so that pools and allocators are warm.
warm_up() {
  local name
  for name in "${NAMES[@]}"; do
    answers "${PORT[$name]}" || { tail -5 "$RUN/$name.log" >&2 || true; die "$name did not answer on ${PORT[$name]}"; }
    timeout 20 wrk -t1 -c"$1" -d2s "http://127.0.0.1:${PORT[$name]}/" > /dev/null
  done
}
