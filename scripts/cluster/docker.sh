#!/bin/bash
# The docker CLI (Debian's 20.10, legacy builder) against the cluster's own dockerd:
#   scripts/cluster/docker.sh images | ps | run --rm --network none dysco/base:bookworm python3 -V
set -euo pipefail
# shellcheck source=scripts/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export DOCKER_HOST=unix://$DOCKER_SOCK DOCKER_BUILDKIT=0
exec "$DOCKER_BIN" "$@"
