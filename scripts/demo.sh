#!/bin/bash
# `make demo` after setup and cluster-up: images (rebuilt only when the sources changed),
# the chart with the real data plane, then `dysco demo` (its exit status is ours).
# The cluster and the demo namespace are left running; the last lines say how to reach them.
# Usage: scripts/demo.sh [dysco demo options...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
eval "$(scripts/cluster/env.sh)"
TAG=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
log() { printf '[make demo %s] %s\n' "$(date -u +%T)" "$*"; }

# Images: keyed on the content of what goes into the wheels (tracked and modified files).
digest=$( { git ls-files -s agent-sidecar operator pyproject.toml; git diff HEAD -- agent-sidecar operator pyproject.toml; } | sha256sum | cut -c1-16)
stamp=$ROOT/.cluster/images-$TAG.digest
if [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ] \
    && scripts/cluster/docker.sh image inspect "dysco/agent:$TAG" "dysco/operator:$TAG" >/dev/null 2>&1; then
  log "images dysco/agent:$TAG and dysco/operator:$TAG are up to date"
else
  log "building images dysco/agent:$TAG and dysco/operator:$TAG (about 3 minutes)"
  t0=$SECONDS
  scripts/build-images.sh "$TAG" >"$ROOT/.cluster/logs/build-images.log" 2>&1 \
    || { tail -20 "$ROOT/.cluster/logs/build-images.log"; exit 1; }
  echo "$digest" >"$stamp"
  log "images built in $((SECONDS - t0)) s"
fi

# helm installs the chart's CRDs only on first install: apply them, a new field would be pruned
kubectl apply -f charts/dysco/crds/ >/dev/null 2>&1 || kubectl create -f charts/dysco/crds/ >/dev/null
log "helm upgrade --install dysco (namespace dysco-system, real data plane)"
helm upgrade --install dysco charts/dysco -n dysco-system --create-namespace \
  -f charts/dysco/ci/local-cluster-values.yaml \
  -f charts/dysco/ci/local-cluster-dataplane-values.yaml \
  --set "operator.image.tag=$TAG,agent.image.tag=$TAG" --wait --timeout 300s >/dev/null
kubectl -n dysco-system rollout status daemonset/dysco-agent --timeout=300s >/dev/null
kubectl -n dysco-system rollout status deployment/dysco-operator --timeout=300s >/dev/null
log "operator and agents ready"

status=0
.venv/bin/dysco demo --image "dysco/agent:$TAG" --pull-policy Never "$@" || status=$?

cat <<EOF

The cluster keeps running:
  eval "\$(scripts/cluster/env.sh)"            # KUBECONFIG=$KUBECONFIG, kubectl, helm
  kubectl -n dysco-demo get schain -w         # sessions by revision (BY-REVISION)
  kubectl -n dysco-demo get events --sort-by=.lastTimestamp
  kubectl -n dysco-system get --raw '/api/v1/namespaces/dysco-system/pods/\$(kubectl -n dysco-system get pod -l app.kubernetes.io/component=agent -o jsonpath={.items[0].metadata.name}):9402/proxy/metrics'
  kubectl -n dysco-system get --raw '/api/v1/namespaces/dysco-system/services/dysco-operator-metrics:9401/proxy/metrics'
Tear down: kubectl delete namespace dysco-demo; helm -n dysco-system uninstall dysco (before make test); make cluster-down
EOF
exit $status
