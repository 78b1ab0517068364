#!/usr/bin/env bash
# compare-https.sh — compare the berth gateway's HTTPS listener (rustls, ring provider) with nginx and HAProxy
# (both OpenSSL) on one machine, with the same certificate for all three.
#
#   bench/https/compare-https.sh [seconds]        default 10 s per measurement
#
# What it does, in one invocation:
#   1. makes a private run directory (mktemp) and generates one ECDSA P-256 certificate for
#      localhost / 127.0.0.1 with openssl; every target serves exactly this certificate and key,
#   2. starts, each on its own port of 127.0.0.1:
#        upstream  nginx, 1 worker, fixed 100-byte 200 body (the peer kit's upstream.nginx.conf)  18281
#        nginx     TLS reverse proxy (nginx.conf here)                                            18290
#        haproxy   TLS reverse proxy (haproxy.cfg here, combined PEM)                             18291
#        berth     $BERTH_BIN gateway --https ... --cert ... --key ... --no-http3                 18293
#      (berth's plain HTTP listener, unused, goes to 18294),
#   3. checks that every target answers 200 over HTTPS (curl -k) and serves the shared certificate,
#      prints what each negotiates (TLS 1.3 and TLS 1.2) and whether it resumes TLS 1.2 sessions, warms up,
#   4. measures three modes, each in interleaved rounds (round 1 = nginx, haproxy, berth; round 2 = the same
#      order again; ... ROUNDS, default 3), so slow drifts of a shared machine hit every target alike:
#        keepalive  wrk -t1 -c64 -d10s https://...                         one TLS handshake per connection
#        close      wrk -t1 -c16 -d10s -H 'Connection: close' https://...  a new connection per request
#        full       openssl s_time -new -time 10 -www /                    a full handshake per request
#      wrk 4.1 speaks TLS 1.2 only and offers its previous session on every reconnect (it keeps the SSL
#      object across connections), and all three targets resume TLS 1.2 sessions by default: in `close`
#      every request pays TCP set-up plus an abbreviated TLS 1.2 handshake. `full` makes a fresh TLS 1.3
#      handshake (ECDHE + ECDSA signature) per connection, one connection at a time,
#   5. prints per mode a table of per-target medians with ratios to nginx,
#   6. stops everything it started (also on Ctrl-C or error).
#
# Environment knobs (all optional):
#   ROUNDS=3  WARMUP=2  PAUSE=1           measured rounds (1..10), warm-up seconds per target and mode,
#                                         idle seconds between two measurements
#   MODES="keepalive close full"          subset / order of the modes
#   TARGETS="nginx haproxy berth"         subset / order of the targets
#   KEEPALIVE_CONNS=64  CLOSE_CONNS=16    wrk connections per mode
#   WRK_THREADS=1                         wrk threads (2 cores here: see the kit's compare.sh)
#   BERTH_BIN=<repo>/target/release/berth the berth binary
#   BENCH_KIT=<repo>/../shared/bench      the peer kit (its upstream config and wrk report script)
#   UPSTREAM_PORT=18281 NGINX_PORT=18290 HAPROXY_PORT=18291 BERTH_PORT=18293 BERTH_HTTP_PORT=18294
#   BENCH_KEEP=1                          keep the run directory (configs, logs, raw results) afterwards
#
# Every load run is bounded by its duration (wrk -d) and by `timeout`; every probe by its own time limit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then sed -n '2,40p' "$0"; exit 0; fi

DURATION="${1:-10}"
ROUNDS="${ROUNDS:-3}"
WARMUP="${WARMUP:-2}"
PAUSE="${PAUSE:-1}"
MODES="${MODES:-keepalive close full}"
KEEPALIVE_CONNS="${KEEPALIVE_CONNS:-64}"
CLOSE_CONNS="${CLOSE_CONNS:-16}"
WRK_THREADS="${WRK_THREADS:-1}"
BERTH_BIN="${BERTH_BIN:-$REPO/target/release/berth}"
BENCH_KIT="${BENCH_KIT:-$REPO/../shared/bench}"
UPSTREAM_PORT="${UPSTREAM_PORT:-18281}"
NGINX_PORT="${NGINX_PORT:-18290}"
HAPROXY_PORT="${HAPROXY_PORT:-18291}"
BERTH_PORT="${BERTH_PORT:-18293}"
BERTH_HTTP_PORT="${BERTH_HTTP_PORT:-18294}"
NPROC="$(nproc)"

