#!/usr/bin/env bash
# How fast the dashboard's pages and the statistics API answer on a database with many usage
# rows (outside CI: `just page-timings`). A fresh Postgres database gets ROWS usage rows (default 1,000,000) for
# one user this month and as many spread over OTHERS other users (default 2,000), loaded by
# SQL, then the daily rollup rebuilt from them (`bluesminds usage rebuild-rollup`); the
# release binary serves it; each page is fetched RUNS times (default 5) with the user's (or
# the admin's) session, and the median and slowest times at the client are printed, then the
# statistics query's plan (EXPLAIN ANALYZE). The database is dropped afterwards.
# ROWS=5000000 gives the user 5 million rows among 10 million.
set -euo pipefail
cd "$(dirname "$0")/.."

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"
ROWS="${ROWS:-1000000}"
RUNS="${RUNS:-5}"
OTHERS="${OTHERS:-2000}"
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"

. scripts/services.sh
ensure_postgres
ensure_redis
log "release build"
cargo build --release --locked -p bluesminds
bin="$target/release/bluesminds"

server="${TEST_DATABASE_URL%/*}"
db="bm_pages_$$"
url="$server/$db"
work="$(mktemp -d)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql "$server/postgres" -qc "CREATE DATABASE $db"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export DATABASE_URL="$url" REDIS_URL="$TEST_REDIS_URL" JWT_SECRET="$secret" API_KEY_SECRET="$secret"
export BLUESMINDS_REDIS__KEY_PREFIX="bmpages$$" BLUESMINDS_BIND="127.0.0.1:$port" RUST_LOG=warn
export BLUESMINDS_PUBLIC_URL="http://127.0.0.1:$port"
(cd "$work" && "$bin" migrate >/dev/null && "$bin" admin create --email admin@example.com --password 'admin password 1' >/dev/null)
(cd "$work" && exec "$bin" serve --no-migrate >"$work/out.log" 2>&1) &
pid=$!
wait_for gateway curl -sf "http://127.0.0.1:$port/healthz" || die "the gateway did not start"
base="http://127.0.0.1:$port"

login() { # email password -> cookie
  curl -s -o /dev/null -D - -H 'content-type: application/json' \
    -d "{\"email\": \"$1\", \"password\": \"$2\"}" "$base/api/auth/login" |
    sed -n 's/^set-cookie: \([^;]*\).*/\1/Ip' | head -n 1
}
curl -sf -o /dev/null -H 'content-type: application/json' \
  -d '{"email": "heavy@example.com", "password": "correct horse battery"}' "$base/api/auth/signup"
user_cookie=$(login heavy@example.com 'correct horse battery')
admin_cookie=$(login admin@example.com 'admin password 1')
curl -sf -o /dev/null -H "cookie: $user_cookie" -H 'content-type: application/json' \
  -d '{"name": "load"}' "$base/api/keys"

log "loading $ROWS usage rows for the user and $ROWS for $OTHERS others (this month)"
psql "$url" -q <<SQL
WITH u AS (SELECT id FROM users WHERE email = 'heavy@example.com'),
     k AS (SELECT id FROM api_keys WHERE user_id = (SELECT id FROM u))
INSERT INTO usage_logs (request_id, created_at, user_id, api_key_id, endpoint, model,
  prompt_tokens, completion_tokens, total_tokens, cost_micros, latency_ms, status_code, is_error)
SELECT gen_random_uuid(),
       date_trunc('month', now()) + (now() - date_trunc('month', now())) * (g::float8 / $ROWS),
       (SELECT id FROM u), (SELECT id FROM k), 'chat.completions',
       (ARRAY['gpt-4o', 'gpt-4o-mini', 'claude-3-5-sonnet'])[1 + g % 3],
       20, 30, 50, 75, 5 + g % 200, CASE WHEN g % 50 = 0 THEN 500 ELSE 200 END, g % 50 = 0
FROM generate_series(1, $ROWS) g;
INSERT INTO usage_logs (request_id, created_at, user_id, endpoint, model, total_tokens,
  cost_micros, latency_ms, status_code)
SELECT gen_random_uuid(),
       date_trunc('month', now()) + (now() - date_trunc('month', now())) * (g::float8 / $ROWS),
       others.id[1 + g % $OTHERS], 'chat.completions', 'gpt-4o', 50, 75, 10, 200
FROM generate_series(1, $ROWS) g,
     (SELECT array_agg(gen_random_uuid()) AS id FROM generate_series(1, $OTHERS)) others;
ANALYZE usage_logs;
SQL
log "the daily rollup from those rows (bluesminds usage rebuild-rollup)"
(cd "$work" && "$bin" usage rebuild-rollup)

time_page() { # label cookie path
  local times
  times=$(for _ in $(seq 1 "$RUNS"); do
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -H "cookie: $2" "$base$3"
  done)
  if echo "$times" | grep -qv '^200 '; then die "$3 answered: $(echo "$times" | head -n 1)"; fi
  echo "$times" | awk -v label="$1" '{ t[NR] = $2 * 1000 } END {
    n = asort(t); printf "%-34s median %7.1f ms   slowest %7.1f ms\n", label, t[int((n + 1) / 2)], t[n] }'
}

log "page timings at the client, $RUNS runs each (ms)"
time_page "overview /dashboard" "$user_cookie" /dashboard
time_page "usage, 7 days" "$user_cookie" "/dashboard/usage?days=7"
time_page "usage, 30 days" "$user_cookie" "/dashboard/usage?days=30"
time_page "usage, 90 days" "$user_cookie" "/dashboard/usage?days=90"
time_page "logs /dashboard/logs" "$user_cookie" /dashboard/logs
time_page "logs, failed only" "$user_cookie" "/dashboard/logs?status=error"
time_page "keys /dashboard/keys" "$user_cookie" /dashboard/keys
time_page "billing /dashboard/billing" "$user_cookie" /dashboard/billing
time_page "admin /admin" "$admin_cookie" /admin
time_page "admin users /admin/users" "$admin_cookie" /admin/users
month_start=$(date -u +%Y-%m-01)
today=$(date -u +%Y-%m-%d)
time_page "stats, this month by day (API)" "$user_cookie" \
  "/api/usage/stats?from=$month_start&to=$today&group_by=day"
time_page "stats, this month by model (API)" "$user_cookie" \
  "/api/usage/stats?from=$month_start&to=$today&group_by=model"

log "the statistics query of the heavy user's month (what /api/usage/stats runs), in Postgres"
psql "$url" -c "SELECT count(*) AS usage_rows FROM usage_logs"
psql "$url" <<SQL
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT * FROM usage_daily
WHERE user_id = (SELECT id FROM users WHERE email = 'heavy@example.com')
  AND day >= date_trunc('month', now())::date AND day < (now() + interval '1 day')::date;
SQL
