#!/usr/bin/env bash
# Checks what deploy/ holds without a cluster or a container engine: the Prometheus alert
# rules (`promtool check rules`, and `promtool test rules` with their unit tests), installing
# Debian's prometheus package for promtool when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

if ! command -v promtool >/dev/null 2>&1; then
  apt_install --no-install-recommends prometheus
fi
log "deploy: promtool check rules, promtool test rules"
(cd deploy/prometheus && promtool check rules alerts.yaml && promtool test rules alerts.test.yaml)