die() { echo "compare-https.sh: $*" >&2; exit 2; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_uint "$DURATION" && [ "$DURATION" -ge 1 ] && [ "$DURATION" -le 600 ] || die "seconds must be 1..600"
is_uint "$ROUNDS" && [ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 10 ] || die "ROUNDS must be 1..10"
is_uint "$WARMUP" && [ "$WARMUP" -le 60 ] || die "WARMUP must be 0..60"
is_uint "$PAUSE" && [ "$PAUSE" -le 60 ] || die "PAUSE must be 0..60"
for c in "$KEEPALIVE_CONNS" "$CLOSE_CONNS" "$WRK_THREADS"; do
  is_uint "$c" && [ "$c" -ge 1 ] && [ "$c" -le 10000 ] || die "connection and thread counts must be 1..10000"
done
for m in $MODES; do
  case "$m" in keepalive|close|full) ;; *) die "unknown mode '$m' (known: keepalive close full)";; esac
done
for tool in wrk curl openssl python3 nginx timeout setsid; do
  command -v "$tool" >/dev/null || die "$tool not found (the peer kit's setup.sh installs nginx, haproxy and wrk)"
done
[ -f "$BENCH_KIT/conf/upstream.nginx.conf" ] && [ -f "$BENCH_KIT/conf/report.lua" ] \
  || die "the peer kit is missing at $BENCH_KIT (set BENCH_KIT)"

TARGETS="${TARGETS:-nginx haproxy berth}"
active=()
for t in $TARGETS; do
  case "$t" in
    nginx) ;;
    haproxy) command -v haproxy >/dev/null || { echo "skip haproxy: not installed" >&2; continue; } ;;
    berth) [ -x "$BERTH_BIN" ] || die "berth binary not found at $BERTH_BIN (cargo build --release -p berth)" ;;
    *) die "unknown target '$t' (known: nginx haproxy berth)";;
  esac
  active+=("$t")
done
[ "${#active[@]}" -gt 0 ] || die "no target to measure"

port_of() {
  case "$1" in
    upstream) echo "$UPSTREAM_PORT";; nginx) echo "$NGINX_PORT";; haproxy) echo "$HAPROXY_PORT";;
    berth) echo "$BERTH_PORT";;
  esac
}

# ------------------------------------------------------------ process control
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-https.XXXXXX")"
declare -A PIDS=()       # target -> pid (berth: process-group id, started with setsid)
STOPPED=0

alive() { kill -0 "$1" 2>/dev/null; }

stop_one() { # name
  local name="$1" pid="${PIDS[$1]:-}"
  [ -n "$pid" ] || return 0
  if [ "$name" = berth ]; then kill -TERM -- "-$pid" 2>/dev/null || true
  else kill -TERM "$pid" 2>/dev/null || true; fi
  for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then
    echo "compare-https.sh: $name (pid $pid) ignored SIGTERM for 5 s, sending SIGKILL" >&2
    if [ "$name" = berth ]; then kill -KILL -- "-$pid" 2>/dev/null || true
    else kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  wait "$pid" 2>/dev/null || true
  unset 'PIDS[$name]'
}

cleanup() {
  [ "$STOPPED" = 1 ] && return 0
  STOPPED=1
  local n
  for n in berth haproxy nginx upstream; do stop_one "$n"; done
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ "${BENCH_FAILED:-0}" = 1 ]; then
    echo "run directory kept: $RUN_DIR" >&2
  else
    rm -rf "$RUN_DIR"
  fi
}
trap cleanup EXIT
trap 'BENCH_FAILED=1; exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port timeout_s
  local name="$1" port="$2" limit=$(( $3 * 10 ))
  for _ in $(seq 1 "$limit"); do
    if ! alive "${PIDS[$name]}"; then
      BENCH_FAILED=1; echo "--- $RUN_DIR/$name.log:" >&2; tail -20 "$RUN_DIR/$name.log" >&2 || true
      die "$name exited during start-up"
    fi
    port_open "$port" && return 0
    sleep 0.1
  done
  BENCH_FAILED=1; die "$name did not listen on 127.0.0.1:$port within $3 s"
}

