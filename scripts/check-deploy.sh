#!/usr/bin/env bash
# Checks what deploy/ holds without a cluster or a container engine:
# - the Prometheus alert rules: `promtool check rules` and `promtool test rules` (Debian's
#   prometheus package, installed when missing);
# - the Kubernetes manifests: the base and the production overlay rendered by
#   `kubectl kustomize`, validated offline against the Kubernetes 1.32 schemas
#   (`kubernetes-validate --strict`, from PyPI, which ships them);
# - deploy/compose.yaml against the Compose specification's schema (`check-jsonschema`, from
#   PyPI, which ships it);
# - the properties the deploy files promise (probes, non-root, read-only root filesystem,
#   termination grace above the drain, migrations once, secrets only as placeholders), by
#   tests/deploy/check_manifests.py on the rendered YAML.
# The Python tools live in a virtualenv under target/ (made on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

if ! command -v promtool >/dev/null 2>&1; then
  apt_install --no-install-recommends prometheus
fi
log "deploy: promtool check rules, promtool test rules"
(cd deploy/prometheus && promtool check rules alerts.yaml && promtool test rules alerts.test.yaml)

venv=target/deploy-venv
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/check-jsonschema" ]; then
  log "deploy: installing kubernetes-validate and check-jsonschema into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    'kubernetes-validate==1.37.0' 'check-jsonschema==0.39.0' 'PyYAML>=6'
fi
if ! command -v kubectl >/dev/null 2>&1; then
  apt_install --no-install-recommends kubernetes-client
fi

out=target/deploy-rendered
mkdir -p "$out"
log "deploy: kubectl kustomize (base, overlays/production)"
kubectl kustomize deploy/k8s/base >"$out/base.yaml"
kubectl kustomize deploy/k8s/overlays/production >"$out/production.yaml"
log "deploy: kubernetes-validate --strict (Kubernetes 1.32 schemas, offline)"
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.32.0 --quiet \
  "$out/base.yaml" "$out/production.yaml"
echo "rendered manifests are valid: $(grep -c '^kind:' "$out/base.yaml") resources (base), $(grep -c '^kind:' "$out/production.yaml") (production)"
log "deploy: deploy/compose.yaml against the Compose specification"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
log "deploy: what the manifests promise"
# Failures and the count are shown; pipefail carries the checker's exit status.
"$venv/bin/python" tests/deploy/check_manifests.py deploy/compose.yaml "$out/base.yaml" "$out/production.yaml" | grep -v '^ok '
