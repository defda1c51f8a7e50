#!/usr/bin/env bash
# `just bench-ab`: two configurations of the same release gateway side by side, on one
# database, one Redis and one mock, measured at the client in interleaved rounds (wrk, one
# thread; c=32 for throughput, c=1 for latency; the order alternates each round, so the
# machine's drift between minutes falls on both alike). For one hot-path change that a
# setting switches, e.g. the usage journal:
#
#   AB_A="BLUESMINDS_USAGE__JOURNAL=true" AB_B="BLUESMINDS_USAGE__JOURNAL=false" bash scripts/bench-ab.sh
#
# or two builds, for a change no setting switches (a before and an after):
#
#   git worktree add /tmp/before <commit> && (cd /tmp/before && CARGO_TARGET_DIR=$PWD/../target \
#     cargo build --release -p bluesminds) && cp target/release/bluesminds /tmp/bluesminds-before
#   AB_BIN_A=/tmp/bluesminds-before bash scripts/bench-ab.sh      # b: this tree's release build
#
# Gateway a (and the database's migrations) run first, so a build older than b may be a.
# Knobs: AB_A, AB_B (environment assignments, space-separated), AB_BIN_A, AB_BIN_B (gateway
# binaries; default this tree's release build), AB_ROUNDS (6), AB_SECONDS (8 per run).
# Prints the medians; nothing is written to docs/.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench-ab
ROUNDS=${AB_ROUNDS:-6}
SECS=${AB_SECONDS:-8}
read -r -a A_ENV <<< "${AB_A:-}"
read -r -a B_ENV <<< "${AB_B:-}"
. scripts/bench-lib.sh
BIN_A=${AB_BIN_A:-$BIN/bluesminds}
BIN_B=${AB_BIN_B:-$BIN/bluesminds}
GW_BIN=$BIN_A setup_mock_and_database
log "gateway a (${AB_A:-defaults}, $BIN_A) on $GW_ADDR, gateway b (${AB_B:-defaults}, $BIN_B) on 127.0.0.1:3402"
GW_BIN=$BIN_A start_gateway a "${A_ENV[@]}"
KEY=$(GW_BIN=$BIN_A provision_key)
GW_BIN=$BIN_B BIND=127.0.0.1:3402 start_gateway b "${B_ENV[@]}"
declare -A URL=([a]="http://$GW_ADDR/v1/chat/completions" [b]="http://127.0.0.1:3402/v1/chat/completions")
for path in a b; do
  wrk_load "warmup-$path" "${URL[$path]}" "$KEY" -c32 -d3s
done
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 0 ]; then order="a b"; else order="b a"; fi
  for v in $order; do
    wrk_load "c32-$v-$r" "${URL[$v]}" "$KEY" -c32 "-d${SECS}s"
    wrk_load "c1-$v-$r" "${URL[$v]}" "$KEY" -c1 "-d${SECS}s"
  done
done
python3 - "$OUT" <<'PY'
import glob, json, statistics as st, sys
runs = {}
for f in sorted(glob.glob(sys.argv[1] + '/c*-*-*.wrk.json')):
    c, v, _ = f.rsplit('/', 1)[1].split('.')[0].split('-')
    runs.setdefault((c, v), []).append(json.load(open(f)))
for (c, v), ds in sorted(runs.items()):
    rps = [d['requests'] / d['duration_us'] * 1e6 for d in ds]
    p50 = st.median(d['p50_us'] for d in ds) / 1000
    p99 = st.median(d['p99_us'] for d in ds) / 1000
    errors = sum(d['socket_errors'] + d['status_errors'] for d in ds)
    print(f"{c:>3} {v}: {st.median(rps):>8,.0f} req/s (rounds {', '.join(f'{x:,.0f}' for x in rps)}), "
          f"p50 {p50:.3f} ms, p99 {p99:.3f} ms, errors {errors}")
PY
