#!/usr/bin/env bash
# `just bench`: the gateway in its production configuration (Postgres, Redis limits on but not
# hit, usage written to Postgres, a bcrypt-stored key) against `bluesminds-mock`, measured in
# one run on this machine with `oha`: closed loop (direct and through the gateway), open loop
# at fixed rates, streaming time to first chunk, memory idle / at peak / holding 1,000
# streams, attribution (limits off, usage off) and usage completeness. Writes a dated section
# into docs/BENCHMARKS.md above the previous ones.
#
# Knobs: BENCH_RUNS (3), BENCH_REQUESTS (closed-loop requests per run, 60000),
# BENCH_RATES ("500 2000 5000"), BENCH_SECONDS (open-loop seconds per rate, 5),
# BENCH_WRITE (1: update docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"
. scripts/services.sh

RUNS=${BENCH_RUNS:-3}
REQUESTS=${BENCH_REQUESTS:-60000}
RATES=${BENCH_RATES:-"500 2000 5000"}
SECONDS_PER_RATE=${BENCH_SECONDS:-5}
WRITE=${BENCH_WRITE:-1}
OUT=target/bench
MOCK_ADDR=127.0.0.1:9401
GW_ADDR=127.0.0.1:3401
DB_NAME="bm_bench_$$"
PG_BASE="${TEST_DATABASE_URL%/*}"
DB_URL="$PG_BASE/$DB_NAME"
PREFIX="bmbench$$"
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
CHAT='{"model":"gpt-4","messages":[{"role":"user","content":"Hello there, how are you?"}],"max_tokens":16}'
STREAM='{"model":"gpt-4","stream":true,"messages":[{"role":"user","content":"Hello there, how are you?"}],"max_tokens":16,"mock":{"chunk_delay_ms":1}}'
HOLD='{"model":"gpt-4","stream":true,"messages":[{"role":"user","content":"Hold on."}],"max_tokens":400,"mock":{"chunk_delay_ms":250}}'

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/results.jsonl

ensure_oha() {
  if command -v oha >/dev/null 2>&1; then return; fi
  if [ -x "$HOME/.cargo/bin/oha" ]; then export PATH="$HOME/.cargo/bin:$PATH"; return; fi
  log "installing oha (cargo install oha --locked; once)"
  cargo install oha --locked --quiet
  export PATH="$HOME/.cargo/bin:$PATH"
}

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$PG_BASE/postgres" -qc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli -u "$TEST_REDIS_URL" --scan --pattern "$PREFIX:*" 2>/dev/null \
    | xargs -r redis-cli -u "$TEST_REDIS_URL" del >/dev/null 2>&1 || true
}
trap cleanup EXIT

record() { echo "$1" >> "$OUT/results.jsonl"; }

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

# oha NAME URL [auth] [extra args...]: one run, its JSON summary kept as $OUT/NAME.json.
load() {
  local name=$1 url=$2 auth=$3; shift 3
  local headers=(-H "content-type: application/json")
  if [ -n "$auth" ]; then headers+=(-H "authorization: Bearer $auth"); fi
  oha --no-tui --output-format json -m POST "${headers[@]}" -d "$CHAT" "$@" "$url" > "$OUT/$name.json"
}

start_gateway() { # name, extra environment assignments...
  local name=$1; shift
  env -i PATH="$PATH" HOME="$HOME" RUST_LOG=warn \
    DATABASE_URL="$DB_URL" REDIS_URL="$TEST_REDIS_URL" \
    JWT_SECRET="$SECRET" API_KEY_SECRET="$SECRET" \
    BLUESMINDS_REDIS__KEY_PREFIX="$PREFIX" BLUESMINDS_BIND="$GW_ADDR" \
    BLUESMINDS_SERVER__MAX_IN_FLIGHT=20000 \
    LITELLM_SERVER_1_URL="http://$MOCK_ADDR" LITELLM_SERVER_1_MODELS="gpt-4" \
    "$@" target/release/bluesminds serve > "$OUT/gateway-$name.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_for gateway curl -sf "http://$GW_ADDR/healthz" || die "the gateway did not start (see $OUT/gateway-$name.log)"
}

stop_gateway() {
  kill -TERM "$GW_PID"
  wait "$GW_PID" || die "the gateway exited with an error at shutdown"
}

gateway_cli() {
  env -i PATH="$PATH" HOME="$HOME" RUST_LOG=warn DATABASE_URL="$DB_URL" \
    JWT_SECRET="$SECRET" API_KEY_SECRET="$SECRET" target/release/bluesminds "$@"
}

usage_rows() { psql "$DB_URL" -Atc 'SELECT count(*) FROM usage_logs'; }