render() { # template output port
  sed -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@PORT@|$3|g" -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" \
      -e "s|@NPROC@|$NPROC|g" "$1" > "$2"
}

start_target() { # name
  local name="$1" port; port="$(port_of "$1")"
  if port_open "$port"; then BENCH_FAILED=1; die "port 127.0.0.1:$port is already in use (wanted for $name)"; fi
  case "$name" in
    upstream)
      mkdir -p "$RUN_DIR/upstream-tmp"
      render "$BENCH_KIT/conf/upstream.nginx.conf" "$RUN_DIR/upstream.conf" "$UPSTREAM_PORT"
      nginx -p "$RUN_DIR" -e "$RUN_DIR/upstream.error.log" -c "$RUN_DIR/upstream.conf" \
        >"$RUN_DIR/upstream.log" 2>&1 &
      ;;
    nginx)
      mkdir -p "$RUN_DIR/nginx-tmp"
      render "$HERE/nginx.conf" "$RUN_DIR/nginx.conf" "$port"
      nginx -p "$RUN_DIR" -e "$RUN_DIR/nginx.error.log" -c "$RUN_DIR/nginx.conf" \
        >"$RUN_DIR/nginx.log" 2>&1 &
      ;;
    haproxy)
      render "$HERE/haproxy.cfg" "$RUN_DIR/haproxy.cfg" "$port"
      haproxy -db -f "$RUN_DIR/haproxy.cfg" >"$RUN_DIR/haproxy.log" 2>&1 &
      ;;
    berth)
      if port_open "$BERTH_HTTP_PORT"; then
        BENCH_FAILED=1; die "port 127.0.0.1:$BERTH_HTTP_PORT is already in use (wanted for berth's HTTP listener)"
      fi
      # Own session/process group, so that everything it spawns is stopped with it.
      TMPDIR="$RUN_DIR" setsid "$BERTH_BIN" gateway --listen "127.0.0.1:$BERTH_HTTP_PORT" \
        --upstream "127.0.0.1:$UPSTREAM_PORT" --https "127.0.0.1:$port" \
        --cert "$RUN_DIR/cert.pem" --key "$RUN_DIR/key.pem" --no-http3 >"$RUN_DIR/berth.log" 2>&1 &
      ;;
  esac
  PIDS[$name]=$!
  wait_port "$name" "$port" 30
}

# One ECDSA P-256 certificate for localhost and 127.0.0.1, its key (PKCS#8), and both in one PEM for HAProxy.
make_cert() {
  timeout 30 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$RUN_DIR/key.pem" -out "$RUN_DIR/cert.pem" >"$RUN_DIR/openssl-req.log" 2>&1 \
    || { BENCH_FAILED=1; cat "$RUN_DIR/openssl-req.log" >&2; die "openssl could not generate the certificate"; }
  cat "$RUN_DIR/cert.pem" "$RUN_DIR/key.pem" > "$RUN_DIR/combined.pem"
  chmod 600 "$RUN_DIR/key.pem" "$RUN_DIR/combined.pem"
  CERT_FP="$(openssl x509 -in "$RUN_DIR/cert.pem" -noout -fingerprint -sha256 | sed 's/.*=//')"
}

check_200() { # name port
  local code
  code="$(curl -sk -o /dev/null -m 5 -w '%{http_code}' "https://127.0.0.1:$2/" || true)"
  if [ "$code" != 200 ]; then
    BENCH_FAILED=1; die "$1 on :$2 answered HTTPS '$code' instead of 200 (logs: $RUN_DIR)"
  fi
}

