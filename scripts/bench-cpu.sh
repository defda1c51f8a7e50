#!/usr/bin/env bash
# `just bench-cpu`: where the CPU of a request goes, process by process. The gateway as in
# `just bench`, the same gateway with usage off, and the bare proxy, each in front of the same
# mock under wrk at c=32 (one thread) for BENCH_CLOSED_SECONDS (10) a round, BENCH_RUNS (3)
# interleaved rounds: requests a second, and the CPU time (from /proc/<pid>/stat) each process
# spent per request: the proxy (gateway or bare; of it, in user space), every Postgres and
# Redis process, the mock, and the whole machine (wrk and the kernel's softirq work included).
# Throughput at c=32 is that chain's CPU per request: this shows what each part of it costs.
# GW_BIN measures another build. Writes nothing to docs/.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench-cpu
RUNS=${BENCH_RUNS:-3}
SECS=${BENCH_CLOSED_SECONDS:-10}
. scripts/bench-lib.sh

USAGE_OFF_ADDR=127.0.0.1:3402
setup_mock_and_database
start_bare_proxy
start_gateway full
FULL_PID=$GW_PID
KEY=$(provision_key)
BIND=$USAGE_OFF_ADDR start_gateway usage-off BLUESMINDS_USAGE__ENABLED=false
OFF_PID=$GW_PID

# User ticks of one process; the machine's busy ticks (`ticks` is in bench-lib.sh).
user_ticks() { awk '{print $14}' "/proc/$1/stat"; }
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
HZ=$(getconf CLK_TCK)
snapshot() { # pid
  # shellcheck disable=SC2046
  echo "$(ticks "$1") $(user_ticks "$1") $(ticks $(pgrep -x postgres)) $(ticks $(pgrep -x redis-server)) $(ticks "$MOCK_PID") $(busy_ticks)"
}

for addr in "$GW_ADDR" "$USAGE_OFF_ADDR" "$BARE_ADDR"; do
  wrk_load cpu-warm "http://$addr/v1/chat/completions" "$KEY" -c32 -d3s
done
log "$RUNS interleaved rounds of ${SECS} s at c=32: gateway, gateway with usage off, bare proxy"
echo "CPU µs per request:    req/s   proxy (user)  Postgres  Redis  mock  machine"
for run in $(seq 1 "$RUNS"); do
  for which in gateway usage-off bare; do
    case $which in
      gateway) addr=$GW_ADDR; pid=$FULL_PID ;;
      usage-off) addr=$USAGE_OFF_ADDR; pid=$OFF_PID ;;
      bare) addr=$BARE_ADDR; pid=$BARE_PID ;;
    esac
    before=$(snapshot "$pid")
    wrk_load "cpu-$which-$run" "http://$addr/v1/chat/completions" "$KEY" -c32 "-d${SECS}s"
    # shellcheck disable=SC2086
    python3 - "$OUT/cpu-$which-$run.wrk.json" "$which" "$HZ" $before $(snapshot "$pid") <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
which, hz = sys.argv[2], int(sys.argv[3])
v = [float(x) for x in sys.argv[4:]]
before, after = v[:6], v[6:]
n = run["requests"]
us = [(a - b) / hz * 1e6 / n for a, b in zip(after, before)]
rate = n / (run["duration_us"] / 1e6)
errors = run["socket_errors"] + run["status_errors"]
print(f"{which:>10} {rate:10,.0f}   {us[0]:5.1f} ({us[1]:4.1f})  {us[2]:8.1f}  {us[3]:5.1f}  {us[4]:4.1f}  {us[5]:7.1f}"
      + (f"  ({errors} errors)" if errors else ""), flush=True)
PY
  done
done
