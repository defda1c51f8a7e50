#!/usr/bin/env bash
# The API surface through the vendors' own SDKs (tests/sdk/suite.py): OpenAI's Python SDK
# (chat, legacy completions, the Responses API, plain and streamed) and Anthropic's (Messages,
# plain and streamed, x-api-key), against the gateway binary on Postgres and Redis with the
# mock upstream. Provides what it needs: the services (as .ci/run does), Python and a venv
# under the target directory (packages pinned in tests/sdk/requirements.txt), and the
# binaries. Bounded: the suite is killed after 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"

. scripts/services.sh
log "sdk suite: services"
ensure_postgres
ensure_redis

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt_install python3 python3-venv
fi
venv="$target/sdk-venv"
if ! "$venv/bin/python" -c 'import openai, anthropic' >/dev/null 2>&1; then
  log "sdk suite: Python packages into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/sdk/requirements.txt
fi

log "sdk suite: binaries"
cargo build --locked -p bluesminds -p bluesminds-mock

log "sdk suite: tests/sdk/suite.py"
BLUESMINDS_BIN="$target/debug/bluesminds" MOCK_BIN="$target/debug/bluesminds-mock" \
  timeout --kill-after=10 300 "$venv/bin/python" tests/sdk/suite.py
