#!/usr/bin/env bash
# ab.sh — A/B of gateway builds beside nginx, in alternating rounds, on one upstream.
#
#   bench/ab.sh [--throughput] [--same-job] [--twin] [NAME=BINARY ...]
#
# For a change to the gateway, `cargo xtask bench` says where berth stands against its peers; this says
# whether the change moved it. Every binary runs `berth gateway` in front of the kit's upstream (one nginx
# worker, ../shared/bench/conf/upstream.nginx.conf), beside the kit's nginx proxy; each round measures
# nginx and every build in turn, so slow drifts of the machine hit them alike, and the summary gives the
# median of the rounds and its ratio to nginx's. Default: latency at a fixed rate (oha, corrected for
# coordinated omission); --throughput: wrk at saturation (req/s, p99). CPU per request is each target's own
# CPU time (utime + stime of its processes, in clock ticks: coarse in short rounds) over the requests served.
# --same-job adds `nginx-same`: the kit's nginx made to do the gateway's header work too (the client's
# Host passed on, X-Forwarded-For/-Proto/-Host, X-Source, X-Request-Id and a traceparent to the replica,
# X-Request-Id back to the client), so that the replica gets the same bytes from both; ratios stay to the
# kit's nginx. --twin adds `nginx-twin`, a second copy of the kit's nginx: what an A/A comparison gives on
# this machine, i.e. how far a proxy that costs exactly nginx's lands from 1.0 in a run of this many rounds
# (with --twin or --same-job no build is needed).
#
# Knobs: ROUNDS=6, SECS=12 (per measurement), RATE=120 and CONNS=16 (latency), CONNS=64 (throughput).
# Needs nginx, oha, wrk, curl, python3 (../shared/bench/setup.sh). Loopback only; every run is bounded.
#
# Example: bench/ab.sh before=/tmp/berth-before after=target/release/berth
set -euo pipefail

SCRIPT=ab.sh
source "$(dirname "${BASH_SOURCE[0]}")/peers.sh"
MODE=latency
SAME_JOB=
TWIN=
while true; do
  case "${1:-}" in
    --throughput) MODE=throughput; shift ;;
    --same-job) SAME_JOB=1; shift ;;
    --twin) TWIN=1; shift ;;
    *) break ;;
  esac
