#!/usr/bin/env bash
# timeline.sh — where a request's time goes at a low rate, step by step, behind nginx and gateway builds.
#
#   bench/timeline.sh [NAME=BINARY ...]        default: berth=target/release/berth
#
# At 120 req/s a proxy's p50 and p99 are made of wake-ups more than of work, and the totals do not say
# whose. This follows every request through the client (oha), the proxy and the replica (the kit's
# upstream nginx) with `perf record` of the scheduler's switches and the three processes' sends and
# receives, and splits it into five steps:
#   A  the client's write of the request until the proxy is on a CPU (or reads it)
#   B  until the proxy writes the request to the replica
#   C  until the replica writes its answer
#   D  until the proxy writes the answer to the client
#   E  until the client reads it
# For each step: p50 / p90 / p99 in µs, and the share of requests whose step crossed from one CPU to
# another (on a VM a wake-up of the other, halted vCPU is a step's largest cost). Targets are measured in
# interleaved rounds; the summary gives the median of the rounds. Tracing slows every step: compare
# targets within a run, not with untraced numbers.
#
# Knobs: ROUNDS=3, SECS=4 (traced per round), RATE=120, CONNS=16. Needs nginx, oha, wrk, curl, perf
# (apt install linux-perf), python3, root (or perf_event_paranoid <= 0), and x86_64 (system call numbers).
# Loopback only; every run is bounded.
#
# Example: bench/timeline.sh before=/tmp/berth-before after=target/release/berth
set -euo pipefail

SCRIPT=timeline.sh
source "$(dirname "${BASH_SOURCE[0]}")/peers.sh"
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then sed -n '2,24p' "$0"; exit 2; fi
[ "$#" -gt 0 ] || set -- "berth=$(dirname "${BASH_SOURCE[0]}")/../target/release/berth"
ROUNDS="${ROUNDS:-3}"
SECS="${SECS:-4}"
RATE="${RATE:-120}"
CONNS="${CONNS:-16}"
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && [ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 10 ] || die "ROUNDS must be 1..10"
[[ "$SECS" =~ ^[0-9]+$ ]] && [ "$SECS" -ge 1 ] && [ "$SECS" -le 30 ] || die "SECS must be 1..30"
[ "$(uname -m)" = x86_64 ] || die "the system call numbers below are x86_64's"
command -v perf >/dev/null || die "perf is not installed (apt install linux-perf)"
needs nginx oha wrk curl python3
children() { pgrep -d, -P "$1" || true; }

start_upstream
start_kit_nginx
start_gateways "$@"
warm_up "$CONNS"
upstream_workers="$(children "$upstream")"
# nginx's requests are served by its workers; a gateway's by its own threads.
proxy_pids() { if [ "$1" = nginx ]; then children "${PID[nginx]}"; else echo "${PID[$1]}"; fi; }

echo "== oha -q $RATE -c $CONNS, $SECS s traced per target, $ROUNDS interleaved rounds: ${NAMES[*]}"
echo "   steps p50/p90/p99 µs; x: share of requests whose step crossed CPUs"
for round in $(seq "$ROUNDS"); do
  for name in "${NAMES[@]}"; do
    sleep 1
    timeout $(( SECS + 30 )) oha --no-tui -q "$RATE" -z "$(( SECS + 2 ))s" -c "$CONNS" \
      "http://127.0.0.1:${PORT[$name]}/" > /dev/null 2>&1 & load=$!; PIDS+=($!)
    sleep 1 # oha's threads are up, and the rate is steady
    client="$(children "$load")" # oha, under timeout
    [ -n "$client" ] || die "$name round $round: oha did not start"
    # write, writev, sendto on the way in; read, recvfrom on the way out.
    timeout $(( SECS + 30 )) perf record -q -o "$RUN/perf.data" -e sched:sched_switch \
      -e raw_syscalls:sys_enter --filter 'id == 1 || id == 20 || id == 44' \
      -e raw_syscalls:sys_exit --filter 'id == 0 || id == 45' \
      -p "$client,$(proxy_pids "$name"),$upstream_workers" -- sleep "$SECS" 2> /dev/null \
      || die "perf record failed (root, or kernel.perf_event_paranoid <= 0, and tracepoints are needed)"
    wait "$load" || true
    perf script -i "$RUN/perf.data" -F pid,tid,cpu,time,event,trace 2> /dev/null > "$RUN/trace.txt"
    python3 - "$name" "$round" "$RUN/trace.txt" "$client" "$(proxy_pids "$name")" "$upstream_workers" \
      >> "$RUN/results.tsv" <<'PY'
