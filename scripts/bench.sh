#!/usr/bin/env bash
# `just bench`: the gateway in its production configuration (Postgres, Redis limits on but not
# hit, usage written to Postgres, a bcrypt-stored key) against `bluesminds-mock`, measured in
# one run on this machine, at the client, as users see it: closed loop with wrk (one thread,
# c=32 for throughput, c=1 for latency) direct to the mock, through a bare pooled hyper proxy
# that does nothing else (`bluesminds-bare-proxy`: the limit line every ratio is taken to),
# through the gateway, and through the gateway with limits off and with usage off (the
# attribution), in interleaved rounds; open loop at fixed rates with oha; streaming time to
# first chunk; 10,000 distinct keys against one; memory idle, at peak, after the many keys and
# holding 1,000 streams; usage completeness. Writes a
# dated section into docs/BENCHMARKS.md above the previous ones.
#
# Knobs: BENCH_RUNS (rounds, 3), BENCH_CLOSED_SECONDS (per closed-loop run, 10), BENCH_KEYS
# (distinct keys of the many-keys rounds, 10000; 0 skips them), BENCH_ROUND_WARM_SECONDS (the
# same load, not measured, before each many-keys or one-key round, 10),
# BENCH_RATES ("500 2000 5000"), BENCH_SECONDS (open-loop seconds per rate, 5),
# BENCH_WRITE (1: update docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench
RUNS=${BENCH_RUNS:-3}
CLOSED_SECONDS=${BENCH_CLOSED_SECONDS:-10}
KEYS_N=${BENCH_KEYS:-10000}
ROUND_WARM_SECONDS=${BENCH_ROUND_WARM_SECONDS:-10}
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
start_bare_proxy
record "{\"phase\":\"rss\",\"what\":\"idle\",\"kib\":$(rss_kib "$GW_PID")}"
ROWS_BEFORE=$(usage_rows)

# name -> URL and key of each closed-loop path
declare -A URL=(
  [direct]="http://$MOCK_ADDR/v1/chat/completions"
  [bare]="http://$BARE_ADDR/v1/chat/completions"
  [gateway]="http://$GW_ADDR/v1/chat/completions"
  [limits-off]="http://$LIMITS_OFF_ADDR/v1/chat/completions"
  [usage-off]="http://$USAGE_OFF_ADDR/v1/chat/completions"
)
key_for() { case $1 in direct|bare) echo "";; *) echo "$KEY";; esac; }

log "warm-up: 3 s of each path at c=32"
for path in direct bare gateway limits-off usage-off; do
  wrk_load "warmup-$path" "${URL[$path]}" "$(key_for "$path")" -c32 -d3s
done

log "closed loop: $RUNS rounds of ${CLOSED_SECONDS} s per path at c=32 (wrk -t1): direct, bare proxy, gateway, limits off, usage off"
for run in $(seq 1 "$RUNS"); do
  for path in direct bare gateway limits-off usage-off; do
    wrk_load "closed-$path-c32-$run" "${URL[$path]}" "$(key_for "$path")" -c32 "-d${CLOSED_SECONDS}s"
  done
done
record "{\"phase\":\"rss\",\"what\":\"peak\",\"kib\":$(hwm_kib "$GW_PID")}"

log "closed loop at c=1: $RUNS rounds of ${CLOSED_SECONDS} s per path: direct, bare proxy, gateway"
for run in $(seq 1 "$RUNS"); do
  for path in direct bare gateway; do
    [ "$path" = gateway ] && curl -s "http://$GW_ADDR/metrics" > "$OUT/metrics-before.txt"
    wrk_load "closed-$path-c1-$run" "${URL[$path]}" "$(key_for "$path")" -c1 "-d${CLOSED_SECONDS}s"
  done
  curl -s "http://$GW_ADDR/metrics" > "$OUT/metrics-after.txt"
  record "{\"phase\":\"overhead\",\"what\":\"c1\",\"run\":$run,$(overhead_between "$OUT/metrics-before.txt" "$OUT/metrics-after.txt")}"
done

if [ "$(nproc)" -ge 2 ]; then
  # The same c=1 runs with the request chain (wrk, the proxy or gateway, the mock) on core 0
  # and Postgres and Redis on core 1, as when the database runs on a host of its own: what is
  # left of the c=1 tail is the gateway's; what goes away came from sharing two cores with the
  # database's writes.
  log "closed loop at c=1, the request chain on core 0, Postgres and Redis on core 1: bare proxy, gateway"
  DATA_PIDS=$(pgrep -x postgres; pgrep -x redis-server)
  # shellcheck disable=SC2086
  pin 1 $DATA_PIDS
  pin 0 "$MOCK_PID" "$BARE_PID" "$FULL_PID"
  for run in $(seq 1 "$RUNS"); do
    for path in bare gateway; do
      WRK_PIN=0 wrk_load "pinned-$path-c1-$run" "${URL[$path]}" "$(key_for "$path")" -c1 "-d${CLOSED_SECONDS}s"
    done
  done
  all="0-$(( $(nproc) - 1 ))"
  # shellcheck disable=SC2086
  pin "$all" $DATA_PIDS "$MOCK_PID" "$BARE_PID" "$FULL_PID"
