#!/bin/bash
# Print shell exports for using the local cluster from a shell or a test runner:
#   eval "$(scripts/cluster/env.sh)"
# KUBECONFIG=<repo>/.cluster/kubeconfig, DOCKER_HOST=<our dockerd>, DOCKER_BUILDKIT=0, and PATH
# with the cluster's kubectl (v1.20.2) and the venv's helm in front. For the docker CLI use
# scripts/cluster/docker.sh (Debian's 20.10 CLI against our daemon).
set -euo pipefail
# shellcheck source=scripts/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_FILE"
printf 'export DOCKER_HOST=%q\n' "unix://$DOCKER_SOCK"
printf 'export DOCKER_BUILDKIT=0\n'
# shellcheck disable=SC2016  # $PATH is expanded by the shell that evals this
printf 'export PATH=%q:%q:"$PATH"\n' "$K8S_BIN" "$REPO/.venv/bin"