# Prints what a target negotiates with OpenSSL's defaults (TLS 1.3) and with TLS 1.2 (what wrk 4.1 speaks), and
# whether it resumes TLS 1.2 sessions (wrk offers the previous session on every reconnect); checks that it serves
# the shared certificate.
tls_params() { # name port
  local out12 out13 fp reused
  fp="$(timeout 10 openssl s_client -connect "127.0.0.1:$2" -servername localhost </dev/null 2>/dev/null \
        | openssl x509 -noout -fingerprint -sha256 2>/dev/null | sed 's/.*=//' || true)"
  if [ "$fp" != "$CERT_FP" ]; then
    BENCH_FAILED=1; die "$1 on :$2 does not serve the generated certificate (got '${fp:-none}')"
  fi
  out13="$(timeout 10 openssl s_client -connect "127.0.0.1:$2" -brief </dev/null 2>&1 || true)"
  out12="$(timeout 10 openssl s_client -tls1_2 -connect "127.0.0.1:$2" -brief </dev/null 2>&1 || true)"
  reused="$(timeout 20 openssl s_client -tls1_2 -reconnect -connect "127.0.0.1:$2" </dev/null 2>/dev/null \
            | grep -c '^Reused' || true)"
  brief() { awk -F': ' '/^Protocol version/ { p = $2 } /^Ciphersuite/ { c = $2 }
    /^(Peer|Server) Temp Key/ { split($2, k, ","); x = k[1] } END { print p, c, x }'; }
  echo "$(printf '%s\n' "$out13" | brief); $(printf '%s\n' "$out12" | brief); TLS 1.2 reconnects resumed: ${reused:-0}/5"
}

# CPU time (clock ticks, user+system) of a process and all its descendants.
tree_pids() { local p; echo "$1"; for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree_pids "$p"; done; }
cpu_ticks() { # name
  local name="$1" root="${PIDS[$1]}" total=0 p s
  for p in $(tree_pids "$root"); do
    s="$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')" || s=0
    total=$(( total + ${s:-0} ))
  done
  echo "$total"
}
CLK_TCK="$(getconf CLK_TCK)"

# Machine-wide CPU ticks from /proc/stat: "busy total" (busy = user + nice + system + steal; irq/softirq,
# where loopback packet processing is accounted, is left out).
sys_ticks() { awk '/^cpu / { b = $2 + $3 + $4 + $9; print b, b + $5 + $6 + $7 + $8; exit }' /proc/stat; }
# CPU ticks of this shell's finished children (wrk and the small tools). Sets CHILD_TICKS; call it directly,
# never inside $(...), because `times` must run in this shell.
child_ticks() {
  times > "$RUN_DIR/.times"
  CHILD_TICKS="$(awk -v clk="$CLK_TCK" 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] }
                                   printf "%d\n", t * clk }' "$RUN_DIR/.times")"
}

# measure NAME CMD...: runs the load command and sets MEASURE to the CPU ticks of the target and the share
# of the machine used by processes that are not ours (not the target, the upstream, wrk or this script).
measure() {
  local name="$1"; shift
  local s0 s1 c0 c1 t0 t1 u0 u1
  s0="$(sys_ticks)"; child_ticks; c0="$CHILD_TICKS"
  t0="$(cpu_ticks "$name")"; u0="$(cpu_ticks upstream)"
  "$@" || true
  t1="$(cpu_ticks "$name")"; u1="$(cpu_ticks upstream)"
  child_ticks; c1="$CHILD_TICKS"; s1="$(sys_ticks)"
  MEASURE="$(awk -v s0="$s0" -v s1="$s1" -v ours=$(( (t1 - t0) + (u1 - u0) + (c1 - c0) )) -v tt=$(( t1 - t0 )) '
    BEGIN { split(s0, a, " "); split(s1, b, " "); busy = b[1] - a[1]; total = b[2] - a[2]
            other = busy - ours; if (other < 0) other = 0
            printf "cpu_ticks=%d clk_tck=%d other_pct=%.1f", tt, '"$CLK_TCK"', (total > 0 ? 100 * other / total : 0) }')"
}

RESULTS="$RUN_DIR/results.tsv"
: > "$RESULTS"

wrk_args() { # mode -> wrk options (without the URL)
  if [ "$1" = keepalive ]; then echo "-t$WRK_THREADS -c$KEEPALIVE_CONNS"
  else echo "-t$WRK_THREADS -c$CLOSE_CONNS"; fi
}

run_wrk() { # mode name round
  local mode="$1" name="$2" round="$3" port out line extra=()
  port="$(port_of "$name")"
  out="$RUN_DIR/wrk-$mode-$name-r$round.txt"
  [ "$mode" = close ] && extra=(-H "Connection: close")
  # shellcheck disable=SC2046
  measure "$name" timeout $(( DURATION + 30 )) wrk $(wrk_args "$mode") -d"${DURATION}s" --timeout 5s "${extra[@]}" \
    -s "$BENCH_KIT/conf/report.lua" "https://127.0.0.1:$port/" > "$out" 2>&1
  line="$(grep '^BENCH ' "$out" || true)"
  if [ -z "$line" ]; then echo "  $name round $round: wrk produced no result (see $out)" >&2; BENCH_FAILED=1; return; fi
  printf '%s\t%s\t%s\t%s %s\n' "$mode" "$name" "$round" "${line#BENCH }" "$MEASURE" >> "$RESULTS"
  echo "  $mode round $round  $(printf '%-8s' "$name") $(echo "$line" | awk '{print $4, $7}') ${MEASURE##* }" >&2
}

