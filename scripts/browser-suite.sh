#!/usr/bin/env bash
# The dashboard's end-to-end suite (tests/browser/suite.py): Debian's headless Chromium and
# ChromeDriver driven by Selenium, the gateway binary on Postgres and Redis, the OpenAI SDK as
# the user's code. Provides everything it needs: the services (as .ci/run does), the browser
# and driver (apt), the Python packages (a venv under the target directory, pinned in
# tests/browser/requirements.txt), and the binaries (cargo build, the test profile's target).
# Writes the README's screenshots to docs/screenshots/; a failing step leaves its page and a
# screenshot in target/browser-artifacts/. Bounded: the suite is killed after 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"

. scripts/services.sh
log "browser suite: services"
ensure_postgres
ensure_redis

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt_install chromium chromium-driver
fi
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt_install python3 python3-venv
fi
venv="$target/browser-venv"
if ! "$venv/bin/python" -c 'import selenium, openai' >/dev/null 2>&1; then
  log "browser suite: Python packages into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/browser/requirements.txt
fi
/usr/bin/chromium --version 2>/dev/null

log "browser suite: binaries"
cargo build --locked -p bluesminds -p bluesminds-mock

log "browser suite: tests/browser/suite.py"
BLUESMINDS_BIN="$target/debug/bluesminds" MOCK_BIN="$target/debug/bluesminds-mock" \
  SCREENSHOTS=docs/screenshots ARTIFACTS="$target/browser-artifacts" \
  timeout --kill-after=10 600 "$venv/bin/python" tests/browser/suite.py
