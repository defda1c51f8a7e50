# Shared by scripts/bench.sh and scripts/bench-peers.sh (sourced, not run): services, oha,
# the mock and a BluesMinds gateway in its production configuration, a key, one oha run.
# The caller sets OUT (where results go) before sourcing.

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"
. scripts/services.sh

# Release binaries, wherever cargo puts them.
BIN="${CARGO_TARGET_DIR:-target}/release"
MOCK_ADDR=127.0.0.1:9401
GW_ADDR=127.0.0.1:3401
BARE_ADDR=127.0.0.1:3409
DB_NAME="bm_bench_$$"
PG_BASE="${TEST_DATABASE_URL%/*}"
DB_URL="$PG_BASE/$DB_NAME"
PREFIX="bmbench$$"
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
CHAT='{"model":"gpt-4","messages":[{"role":"user","content":"Hello there, how are you?"}],"max_tokens":16}'
STREAM='{"model":"gpt-4","stream":true,"messages":[{"role":"user","content":"Hello there, how are you?"}],"max_tokens":16,"mock":{"chunk_delay_ms":1}}'
HOLD='{"model":"gpt-4","stream":true,"messages":[{"role":"user","content":"Hold on."}],"max_tokens":400,"mock":{"chunk_delay_ms":250}}'

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/*.txt "$OUT"/results.jsonl

ensure_wrk() {
  command -v wrk >/dev/null 2>&1 || apt_install wrk
}

# wrk NAME URL [key] [wrk args...]: one closed-loop run of `scripts/wrk-post.lua` (or
# $WRK_SCRIPT); its JSON line kept as $OUT/NAME.wrk.json. WRK_HEADERS (`name: value|...`) adds
# headers; WRK_KEYS_FILE gives scripts/wrk-keys.lua its keys.
wrk_load() {
  local name=$1 url=$2 key=$3; shift 3
  WRK_BODY="$CHAT" WRK_KEY="$key" WRK_HEADERS="${WRK_HEADERS:-}" WRK_KEYS_FILE="${WRK_KEYS_FILE:-}" \
    ${WRK_PIN:+taskset -c "$WRK_PIN"} wrk -t1 --latency -s "${WRK_SCRIPT:-scripts/wrk-post.lua}" "$@" "$url" \
    | grep '^{' > "$OUT/$name.wrk.json"
}

# The bare proxy in front of the mock: the limit line.
start_bare_proxy() {
  "$BIN"/bluesminds-bare-proxy --listen "$BARE_ADDR" --upstream "http://$MOCK_ADDR" > "$OUT/bare-proxy.log" 2>&1 &
  BARE_PID=$!
  PIDS+=($!)
  wait_for "bare proxy" curl -s "http://$BARE_ADDR/health" -o /dev/null
}

# Waits until a gateway has no request in flight upstream (streams a client just left are
# concluded when the gateway notices).
wait_idle() {
  for _ in $(seq 1 100); do
    n=$(curl -s "http://$1/metrics" | awk '/^bluesminds_upstream_in_flight\{/ {n += $NF} END {printf "%d", n}')
    if [ "$n" = 0 ]; then
      # ...and its count of concluded requests has stopped moving.
      local a b
      a=$(gateway_requests "$1"); sleep 0.2; b=$(gateway_requests "$1")
      [ "$a" = "$b" ] && return 0
    fi
    sleep 0.1
  done
  return 1
}

# pin CPUS PID...: every thread of each process on CPUS (taskset, util-linux).
pin() {
  local cpus=$1; shift
  for pid in "$@"; do taskset -acp "$cpus" "$pid" >/dev/null 2>&1 || true; done
}

# Clock ticks (utime + stime) the processes given have spent.
ticks() {
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

# Requests a gateway concluded (every status), from its /metrics.
gateway_requests() {
  curl -s "http://$1/metrics" | awk '/^bluesminds_requests_total\{/ {n += $NF} END {printf "%d", n}'
}

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

# oha NAME URL [auth] [extra args...]: one run, its JSON summary kept as $OUT/NAME.json;
# EXTRA_HEADERS (an array of -H arguments) is added to every request.
EXTRA_HEADERS=()
load() {
  local name=$1 url=$2 auth=$3; shift 3
  local headers=(-H "content-type: application/json" "${EXTRA_HEADERS[@]}")
  if [ -n "$auth" ]; then headers+=(-H "authorization: Bearer $auth"); fi
  oha --no-tui --output-format json -m POST "${headers[@]}" -d "$CHAT" "$@" "$url" > "$OUT/$name.json"
}

start_gateway() { # name, extra environment assignments... (BIND: another address)
  local name=$1 addr=${BIND:-$GW_ADDR}; shift
  env -i PATH="$PATH" HOME="$HOME" RUST_LOG=warn \
    DATABASE_URL="$DB_URL" REDIS_URL="$TEST_REDIS_URL" \
    JWT_SECRET="$SECRET" API_KEY_SECRET="$SECRET" \
    BLUESMINDS_REDIS__KEY_PREFIX="$PREFIX" BLUESMINDS_BIND="$addr" \
    BLUESMINDS_SERVER__MAX_IN_FLIGHT=20000 BLUESMINDS_AUTH__KEY_BCRYPT_COST=4 \
    BLUESMINDS_USAGE__SPILL_PATH="$OUT/usage-spill-$name.jsonl" \
    LITELLM_SERVER_1_URL="http://$MOCK_ADDR" LITELLM_SERVER_1_MODELS="gpt-4" \
    "$@" "${GW_BIN:-$BIN/bluesminds}" serve > "$OUT/gateway-$name.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_for gateway curl -sf "http://$addr/healthz" || die "the gateway did not start (see $OUT/gateway-$name.log)"
}

stop_gateway() { # [pid]: the last one started when omitted
  local pid=${1:-$GW_PID}
  kill -TERM "$pid"
  wait "$pid" || die "the gateway exited with an error at shutdown"
}

gateway_cli() {
  env -i PATH="$PATH" HOME="$HOME" RUST_LOG=warn DATABASE_URL="$DB_URL" \
    JWT_SECRET="$SECRET" API_KEY_SECRET="$SECRET" "${GW_BIN:-$BIN/bluesminds}" "$@"
}

usage_rows() { psql "$DB_URL" -Atc 'SELECT count(*) FROM usage_logs'; }

# An admin's key with limits far above the load (enforced, never hit).
BENCH_PASSWORD="bench password $$"
provision_key() {
  local password=$BENCH_PASSWORD
  gateway_cli admin create --email bench@bluesminds.local --password "$password" >/dev/null
  local cookie
  cookie=$(curl -si "http://$GW_ADDR/api/auth/login" -H 'content-type: application/json' \
    -d "{\"email\":\"bench@bluesminds.local\",\"password\":\"$password\"}" \
    | awk -F'[ ;]' 'tolower($1) == "set-cookie:" {print $2; exit}')
  curl -sf "http://$GW_ADDR/api/keys" -H "cookie: $cookie" -H 'content-type: application/json' \
    -d '{"name":"bench","scopes":["chat.completions"],"rate_limit_rpm":1000000000,"rate_limit_tpm":1000000000000,"quota_daily":1000000000000,"quota_monthly":1000000000000}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}

# Sum of the gateway's overhead histogram between two /metrics scrapes: p50 and p99 in ms.
overhead_between() {
  python3 scripts/bench_report.py overhead "$1" "$2"
}


# Services and tools up, release binaries built, the mock listening, a fresh database.
setup_mock_and_database() {
  log "services and tools"
  ensure_postgres
  ensure_redis
  ensure_oha
  ensure_wrk
  command -v curl >/dev/null || apt_install curl
  log "release build"
  cargo build --release --locked -p bluesminds -p bluesminds-mock --bins

  log "mock upstream on $MOCK_ADDR"
  "$BIN"/bluesminds-mock --addr "$MOCK_ADDR" > "$OUT/mock.log" 2>&1 &
  MOCK_PID=$!
  PIDS+=($!)
  wait_for mock curl -sf "http://$MOCK_ADDR/health" -o /dev/null || wait_for mock curl -s "http://$MOCK_ADDR/" -o /dev/null

  log "database $DB_NAME"
  psql "$PG_BASE/postgres" -qc "CREATE DATABASE $DB_NAME" >/dev/null
  gateway_cli migrate >/dev/null
}
