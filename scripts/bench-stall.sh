#!/usr/bin/env bash
# `just bench-stall`: what a stalled database costs the traffic. The gateway as in `just bench`
# under wrk at c=32 (one thread) for BENCH_STALL_ROUND_SECONDS (12) a round: first a round with
# nothing stopped, then BENCH_STALL_ROUNDS (2) rounds in which every Postgres backend of the
# gateway's database is stopped (SIGSTOP) for BENCH_STALL_SECONDS (2) from the fourth second,
# so its usage writer falls behind and its queue overflows to the spill file. Prints each
# round's requests a second, client-side p99 and max, and the records spilled; at the end,
# usage rows against the requests the gateway concluded (nothing may be lost) and the
# gateway's peak RSS. GW_BIN measures another build (a before, say). Writes nothing to docs/.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench-stall
ROUNDS=${BENCH_STALL_ROUNDS:-2}
SECS=${BENCH_STALL_ROUND_SECONDS:-12}
STALL=${BENCH_STALL_SECONDS:-2}
. scripts/bench-lib.sh

setup_mock_and_database
start_gateway full
KEY=$(provision_key)
URL="http://$GW_ADDR/v1/chat/completions"
wrk_load stall-warm "$URL" "$KEY" -c32 -d3s

spilled() {
  curl -s "http://$GW_ADDR/metrics" | awk '/^bluesminds_usage_spilled_total/ {n += $NF} END {printf "%d", n}'
}

for round in $(seq 0 "$ROUNDS"); do
  STALL_PID=
  if [ "$round" -gt 0 ]; then
    (
      sleep 4
      backends=$(psql "$PG_BASE/postgres" -Atc "SELECT pid FROM pg_stat_activity WHERE datname = '$DB_NAME'")
      # shellcheck disable=SC2086
      kill -STOP $backends
      sleep "$STALL"
      # shellcheck disable=SC2086
      kill -CONT $backends
    ) &
    STALL_PID=$!
  fi
  before=$(spilled)
  wrk_load "stall-$round" "$URL" "$KEY" -c32 "-d${SECS}s"
  [ -n "$STALL_PID" ] && wait "$STALL_PID"
  python3 - "$OUT/stall-$round.wrk.json" "$round" "$STALL" "$before" "$(spilled)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rnd, stall, spilled = int(sys.argv[2]), sys.argv[3], int(sys.argv[5]) - int(sys.argv[4])
what = "no stall" if rnd == 0 else f"Postgres stopped {stall} s"
errors = r["socket_errors"] + r["status_errors"]
print(f"round {rnd} ({what}): {r['requests'] / (r['duration_us'] / 1e6):,.0f} requests/s, "
      f"p99 {r['p99_us'] / 1000:.3f} ms, max {r['max_us'] / 1000:.3f} ms, {errors} errors, "
      f"{spilled:,} records spilled", flush=True)
PY
done

wait_idle "$GW_ADDR" || die "the gateway did not go idle"
concluded=$(gateway_requests "$GW_ADDR")
# The spill is replayed within a second or so of the database answering again.
for _ in $(seq 1 100); do
  [ "$(usage_rows)" = "$concluded" ] && break
  sleep 0.2
done
rows=$(usage_rows)
echo "usage rows $rows for $concluded requests the gateway concluded; the gateway's peak RSS $(( $(hwm_kib "$GW_PID") / 1024 )) MiB"
[ "$rows" = "$concluded" ] || die "usage rows and requests differ"
