#!/usr/bin/env bash
# `just bench`: the gateway in its production configuration (Postgres, Redis limits on but not
# hit, usage written to Postgres, a bcrypt-stored key) against `bluesminds-mock`, measured in
# one run on this machine with `oha`: closed loop (direct and through the gateway), open loop
# at fixed rates, streaming time to first chunk, memory idle / at peak / holding 1,000
# streams, attribution (limits off, usage off: two more gateways, measured in turn with the
# full one in each closed-loop round) and usage completeness. Writes a dated section
# into docs/BENCHMARKS.md above the previous ones.
#
# Knobs: BENCH_RUNS (3), BENCH_REQUESTS (closed-loop requests per run, 60000),
# BENCH_RATES ("500 2000 5000"), BENCH_SECONDS (open-loop seconds per rate, 5),
# BENCH_WRITE (1: update docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench
RUNS=${BENCH_RUNS:-3}
REQUESTS=${BENCH_REQUESTS:-60000}
RATES=${BENCH_RATES:-"500 2000 5000"}
SECONDS_PER_RATE=${BENCH_SECONDS:-5}
WRITE=${BENCH_WRITE:-1}
. scripts/bench-lib.sh

setup_mock_and_database

log "gateway (production configuration), and two more for the attribution"
start_gateway full
FULL_PID=$GW_PID
KEY=$(provision_key)
# The same gateway with limits off and with usage off, on their own ports, measured in turn
# with the full one in every closed-loop round: this machine's speed drifts between minutes,
# so configurations measured one after another would not be comparable.
LIMITS_OFF_ADDR=127.0.0.1:3402
USAGE_OFF_ADDR=127.0.0.1:3403
BIND=$LIMITS_OFF_ADDR start_gateway limits-off BLUESMINDS_LIMITS__ENABLED=false
LIMITS_OFF_PID=$GW_PID
BIND=$USAGE_OFF_ADDR start_gateway usage-off BLUESMINDS_USAGE__ENABLED=false
USAGE_OFF_PID=$GW_PID
GW_PID=$FULL_PID
sleep 1
record "{\"phase\":\"rss\",\"what\":\"idle\",\"kib\":$(rss_kib "$GW_PID")}"
ROWS_BEFORE=$(usage_rows)
SERVED=0
served() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['statusCodeDistribution'].get('200',0))" "$OUT/$1.json"; }

log "closed loop: $RUNS x $REQUESTS requests at concurrency 64: direct, through the gateway, limits off, usage off"
load warmup "http://$GW_ADDR/v1/chat/completions" "$KEY" -n 5000 -c 64
SERVED=$((SERVED + $(served warmup)))
load warmup-limits-off "http://$LIMITS_OFF_ADDR/v1/chat/completions" "$KEY" -n 5000 -c 64
SERVED=$((SERVED + $(served warmup-limits-off)))
load warmup-usage-off "http://$USAGE_OFF_ADDR/v1/chat/completions" "$KEY" -n 5000 -c 64
for run in $(seq 1 "$RUNS"); do
  load "closed-direct-c64-$run" "http://$MOCK_ADDR/v1/chat/completions" "" -n "$REQUESTS" -c 64
  load "closed-gateway-c64-$run" "http://$GW_ADDR/v1/chat/completions" "$KEY" -n "$REQUESTS" -c 64
  SERVED=$((SERVED + $(served "closed-gateway-c64-$run")))
  load "closed-limits-off-c64-$run" "http://$LIMITS_OFF_ADDR/v1/chat/completions" "$KEY" -n "$REQUESTS" -c 64
  SERVED=$((SERVED + $(served "closed-limits-off-c64-$run")))
  load "closed-usage-off-c64-$run" "http://$USAGE_OFF_ADDR/v1/chat/completions" "$KEY" -n "$REQUESTS" -c 64
done
record "{\"phase\":\"rss\",\"what\":\"peak\",\"kib\":$(hwm_kib "$GW_PID")}"

log "closed loop at concurrency 1"
for run in $(seq 1 "$RUNS"); do
  load "closed-direct-c1-$run" "http://$MOCK_ADDR/v1/chat/completions" "" -n 5000 -c 1
  curl -s "http://$GW_ADDR/metrics" > "$OUT/metrics-before.txt"
  load "closed-gateway-c1-$run" "http://$GW_ADDR/v1/chat/completions" "$KEY" -n 5000 -c 1
  curl -s "http://$GW_ADDR/metrics" > "$OUT/metrics-after.txt"
  record "{\"phase\":\"overhead\",\"what\":\"c1\",\"run\":$run,$(overhead_between "$OUT/metrics-before.txt" "$OUT/metrics-after.txt")}"
  SERVED=$((SERVED + $(served "closed-gateway-c1-$run")))
done

log "open loop at $RATES requests per second"
for rate in $RATES; do
  n=$((rate * SECONDS_PER_RATE))
  for run in $(seq 1 "$RUNS"); do
    load "open-direct-$rate-$run" "http://$MOCK_ADDR/v1/chat/completions" "" -n "$n" -c 256 -q "$rate" --latency-correction
    curl -s "http://$GW_ADDR/metrics" > "$OUT/metrics-before.txt"
    load "open-gateway-$rate-$run" "http://$GW_ADDR/v1/chat/completions" "$KEY" -n "$n" -c 256 -q "$rate" --latency-correction
    curl -s "http://$GW_ADDR/metrics" > "$OUT/metrics-after.txt"
    record "{\"phase\":\"overhead\",\"what\":\"open-$rate\",\"run\":$run,$(overhead_between "$OUT/metrics-before.txt" "$OUT/metrics-after.txt")}"
    SERVED=$((SERVED + $(served "open-gateway-$rate-$run")))
  done
done

log "streaming: time to first chunk, direct and through the gateway"
for run in $(seq 1 "$RUNS"); do
  d=$("$BIN"/bluesminds-streams ttft --addr "$MOCK_ADDR" --n 300 --body "$STREAM")
  g=$("$BIN"/bluesminds-streams ttft --addr "$GW_ADDR" --key "$KEY" --n 300 --body "$STREAM")
  record "{\"phase\":\"stream\",\"run\":$run,\"direct\":$d,\"gateway\":$g}"
  SERVED=$((SERVED + 330))
done

log "memory holding 1000 open streams"
coproc HOLDER { "$BIN"/bluesminds-streams hold --addr "$GW_ADDR" --key "$KEY" --n 1000 --body "$HOLD"; }
read -r line <&"${HOLDER[0]}" || die "the streams did not open"
[ "$line" = "holding 1000" ] || die "unexpected: $line"
record "{\"phase\":\"rss\",\"what\":\"streams\",\"kib\":$(rss_kib "$GW_PID")}"
echo >&"${HOLDER[1]}"
wait "$HOLDER_PID" || true
SERVED=$((SERVED + 1000))

log "usage completeness (every gateway that writes usage stopped, so its queue is written)"
stop_gateway "$USAGE_OFF_PID"
stop_gateway "$LIMITS_OFF_PID"
stop_gateway "$FULL_PID"
ROWS=$(( $(usage_rows) - ROWS_BEFORE ))
record "{\"phase\":\"usage\",\"served\":$SERVED,\"rows\":$ROWS}"
echo "served $SERVED, usage rows $ROWS"

log "report"
python3 scripts/bench_report.py report "$OUT" "$WRITE"