done
if { [ "$#" -eq 0 ] && [ -z "$SAME_JOB$TWIN" ]; } || [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  sed -n '2,23p' "$0"; exit 2
fi
ROUNDS="${ROUNDS:-6}"
SECS="${SECS:-12}"
RATE="${RATE:-120}"
if [ "$MODE" = latency ]; then CONNS="${CONNS:-16}"; else CONNS="${CONNS:-64}"; fi
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && [ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || die "ROUNDS must be 1..20"
[[ "$SECS" =~ ^[0-9]+$ ]] && [ "$SECS" -ge 1 ] && [ "$SECS" -le 120 ] || die "SECS must be 1..120"
needs nginx oha wrk curl python3
# CPU time (clock ticks) of a process and its children, threads included.
cpu_ticks() { # pid
  local total=0 pid
  for pid in $1 $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}

# nginx_copy NAME [SED_ARGS...]: the kit's nginx once more, as target NAME from a directory of its own, its
# config rendered and then edited with SED_ARGS.
nginx_copy() {
  local name="$1" dir="$RUN/$1"; shift
  mkdir -p "$dir/nginx-tmp"
  PORT[$name]="$(free_port)"
  render "$CONF/nginx.conf" "$dir/nginx.conf.in" "${PORT[$name]}" "$upstream_port"
  sed -e "s|$RUN/|$dir/|g" "$@" "$dir/nginx.conf.in" > "$dir/nginx.conf"
  start_nginx "$name" "$dir" "$dir/nginx.conf"
}

start_upstream
start_kit_nginx
if [ -n "$SAME_JOB" ]; then
  # The gateway's request fields, in the same order and of the same length (nginx has no traceparent of its
  # own: the request id is its trace id).
  same='proxy_set_header Connection ""; proxy_set_header Host $http_host;'
  same+=' proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;'
  same+=' proxy_set_header X-Forwarded-Host $http_host; proxy_set_header X-Source external;'
  same+=' proxy_set_header X-Request-Id $request_id;'
  same+=' proxy_set_header traceparent "00-$request_id-00f067aa0ba902b7-01"; add_header X-Request-Id $request_id always;'
  nginx_copy nginx-same -e "s|proxy_set_header Connection \"\";|$same|"
  grep -q X-Forwarded-For "$RUN/nginx-same/nginx.conf" || die "the kit's nginx.conf has no 'proxy_set_header Connection \"\";' to extend"
fi
[ -z "$TWIN" ] || nginx_copy nginx-twin
[ "$#" -eq 0 ] || start_gateways "$@"
warm_up "$CONNS"

if [ "$MODE" = latency ]; then
  echo "== oha -q $RATE -c $CONNS -z ${SECS}s --latency-correction, $ROUNDS alternating rounds: ${NAMES[*]}"
else
  echo "== wrk -t1 -c$CONNS -d${SECS}s, $ROUNDS alternating rounds: ${NAMES[*]}"
fi
results="$RUN/results.tsv"
hz="$(getconf CLK_TCK)"
for round in $(seq "$ROUNDS"); do
  for name in "${NAMES[@]}"; do
    sleep 1
    url="http://127.0.0.1:${PORT[$name]}/"
    before="$(cpu_ticks "${PID[$name]}")"
    if [ "$MODE" = latency ]; then
      timeout $(( SECS + 30 )) oha --no-tui --output-format json --latency-correction -w -z "${SECS}s" -q "$RATE" \
        -c "$CONNS" -t 5s "$url" > "$RUN/out.json" 2>/dev/null || true
      line="$(python3 -c 'import json,sys
d=json.load(open(sys.argv[1])); p=d["latencyPercentiles"]; s=d["summary"]
n=sum(d.get("statusCodeDistribution", {}).values())
print("%.0f\t%.3f\t%.3f\t%.3f\t%d" % (n, p["p50"]*1e3, p["p90"]*1e3, p["p99"]*1e3, round(n * (1 - (s["successRate"] or 0)))))' \
        "$RUN/out.json" 2>/dev/null)" || die "$name round $round: oha gave no result"
    else
      line="$(timeout $(( SECS + 30 )) wrk -t1 -c"$CONNS" -d"${SECS}s" --timeout 5s --latency "$url" | python3 -c 'import re,sys
t=sys.stdin.read(); n=int(re.search(r"(\d+) requests in", t).group(1))
bad=sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t))
m=re.search(r"Non-2xx or 3xx responses: (\d+)", t); bad+=int(m.group(1)) if m else 0
v, unit = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", t, re.M).groups()
p99 = float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
print("%d\t%.1f\t%.3f\t%d" % (n, n / float(sys.argv[1]), p99, bad))' "$SECS")" || die "$name round $round: wrk gave no result"
    fi
    after="$(cpu_ticks "${PID[$name]}")"
    requests="${line%%$'\t'*}"
    cpu_us="$(python3 -c 'import sys; t,h,n=map(float,sys.argv[1:]); print("%.1f" % (t/h*1e6/n if n else 0))' \
      "$(( after - before ))" "$hz" "$requests")"
    printf '%s\t%s\t%s\t%s\n' "$round" "$name" "$line" "$cpu_us" | tee -a "$results" | sed 's/^/  /'
  done
done

python3 - "$MODE" "$results" "${NAMES[@]}" <<'PY'
import statistics, sys
mode, path, names = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = [line.rstrip("\n").split("\t") for line in open(path)]
if mode == "latency":
    cols = [("p50 ms", 3), ("p90 ms", 4), ("p99 ms", 5)]
    errors, cpu = 6, 7
else:
    cols = [("req/s", 3), ("p99 ms", 4)]
    errors, cpu = 5, 6
med = {n: {c: statistics.median(float(r[i]) for r in rows if r[1] == n) for c, i in cols + [("cpu us/req", cpu)]}
       for n in names}
head = ["target"] + [c for c, _ in cols] + ["cpu us/req", "errors"] + ["%s/nginx" % c.split()[0] for c, _ in cols]
print("\nMedians of the rounds (ratios: target median / nginx median)")
print("  ".join("%-10s" % h for h in head))
for n in names:
    errs = sum(int(r[errors]) for r in rows if r[1] == n)
    vals = ["%-10.*f" % (0 if c == "req/s" else 3, med[n][c]) for c, _ in cols]
    vals += ["%-10.1f" % med[n]["cpu us/req"], "%-10d" % errs]
    ratios = ["%-10.2f" % (med[n][c] / med["nginx"][c] if med["nginx"][c] else 0) for c, _ in cols]
    print("  ".join(["%-10s" % n] + vals + ratios))
PY