# Full handshakes: `openssl s_time -new` opens one connection after the other, each with a fresh TLS 1.3
# handshake (no resumption) and one `GET / HTTP/1.0`. One client at a time: the rate is bounded by the round
# trip, so cpu us/req (per connection) is the column to compare, not req/s.
run_s_time() { # name round
  local name="$1" round="$2" port out n t0 t1
  port="$(port_of "$name")"
  out="$RUN_DIR/s_time-$name-r$round.txt"
  t0="$(date +%s.%N)"
  measure "$name" timeout $(( DURATION + 30 )) openssl s_time -connect "127.0.0.1:$port" -new -time "$DURATION" \
    -www / > "$out" 2>&1
  t1="$(date +%s.%N)"
  n="$(awk '/connections in .* real seconds/ { print $1; exit }' "$out")"
  if [ -z "$n" ]; then echo "  $name round $round: s_time produced no result (see $out)" >&2; BENCH_FAILED=1; return; fi
  # Same fields as the wrk report; s_time has no latency percentiles and no error count.
  printf '%s\t%s\t%s\t%s %s\n' full "$name" "$round" "$(awk -v n="$n" -v t0="$t0" -v t1="$t1" \
    'BEGIN { printf "requests=%d rps=%.1f p50_us=-1 p99_us=-1 err_none=0", n, n / (t1 - t0) }')" "$MEASURE" >> "$RESULTS"
  echo "  full round $round  $(printf '%-8s' "$name") connections=$n ${MEASURE##* }" >&2
}

