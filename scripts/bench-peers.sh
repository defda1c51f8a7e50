#!/usr/bin/env bash
# `just bench-peers` (outside CI: installs from PyPI and npm): the same closed-loop (wrk, one
# thread, c=32 and c=1) measurements as `just bench`, direct to the mock, through the bare
# proxy (the limit line), through BluesMinds (production configuration), through LiteLLM's
# proxy and through Portkey's gateway, each pointed at the same mock, in one run; writes a
# dated section into docs/BENCHMARKS.md.
#
# Peer configurations (say so in the results): LiteLLM `litellm[proxy]` from PyPI in
# .venv-litellm, one worker, a config file and a master key, no database (it would download
# Prisma engines at start, which fails offline), so no key lookup, spend logging or limits;
# Portkey `@portkey-ai/gateway` from npm in .peers/portkey, `--headless`, no config store,
# provider `openai` with a custom host. Both do less per request than BluesMinds does here.
#
# Knobs: PEERS_SECONDS (per measurement, 10), BENCH_WRITE (1: update docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench-peers
SECONDS_EACH=${PEERS_SECONDS:-10}
WRITE=${BENCH_WRITE:-1}
LITELLM_ADDR=127.0.0.1:4401
PORTKEY_PORT=8791
. scripts/bench-lib.sh

venv=${LITELLM_VENV:-$PWD/.venv-litellm}
if [ ! -x "$venv/bin/litellm" ]; then
  log "installing litellm[proxy] into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'litellm[proxy]'
fi
portkey=$PWD/.peers/portkey
if [ ! -f "$portkey/node_modules/@portkey-ai/gateway/build/start-server.js" ]; then
  log "installing @portkey-ai/gateway into $portkey"
  mkdir -p "$portkey"
  (cd "$portkey" && npm init -y >/dev/null && npm install --silent @portkey-ai/gateway)
fi

setup_mock_and_database
start_gateway peers
KEY=$(provision_key)

log "LiteLLM proxy on $LITELLM_ADDR"
cat > "$OUT/litellm.yaml" <<YAML
model_list:
  - model_name: gpt-4
    litellm_params:
      model: openai/gpt-4
      api_base: http://$MOCK_ADDR/v1
      api_key: sk-mock
general_settings:
  master_key: sk-litellm-master
YAML
"$venv/bin/litellm" --config "$OUT/litellm.yaml" --host 127.0.0.1 --port "${LITELLM_ADDR#*:}" --num_workers 1 \
  > "$OUT/litellm.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 240); do curl -fs "http://$LITELLM_ADDR/health/liveliness" >/dev/null 2>&1 && break; sleep 0.5; done
curl -fs "http://$LITELLM_ADDR/health/liveliness" >/dev/null || die "LiteLLM did not start (see $OUT/litellm.log)"

log "Portkey gateway on port $PORTKEY_PORT"
NODE_ENV=production node "$portkey/node_modules/@portkey-ai/gateway/build/start-server.js" \
  --port="$PORTKEY_PORT" --headless > "$OUT/portkey.log" 2>&1 &
PIDS+=($!)
wait_for portkey curl -fs "http://127.0.0.1:$PORTKEY_PORT/" || die "Portkey did not start (see $OUT/portkey.log)"

versions="litellm $("$venv/bin/pip" show litellm | awk '/^Version/ {print $2}'), @portkey-ai/gateway $(node -p "require('$portkey/node_modules/@portkey-ai/gateway/package.json').version"), node $(node --version)"
record "{\"phase\":\"versions\",\"text\":\"$versions\"}"

start_bare_proxy
for c in 32 1; do
  log "concurrency $c, $SECONDS_EACH s each (wrk -t1)"
  wrk_load "direct-c$c" "http://$MOCK_ADDR/v1/chat/completions" "" "-c$c" "-d${SECONDS_EACH}s"
  wrk_load "bare-c$c" "http://$BARE_ADDR/v1/chat/completions" "" "-c$c" "-d${SECONDS_EACH}s"
  wrk_load "bluesminds-c$c" "http://$GW_ADDR/v1/chat/completions" "$KEY" "-c$c" "-d${SECONDS_EACH}s"
  wrk_load "litellm-c$c" "http://$LITELLM_ADDR/v1/chat/completions" "sk-litellm-master" "-c$c" "-d${SECONDS_EACH}s"
  WRK_HEADERS="x-portkey-provider: openai|x-portkey-custom-host: http://$MOCK_ADDR/v1" \
    wrk_load "portkey-c$c" "http://127.0.0.1:$PORTKEY_PORT/v1/chat/completions" "sk-mock" "-c$c" "-d${SECONDS_EACH}s"
done

log "report"
python3 scripts/bench_report.py peers "$OUT" "$WRITE"
