#!/bin/bash
# Build the operator and agent images for the local cluster (no registry):
# wheels are built on the host (PyPI through pip), then the Dockerfiles install them offline
# on top of dysco/base:bookworm with the cluster's dockerd (scripts/cluster/docker-build.sh).
# Usage: scripts/build-images.sh [TAG]   (default: the version in pyproject.toml)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TAG=${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}
CTX=$ROOT/build/image-context
rm -rf "$CTX"; mkdir -p "$CTX/wheels"
# The project wheel + every dependency (netfilterqueue compiles against libnetfilter-queue-dev).
.venv/bin/pip wheel -q -w "$CTX/wheels" '.[nfq]'
scripts/cluster/docker-build.sh "$CTX" "dysco/operator:$TAG" "$ROOT/operator/Dockerfile"
scripts/cluster/docker-build.sh "$CTX" "dysco/agent:$TAG" "$ROOT/agent-sidecar/Dockerfile"
echo "images: dysco/operator:$TAG dysco/agent:$TAG"