warm_up() { # mode name
  [ "$WARMUP" -gt 0 ] && [ "$1" != full ] || return 0
  local extra=(); [ "$1" = close ] && extra=(-H "Connection: close")
  # shellcheck disable=SC2046
  timeout $(( WARMUP + 20 )) wrk $(wrk_args "$1") -d"${WARMUP}s" "${extra[@]}" "https://127.0.0.1:$(port_of "$2")/" \
    >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------- main
echo "== berth HTTPS bench, $(date -u '+%Y-%m-%dT%H:%M:%SZ'), nproc=$NPROC, $(uname -sr)"
echo "== modes: $MODES; wrk -t$WRK_THREADS -d${DURATION}s (keepalive: -c$KEEPALIVE_CONNS; close: -c$CLOSE_CONNS" \
  "-H 'Connection: close'), $ROUNDS interleaved rounds, warm-up ${WARMUP}s per target and mode"
echo "== targets: ${active[*]}    loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"

make_cert
echo "== certificate: ECDSA P-256, CN=localhost, SAN localhost + 127.0.0.1, sha256 $CERT_FP"
start_target upstream
for t in "${active[@]}"; do start_target "$t"; done
for t in "${active[@]}"; do check_200 "$t" "$(port_of "$t")"; done
echo "== all targets answer 200 over HTTPS with the same certificate; versions:" \
  "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), haproxy $(haproxy -v 2>/dev/null | awk 'NR==1{print $3}')," \
  "$(openssl version | awk '{print $1, $2}'), berth $("$BERTH_BIN" --version 2>/dev/null | awk '{print $2}') (rustls, ring)"
for t in "${active[@]}"; do
  echo "== $(printf '%-8s' "$t") negotiates $(tls_params "$t" "$(port_of "$t")")"
done

for mode in $MODES; do
  echo "== warm-up ($mode)" >&2
  for t in "${active[@]}"; do warm_up "$mode" "$t"; done
  for r in $(seq 1 "$ROUNDS"); do
    for t in "${active[@]}"; do
      sleep "$PAUSE"
      if [ "$mode" = full ]; then run_s_time "$t" "$r"; else run_wrk "$mode" "$t" "$r"; fi
    done
  done
done
echo "== loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------------- summary
python3 - "$RESULTS" "${active[*]}" "$MODES" "$KEEPALIVE_CONNS" "$CLOSE_CONNS" <<'PY'
import statistics, sys
path, order, modes = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
conns = {"keepalive": sys.argv[4], "close": sys.argv[5], "full": "1"}
titles = {
    "keepalive": "HTTPS keep-alive: wrk -c%s, one TLS handshake per connection",
    "close": "HTTPS connection per request: wrk -c%s -H 'Connection: close', TLS 1.2 with session resumption",
    "full": "HTTPS full handshake per request: openssl s_time -new -www /, one connection at a time, TLS 1.3",
}

def med(xs):
    return statistics.median(xs) if xs else float("nan")

rows = {}
for line in open(path):
    parts = line.rstrip("\n").split("\t")
    if len(parts) < 4:
        continue
    mode, name = parts[0], parts[1]
    kv = dict(p.split("=", 1) for p in " ".join(parts[3:]).split())
    errs = sum(int(kv[k]) for k in kv if k.startswith("err_"))
    req = int(kv["requests"])
    cpu_us = int(kv["cpu_ticks"]) * 1e6 / int(kv["clk_tck"])
    rows.setdefault(mode, {}).setdefault(name, []).append(dict(
        rps=float(kv["rps"]), p50=int(kv["p50_us"]) / 1000 if int(kv["p50_us"]) >= 0 else float("nan"),
        p99=int(kv["p99_us"]) / 1000 if int(kv["p99_us"]) >= 0 else float("nan"),
        errors=errs, cpu_per_req=cpu_us / req if req else float("nan"), other=float(kv.get("other_pct", "nan"))))

worst = 0.0
for mode in modes:
    by_name = rows.get(mode, {})
    names = [n for n in order if n in by_name]
    if not names:
        continue
    medians = {n: {k: med([r[k] for r in by_name[n]]) for k in by_name[n][0]} for n in names}
    ref = medians.get("nginx")

    def ratio(n, k):
        if not ref or not ref[k] or ref[k] != ref[k]:
            return "-"
        return "%.2f" % (medians[n][k] / ref[k])

    def spread(n):
        xs = [r["rps"] for r in by_name[n]]
        m = med(xs)
        return "%.0f%%" % (100 * (max(xs) - min(xs)) / m) if m else "-"

    print()
    print(titles[mode] % conns[mode] if "%s" in titles[mode] else titles[mode])
    print("Medians of %d interleaved rounds (ratios: target median / nginx median)" % max(len(by_name[n]) for n in names))
    hdr = "%-8s %9s %7s %8s %8s %7s %11s %7s %10s %10s %10s" % (
        "target", "req/s", "spread", "p50 ms", "p99 ms", "errors", "cpu us/req", "other%",
        "rps/nginx", "p99/nginx", "cpu/nginx")
    print(hdr); print("-" * len(hdr))
    for n in names:
        m = medians[n]
        ms = lambda v: "%8.3f" % v if v == v else "%8s" % "-"
        print("%-8s %9.0f %7s %s %s %7d %11.1f %7.1f %10s %10s %10s" % (
            n, m["rps"], spread(n), ms(m["p50"]), ms(m["p99"]), sum(r["errors"] for r in by_name[n]),
            m["cpu_per_req"], m["other"], ratio(n, "rps"), ratio(n, "p99"), ratio(n, "cpu_per_req")))
        worst = max([worst] + [r["other"] for r in by_name[n] if r["other"] == r["other"]])

print()
print("spread = (max - min) / median of req/s over the rounds; errors = total over all rounds (wrk: connect,")
print("read, write, non-2xx, timeout); cpu us/req = CPU time of the target's own processes per request;")
print("other% = median share of the machine's CPU used by processes outside this benchmark during the runs.")
print("wrk starts a request's latency clock when it writes the request, after the TLS handshake: in the")
print("`close` mode the handshake shows in req/s and cpu us/req, not in p50/p99. `full` (openssl s_time) has no")
print("latency percentiles: one connection at a time, so its req/s is bound by the round trip; compare cpu us/req.")
if worst > 10:
    print("WARNING: other processes used up to %.0f%% of the machine during a run: absolute numbers and"
          " req/s ratios are unreliable in this run; cpu us/req is the most robust column." % worst)
PY
