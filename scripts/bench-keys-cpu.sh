#!/usr/bin/env bash
# `just bench-keys-cpu`: where the time of many distinct keys goes. The gateway in `just
# bench`'s configuration, BENCH_KEYS (10,000) keys minted and warmed, then BENCH_RUNS (3)
# interleaved rounds of BENCH_CLOSED_SECONDS (10) at c=32 (wrk, one thread, the same script
# for one key and for many), each after BENCH_ROUND_WARM_SECONDS (10) of the same load not
# measured (leases and caches as under continuous traffic, not as the other kind of round
# left them): requests a second and the CPU each process spent per request
# (from /proc/<pid>/stat: gateway, every Postgres and Redis process, the mock), and the rate
# limiter's Redis claims per request. Prints one line per round and the gateway's peak RSS;
# writes nothing.
# BENCH_GATEWAY_ENV: settings for the gateway (`BLUESMINDS_LIMITS__LEASE_MS=10000 ...`).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench
RUNS=${BENCH_RUNS:-3}
CLOSED_SECONDS=${BENCH_CLOSED_SECONDS:-10}
ROUND_WARM_SECONDS=${BENCH_ROUND_WARM_SECONDS:-10}
KEYS_N=${BENCH_KEYS:-10000}
mkdir -p "$OUT"
. scripts/bench-lib.sh

setup_mock_and_database
# shellcheck disable=SC2086
start_gateway full ${BENCH_GATEWAY_ENV:-}
KEY=$(provision_key)
URL="http://$GW_ADDR/v1/chat/completions"
log "minting $KEYS_N keys"
python3 scripts/bench-keys.py "$GW_ADDR" bench@bluesminds.local "$BENCH_PASSWORD" "$KEYS_N" "$OUT/keys.txt"
echo "$KEY" > "$OUT/one-key.txt"
log "warming every key (its first use verifies it)"
WRK_SCRIPT=scripts/wrk-keys.lua WRK_KEYS_FILE="$OUT/keys.txt" wrk_load warmup-keys "$URL" "" -c32 -d20s

claims() { curl -s "http://$GW_ADDR/metrics" | awk '/^bluesminds_ratelimit_claims_total/ {s += $NF} END {print s + 0}'; }
HZ=$(getconf CLK_TCK)

log "$RUNS rounds of ${CLOSED_SECONDS} s at c=32 (each after ${ROUND_WARM_SECONDS} s unmeasured): one key, then $KEYS_N keys"
for run in $(seq 1 "$RUNS"); do
  for which in one-key keys; do
    WRK_SCRIPT=scripts/wrk-keys.lua WRK_KEYS_FILE="$OUT/$which.txt" \
      wrk_load "keys-cpu-$which-$run-warm" "$URL" "" -c32 "-d${ROUND_WARM_SECONDS}s"
    # shellcheck disable=SC2046
    set -- $(ticks "$GW_PID") $(ticks $(pgrep -x postgres)) $(ticks $(pgrep -x redis-server)) $(ticks "$MOCK_PID") $(claims)
    WRK_SCRIPT=scripts/wrk-keys.lua WRK_KEYS_FILE="$OUT/$which.txt" \
      wrk_load "keys-cpu-$which-$run" "$URL" "" -c32 "-d${CLOSED_SECONDS}s"
    # shellcheck disable=SC2046
    python3 - "$OUT/keys-cpu-$which-$run.wrk.json" "$which" "$HZ" "$@" \
      $(ticks "$GW_PID") $(ticks $(pgrep -x postgres)) $(ticks $(pgrep -x redis-server)) $(ticks "$MOCK_PID") $(claims) <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
which, hz = sys.argv[2], int(sys.argv[3])
before, after = [float(x) for x in sys.argv[4:9]], [float(x) for x in sys.argv[9:14]]
n = run["requests"]
us = [(a - b) * 1e6 / hz / n for a, b in zip(after[:4], before[:4])]
print(f"{which:8} {n / run['duration_us'] * 1e6:8.0f} req/s   CPU per request: gateway {us[0]:5.1f} µs, "
      f"Postgres {us[1]:5.1f} µs, Redis {us[2]:5.1f} µs, mock {us[3]:5.1f} µs;   "
      f"Redis claims per request {(after[4] - before[4]) / n:.3f};   errors {run['status_errors'] + run['socket_errors']}")
PY
  done
done
log "gateway peak RSS: $(hwm_kib "$GW_PID") KiB (the key cache, leases and held rollup sums of $KEYS_N keys)"