# An admin's key with limits far above the load (enforced, never hit).
provision_key() {
  local password="bench password $$"
  gateway_cli admin create --email bench@bluesminds.local --password "$password" >/dev/null
  local cookie
  cookie=$(curl -si "http://$GW_ADDR/api/auth/login" -H 'content-type: application/json' \
    -d "{\"email\":\"bench@bluesminds.local\",\"password\":\"$password\"}" \
    | awk -F'[ ;]' 'tolower($1) == "set-cookie:" {print $2; exit}')
  curl -sf "http://$GW_ADDR/api/keys" -H "cookie: $cookie" -H 'content-type: application/json' \
    -d '{"name":"bench","rate_limit_rpm":1000000000,"rate_limit_tpm":1000000000000,"quota_daily":1000000000000,"quota_monthly":1000000000000}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}

# Sum of the gateway's overhead histogram between two /metrics scrapes: p50 and p99 in ms.
overhead_between() {
  python3 scripts/bench_report.py overhead "$1" "$2"
}

log "services and tools"
ensure_postgres
ensure_redis
ensure_oha
command -v curl >/dev/null || apt_install curl
log "release build"
cargo build --release --locked -p bluesminds -p bluesminds-mock --bins

log "mock upstream on $MOCK_ADDR"
target/release/bluesminds-mock --addr "$MOCK_ADDR" > "$OUT/mock.log" 2>&1 &
PIDS+=($!)
wait_for mock curl -sf "http://$MOCK_ADDR/health" -o /dev/null || wait_for mock curl -s "http://$MOCK_ADDR/" -o /dev/null

log "database $DB_NAME"
psql "$PG_BASE/postgres" -qc "CREATE DATABASE $DB_NAME" >/dev/null
gateway_cli migrate >/dev/null

log "gateway (production configuration)"
start_gateway full
KEY=$(provision_key)
sleep 1
record "{\"phase\":\"rss\",\"what\":\"idle\",\"kib\":$(rss_kib "$GW_PID")}"
ROWS_BEFORE=$(usage_rows)
SERVED=0
served() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['statusCodeDistribution'].get('200',0))" "$OUT/$1.json"; }

log "closed loop: $RUNS x $REQUESTS requests at concurrency 64, direct and through the gateway"
load warmup "http://$GW_ADDR/v1/chat/completions" "$KEY" -n 5000 -c 64
SERVED=$((SERVED + $(served warmup)))
for run in $(seq 1 "$RUNS"); do
  load "closed-direct-c64-$run" "http://$MOCK_ADDR/v1/chat/completions" "" -n "$REQUESTS" -c 64
  load "closed-gateway-c64-$run" "http://$GW_ADDR/v1/chat/completions" "$KEY" -n "$REQUESTS" -c 64
  SERVED=$((SERVED + $(served "closed-gateway-c64-$run")))
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
  d=$(target/release/bluesminds-streams ttft --addr "$MOCK_ADDR" --n 300 --body "$STREAM")
  g=$(target/release/bluesminds-streams ttft --addr "$GW_ADDR" --key "$KEY" --n 300 --body "$STREAM")
  record "{\"phase\":\"stream\",\"run\":$run,\"direct\":$d,\"gateway\":$g}"
  SERVED=$((SERVED + 330))
done

log "memory holding 1000 open streams"
coproc HOLDER { target/release/bluesminds-streams hold --addr "$GW_ADDR" --key "$KEY" --n 1000 --body "$HOLD"; }
read -r line <&"${HOLDER[0]}" || die "the streams did not open"
[ "$line" = "holding 1000" ] || die "unexpected: $line"
record "{\"phase\":\"rss\",\"what\":\"streams\",\"kib\":$(rss_kib "$GW_PID")}"
echo >&"${HOLDER[1]}"
wait "$HOLDER_PID" || true
SERVED=$((SERVED + 1000))

log "usage completeness"
stop_gateway
ROWS=$(( $(usage_rows) - ROWS_BEFORE ))
record "{\"phase\":\"usage\",\"served\":$SERVED,\"rows\":$ROWS}"
echo "served $SERVED, usage rows $ROWS"

for variant in limits-off usage-off; do
  log "attribution: $variant"
  case $variant in
    limits-off) start_gateway "$variant" BLUESMINDS_LIMITS__ENABLED=false ;;
    usage-off) start_gateway "$variant" BLUESMINDS_USAGE__ENABLED=false ;;
  esac
  load "warmup-$variant" "http://$GW_ADDR/v1/chat/completions" "$KEY" -n 5000 -c 64
  for run in $(seq 1 "$RUNS"); do
    load "closed-$variant-c64-$run" "http://$GW_ADDR/v1/chat/completions" "$KEY" -n "$REQUESTS" -c 64
  done
  stop_gateway
done

log "report"
python3 scripts/bench_report.py report "$OUT" "$WRITE"
