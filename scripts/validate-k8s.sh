#!/usr/bin/env bash
# Validates the Kubernetes deliverables (k8s/) and the Dockerfile without a cluster:
# kustomization references, a render of every kustomization, strict schema validation with
# kubernetes-validate against Kubernetes ${K8S_VERSION:-1.33.0}, PromQL in the alerts and the
# dashboard, the dashboard's structure and the Dockerfile's COPY sources.
# See scripts/k8s_check.py for every step. Exits non-zero on any error.
#
#   bash scripts/validate-k8s.sh                  # renders with kubectl/kustomize if installed
#   K8S_RENDER=builtin bash scripts/validate-k8s.sh   # force the built-in minimal render
#   K8S_VERSION=1.32.0 bash scripts/validate-k8s.sh
#
# Metric names and the config <-> manifest invariants are checked by
# `cargo test --test k8s_assets`; every .toml under k8s/ by `sidecache check` in that test.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(kubernetes-validate promql-parser dockerfile)
VENV=target/k8s-validate/venv
PY="$VENV/bin/python"

have_tools() {
    "$1" -c 'import kubernetes_validate, promql_parser, dockerfile, yaml' >/dev/null 2>&1
}

if command -v kubernetes-validate >/dev/null 2>&1 && have_tools python3; then
    PY=python3    # everything already installed on this machine
elif ! { [ -x "$PY" ] && have_tools "$PY"; }; then
    echo "validate-k8s: installing ${PACKAGES[*]} into $VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}"
fi

exec "$PY" scripts/k8s_check.py --kubernetes-version "${K8S_VERSION:-1.33.0}"