fi

if [ "$KEYS_N" -gt 0 ]; then
  log "many keys: $KEYS_N distinct keys, each request the next, against one key, $RUNS rounds at c=32"
  python3 scripts/bench-keys.py "$GW_ADDR" bench@bluesminds.local "$BENCH_PASSWORD" "$KEYS_N" "$OUT/keys.txt"
  # The first use of each key verifies it (bcrypt, once): warm every key before measuring.
  WRK_SCRIPT=scripts/wrk-keys.lua WRK_KEYS_FILE="$OUT/keys.txt" \
    wrk_load "warmup-keys" "${URL[gateway]}" "" -c32 -d20s
  # The one-key rounds use the same wrk script (a file of one key): the same client cost.
  # Each measured round follows BENCH_ROUND_WARM_SECONDS of the same load, not measured: the
  # target is keys in continuous use, and a round begun straight after the other kind would
  # find every key's lease ended by it (10,000 claims at once), as `just bench-keys-cpu` does.
  echo "$KEY" > "$OUT/one-key.txt"
  for run in $(seq 1 "$RUNS"); do
    for which in one many; do
      if [ "$which" = one ]; then file="$OUT/one-key.txt"; else file="$OUT/keys.txt"; fi
      WRK_SCRIPT=scripts/wrk-keys.lua WRK_KEYS_FILE="$file" \
        wrk_load "warmup-keys-$which-$run" "${URL[gateway]}" "" -c32 "-d${ROUND_WARM_SECONDS}s"
      WRK_SCRIPT=scripts/wrk-keys.lua WRK_KEYS_FILE="$file" \
        wrk_load "keys-$which-c32-$run" "${URL[gateway]}" "" -c32 "-d${CLOSED_SECONDS}s"
    done
  done
  record "{\"phase\":\"rss\",\"what\":\"keys\",\"kib\":$(rss_kib "$GW_PID")}"
  rm -f "$OUT/keys.txt" "$OUT/one-key.txt"
fi

log "open loop at $RATES requests per second"
for rate in $RATES; do
  n=$((rate * SECONDS_PER_RATE))
  for run in $(seq 1 "$RUNS"); do
    load "open-direct-$rate-$run" "http://$MOCK_ADDR/v1/chat/completions" "" -n "$n" -c 256 -q "$rate" --latency-correction
    curl -s "http://$GW_ADDR/metrics" > "$OUT/metrics-before.txt"
    load "open-gateway-$rate-$run" "http://$GW_ADDR/v1/chat/completions" "$KEY" -n "$n" -c 256 -q "$rate" --latency-correction
    curl -s "http://$GW_ADDR/metrics" > "$OUT/metrics-after.txt"
    record "{\"phase\":\"overhead\",\"what\":\"open-$rate\",\"run\":$run,$(overhead_between "$OUT/metrics-before.txt" "$OUT/metrics-after.txt")}"
  done
done

log "streaming: time to first chunk, direct, through the bare proxy and through the gateway"
for run in $(seq 1 "$RUNS"); do
  d=$("$BIN"/bluesminds-streams ttft --addr "$MOCK_ADDR" --n 300 --body "$STREAM")
  b=$("$BIN"/bluesminds-streams ttft --addr "$BARE_ADDR" --n 300 --body "$STREAM")
  g=$("$BIN"/bluesminds-streams ttft --addr "$GW_ADDR" --key "$KEY" --n 300 --body "$STREAM")
  record "{\"phase\":\"stream\",\"run\":$run,\"direct\":$d,\"bare\":$b,\"gateway\":$g}"
done

log "memory holding 1000 open streams"
coproc HOLDER { "$BIN"/bluesminds-streams hold --addr "$GW_ADDR" --key "$KEY" --n 1000 --body "$HOLD"; }
read -r line <&"${HOLDER[0]}" || die "the streams did not open"
[ "$line" = "holding 1000" ] || die "unexpected: $line"
record "{\"phase\":\"rss\",\"what\":\"streams\",\"kib\":$(rss_kib "$GW_PID")}"
echo >&"${HOLDER[1]}"
wait "$HOLDER_PID" || true

log "usage completeness (every gateway that writes usage stopped, so its queue is written)"
# What the two gateways that write usage concluded, by their own count (wrk cuts the requests
# in flight when a run ends; the gateway still finishes and records them).
wait_idle "$GW_ADDR" || die "the gateway still has requests in flight"
SERVED=$(( $(gateway_requests "$GW_ADDR") + $(gateway_requests "$LIMITS_OFF_ADDR") ))
stop_gateway "$USAGE_OFF_PID"
stop_gateway "$LIMITS_OFF_PID"
stop_gateway "$FULL_PID"
ROWS=$(( $(usage_rows) - ROWS_BEFORE ))
record "{\"phase\":\"usage\",\"served\":$SERVED,\"rows\":$ROWS}"
echo "served $SERVED, usage rows $ROWS"

log "report"
python3 scripts/bench_report.py report "$OUT" "$WRITE"
