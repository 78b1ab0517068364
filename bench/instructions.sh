#!/usr/bin/env bash
# instructions.sh — user-space instructions per proxied request, counted by callgrind.
#
#   bench/instructions.sh [BERTH_BINARY ...]     default: target/release/berth
#
# Wall-clock and CPU-time numbers move by tens of percent on a shared machine; instruction counts do not,
# so this is the A/B tool for gateway changes (kernel time, about half of the gateway's CPU, is not counted).
# For each binary: the kit's upstream nginx (../shared/bench/conf/upstream.nginx.conf) on a free port,
# `berth gateway` in front of it under callgrind, a readiness probe and WARMUP_REQUESTS, then the counters are
# zeroed, REQUESTS requests sent (oha, 16 keep-alive connections) and the counters dumped. Prints
# instructions per request.
#
# Knobs: REQUESTS=20000, WARMUP_REQUESTS=2000. Needs nginx, oha, curl, valgrind.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KIT_CONF="$HERE/../../shared/bench/conf/upstream.nginx.conf"
REQUESTS="${REQUESTS:-20000}"
WARMUP_REQUESTS="${WARMUP_REQUESTS:-2000}"
[ "$#" -gt 0 ] || set -- "$HERE/../target/release/berth"
for tool in nginx oha curl valgrind callgrind_control; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is not installed (../shared/bench/setup.sh, apt install valgrind)" >&2; exit 1; }
done
[ -f "$KIT_CONF" ] || { echo "instructions.sh: $KIT_CONF not found: the peer kit lives in ../shared/bench" >&2; exit 1; }

RUN="$(mktemp -d)"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # url, seconds
  for _ in $(seq $(( $2 * 10 ))); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "instructions.sh: $1 did not answer in $2 s" >&2; return 1
}

UPSTREAM_PORT="$(free_port)"
mkdir -p "$RUN/upstream-tmp"
sed "s#@RUN_DIR@#$RUN#g; s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" "$KIT_CONF" > "$RUN/upstream.conf"
nginx -p "$RUN" -e "$RUN/upstream.error.log" -c "$RUN/upstream.conf" & PIDS+=($!)
wait_for "http://127.0.0.1:$UPSTREAM_PORT/" 10

printf '%-40s %12s %14s\n' binary requests instr/request
for bin in "$@"; do
  port="$(free_port)"
  out="$RUN/callgrind.$port.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" gateway --listen "127.0.0.1:$port" --upstream "127.0.0.1:$UPSTREAM_PORT" > "$RUN/gateway.$port.log" 2>&1 &
  gw=$!; PIDS+=("$gw")
  wait_for "http://127.0.0.1:$port/" 120
  oha -n "$WARMUP_REQUESTS" -c 16 --no-tui "http://127.0.0.1:$port/" > /dev/null
  callgrind_control --zero "$gw" > /dev/null 2>&1
  oha -n "$REQUESTS" -c 16 --no-tui "http://127.0.0.1:$port/" > "$RUN/oha.$port.txt"
  callgrind_control --dump "$gw" > /dev/null 2>&1
  kill -INT "$gw"; wait "$gw" || true
  grep -q 'Success rate:.*100.00%' "$RUN/oha.$port.txt" || { echo "instructions.sh: $bin: not every request succeeded" >&2; exit 1; }
  total="$(awk '/^summary:/ {print $2}' "$out.1")"
  printf '%-40s %12d %14d\n' "$bin" "$REQUESTS" $(( total / REQUESTS ))
done
