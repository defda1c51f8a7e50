#!/usr/bin/env bash
# Every test of the workspace, the Postgres and Redis suites included: brings both up first
# (starting them, or installing them from Debian's packages, as .ci/run does), exports
# TEST_DATABASE_URL and TEST_REDIS_URL, and fails loudly if either is unreachable (and a
# three-master Redis Cluster on loopback for TEST_REDIS_CLUSTER_URL, and HAProxy for the
# rolling-restart test); then the
# checks of deploy/ (scripts/check-deploy.sh: promtool, Kubernetes and compose schemas), the
# dashboard's browser suite (scripts/browser-suite.sh: headless Chromium from Debian's
# packages) and the SDK suite (scripts/sdk-suite.sh: OpenAI's and Anthropic's Python SDKs).
# Extra arguments go to `cargo test` alone (e.g. `bash scripts/test.sh -p gateway-proxy`),
# without the browser and SDK suites.
set -euo pipefail
cd "$(dirname "$0")/.."

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export TEST_REDIS_CLUSTER_URL="${TEST_REDIS_CLUSTER_URL:-redis+cluster://127.0.0.1:30001,127.0.0.1:30002,127.0.0.1:30003}"

. scripts/services.sh
log "services"
ensure_postgres
ensure_redis
ensure_redis_cluster
ensure_haproxy

log "cargo test --workspace"
if [ "$#" -gt 0 ]; then
  exec cargo test --locked "$@"
fi
# The chaos test runs on its own, its output shown, so the log carries its figures (requests,
# errors by kind, rows, lost rows).
cargo test --workspace --locked -- --skip under_load_redis_killed
log "chaos under load (bins/bluesminds/tests/chaos.rs)"
cargo test --locked -p bluesminds --test chaos -- --nocapture
bash scripts/check-deploy.sh
bash scripts/browser-suite.sh
bash scripts/sdk-suite.sh
