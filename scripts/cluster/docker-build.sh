#!/bin/bash
# Build a container image for the local cluster with the cluster's own dockerd (no registry):
#   scripts/cluster/docker-build.sh <context-dir> <tag> [dockerfile] [extra docker build args...]
# e.g.
#   scripts/cluster/docker-build.sh . dysco/agent:dev agent-sidecar/Dockerfile
# Dockerfiles start FROM dysco/base:bookworm (Debian bookworm + python3, python3-venv, iproute2,
# iptables, conntrack, libnetfilter-queue1, ca-certificates, procps). The build runs with
# --network host, so RUN apt-get (deb.debian.org) and pip install (PyPI) work. Use the tag in pod
# specs with imagePullPolicy: Never (or IfNotPresent). Starts dockerd and builds the base image
# if needed; the image is then visible to the kubelet at once (same dockerd).
set -euo pipefail
# shellcheck source=scripts/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root
[ $# -ge 2 ] || die "usage: $0 <context-dir> <tag> [dockerfile] [docker build args...]"
ctx=$1 tag=$2; shift 2
df=""
if [ $# -ge 1 ]; then df=$1; shift; fi
[ -d "$ctx" ] || die "no such build context: $ctx"

"$CLUSTER_SCRIPTS/base-image.sh" >/dev/null   # starts dockerd, makes dysco/base:bookworm (cached)
t0=$(now)
args=(build --network host -t "$tag")
if [ -n "$df" ]; then args+=(-f "$df"); fi
log "docker build $tag (context $ctx${df:+, dockerfile $df})"
dk "${args[@]}" "$@" "$ctx"
log "built $tag in $(since "$t0") s: $(dk image inspect -f '{{.Id}}' "$tag" | cut -c1-19)"
