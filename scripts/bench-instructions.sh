#!/usr/bin/env bash
# `just bench-instructions`: the user-space instructions the gateway and the bare proxy
# execute per request, counted by callgrind (valgrind), which, unlike a time or a rate, does
# not move with the machine's speed or its neighbours: the measure for a before and an after
# on a shared machine. Each runs under `valgrind --tool=callgrind` with instrumentation off,
# takes BENCH_WARM_SECONDS (5) of wrk at c=4, then counts during BENCH_SECONDS (10) of the
# same (the gateway's own background work per request, usage rows and all, included); the
# gateway's requests are read from its /metrics, the bare proxy's from wrk. GW_BIN counts
# another gateway build (a before). Writes the callgrind profiles to target/bench-instructions
# (`callgrind_annotate --inclusive=yes <file>`), nothing to docs/.
#
# Valgrind's CPU has no SHA extensions, so the key's HMAC-SHA256 runs its portable code here
# (about 7,000 instructions a request) where the real CPU, when it has them, runs SHA-NI.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench-instructions
WARM=${BENCH_WARM_SECONDS:-5}
SECS=${BENCH_SECONDS:-10}
. scripts/bench-lib.sh
command -v valgrind >/dev/null 2>&1 || apt_install valgrind
command -v callgrind_control >/dev/null 2>&1 || apt_install valgrind
setup_mock_and_database

# under_callgrind NAME BINARY: a wrapper script that runs BINARY under callgrind.
under_callgrind() {
  local wrapper="$OUT/$1.sh"
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=%s %s "$@"\n' \
    "$PWD/$OUT/$1.callgrind" "$2" > "$wrapper"
  chmod +x "$wrapper"
  echo "$wrapper"
}

# count NAME PID URL KEY: instructions per request of PID over SECS of load.
count() {
  local name=$1 pid=$2 url=$3 key=$4
  wrk_load "warm-$name" "$url" "$key" -c4 "-d${WARM}s"
  local before=0 after=0
  [ "$name" = gateway ] && before=$(gateway_requests "$GW_ADDR")
  callgrind_control --instr=on "$pid" >/dev/null 2>&1
  wrk_load "$name" "$url" "$key" -c4 "-d${SECS}s"
  callgrind_control --instr=off "$pid" >/dev/null 2>&1
  [ "$name" = gateway ] && after=$(gateway_requests "$GW_ADDR")
  callgrind_control --dump "$pid" >/dev/null 2>&1
  local n
  if [ "$name" = gateway ]; then
    n=$((after - before))
  else
    n=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['requests'])" "$OUT/$name.wrk.json")
  fi
  # The dump is written by valgrind's own thread: wait for its totals line.
  for _ in $(seq 1 50); do
    grep -qs '^totals:' "$OUT/$name.callgrind".* && break
    sleep 0.2
  done
  local ir
  ir=$(cat "$OUT/$name.callgrind".* | awk '/^totals:/ {s += $2} END {printf "%d", s}')
  [ "$n" -gt 0 ] && [ "$ir" -gt 0 ] || die "nothing counted for $name (requests $n, instructions $ir)"
  printf '%-8s %8d requests, %14d instructions, %8d per request\n' "$name" "$n" "$ir" $((ir / n))
}

REAL_GW=${GW_BIN:-$BIN/bluesminds}
GW_BIN=$(under_callgrind gateway "$REAL_GW") start_gateway full
KEY=$(GW_BIN=$REAL_GW provision_key)
"$(under_callgrind bare "$BIN/bluesminds-bare-proxy")" --listen "$BARE_ADDR" --upstream "http://$MOCK_ADDR" > "$OUT/bare-proxy.log" 2>&1 &
BARE_PID=$!
PIDS+=("$BARE_PID")
wait_for "bare proxy" curl -s "http://$BARE_ADDR/health" -o /dev/null

log "instructions per request ($REAL_GW; c=4, ${SECS}s each)"
count gateway "$GW_PID" "http://$GW_ADDR/v1/chat/completions" "$KEY"
count bare "$BARE_PID" "http://$BARE_ADDR/v1/chat/completions" ""