import re, sys
name, rnd, path = sys.argv[1:4]
pids = [{int(p) for p in arg.split(",") if p} for arg in sys.argv[4:7]]
role_of_pid = {pid: role for role, group in zip("cpu", pids) for pid in group}
line_re = re.compile(r"^\s*(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
events, role_of_tid = [], {}
for line in open(path):
    m = line_re.match(line)
    if not m:
        continue
    pid, tid, cpu, at, event, rest = int(m[1]), int(m[2]), int(m[3]), float(m[4]) * 1e6, m[5], m[6]
    role = role_of_pid.get(pid)
    if event == "sched:sched_switch":
        nxt = re.search(r"next_pid=(\d+)", rest)
        if nxt:
            events.append([at, None, "on", int(nxt[1]), cpu])
    elif event == "raw_syscalls:sys_enter" and role:
        nr, size = re.match(r"NR (\d+) \((\w+), (\w+), (\w+)", rest).group(1, 4)
        if nr == "1" and int(size, 16) <= 8:
            continue  # an eventfd's wake-up, not a message
        role_of_tid[tid] = role
        events.append([at, role, "send", tid, cpu])
    elif event == "raw_syscalls:sys_exit" and role:
        if int(re.match(r"NR \d+ = (-?\d+)", rest)[1]) > 8:
            role_of_tid[tid] = role
            events.append([at, role, "recv", tid, cpu])
for event in events:
    event[1] = event[1] or role_of_tid.get(event[3])
events.sort(key=lambda e: e[0])

def next_event(i, wanted, until):
    while i < len(events) and events[i][0] <= until:
        if wanted(events[i]):
            return i
        i += 1
    return None

steps = [
    lambda e: e[1] == "p" and e[2] in ("on", "recv"),
    lambda e: e[1] == "p" and e[2] == "send",
    lambda e: e[1] == "u" and e[2] == "send",
    lambda e: e[1] == "p" and e[2] == "send",
    lambda e: e[1] == "c" and e[2] == "recv",
]
times, crossed = [[] for _ in range(6)], [0] * 5
i = 0
while i < len(events):
    if events[i][1:3] != ["c", "send"]:
        i += 1
        continue
    chain, j = [i], i
    for wanted in steps:
        j = next_event(j + 1, wanted, events[i][0] + 5000)
        if j is None:
            break
        chain.append(j)
    if j is None:
        i += 1
        continue
    at = [events[k][0] for k in chain]
    cpus = [events[k][4] for k in chain]
    for step in range(5):
        times[step].append(at[step + 1] - at[step])
        crossed[step] += cpus[step + 1] != cpus[step]
    times[5].append(at[5] - at[0])
    i = j + 1

def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else 0.0

n = len(times[5])
cells = [f"{pct(v, .5):.0f}/{pct(v, .9):.0f}/{pct(v, .99):.0f}" for v in times]
shares = [f"{100 * c / max(1, n):.0f}" for c in crossed]
print("\t".join([rnd, name, str(n)] + cells + shares))
PY
    tail -1 "$RUN/results.tsv" | awk -F'\t' '{ printf "  round %s  %-10s n=%-5s A %s x%s%%  B %s x%s%%  C %s x%s%%  D %s x%s%%  E %s x%s%%  whole %s\n",
      $1, $2, $3, $4, $10, $5, $11, $6, $12, $7, $13, $8, $14, $9 }'
  done
done

python3 - "$RUN/results.tsv" "${NAMES[@]}" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
print("\nMedians of the rounds: p50 µs of each step (share crossing CPUs), whole request p50/p90/p99")
print("%-10s %-10s %-10s %-10s %-10s %-10s %s" % ("target", "A", "B", "C", "D", "E", "whole"))
for name in sys.argv[2:]:
    mine = [r for r in rows if r[1] == name]
    med = lambda col, part: statistics.median(float(r[col].split("/")[part]) for r in mine)
    steps = ["%.0f (%.0f%%)" % (med(3 + s, 0), statistics.median(float(r[9 + s]) for r in mine)) for s in range(5)]
    whole = "%.0f/%.0f/%.0f" % (med(8, 0), med(8, 1), med(8, 2))
    print("%-10s %s %s" % (name, " ".join("%-10s" % s for s in steps), whole))
PY
