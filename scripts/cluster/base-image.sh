#!/bin/bash
# Local images for the cluster, built without any registry:
#   dysco/rootfs:bookworm  Debian bookworm rootfs from debootstrap (python3, python3-venv, iproute2,
#                          iptables, conntrack, libnetfilter-queue1, ca-certificates, procps)
#   dysco/base:bookworm  the same + the host's extra CA certificates (images/base/Dockerfile):
#                        the base for all project images
#   dysco/pause:3.2      pod sandbox image (the kubelet's --pod-infra-container-image)
# The rootfs tarball is cached in $DYSCO_CACHE/images; images live in our dockerd's data-root
# ($DYSCO_CACHE/docker). Re-running is a fast no-op. Starts our dockerd if it is not running.
#
# Usage: scripts/cluster/base-image.sh
set -euo pipefail
# shellcheck source=scripts/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root
ensure_pkgs debootstrap docker.io

MIRROR=http://deb.debian.org/debian
INCLUDE=python3,python3-venv,iproute2,iptables,conntrack,libnetfilter-queue1,ca-certificates,procps
RECIPE=1
KEY=$(printf '%s\n' "$RECIPE" "$MIRROR" "$INCLUDE" | sha256sum | cut -c1-12)
IMG_DIR=$DYSCO_CACHE/images
ROOTFS_IMAGE=dysco/rootfs:bookworm
TARBALL=$IMG_DIR/bookworm-base-$KEY.tar

t_all=$(now)
if [ ! -s "$TARBALL" ]; then
  t0=$(now)
  log "base-image: debootstrap bookworm (minbase + $INCLUDE), ~30-60 s"
  mkdir -p "$IMG_DIR"
  ROOTFS=$(mktemp -d "$IMG_DIR/rootfs.XXXXXX")
  trap 'rm -rf "$ROOTFS"' EXIT
  if ! debootstrap --variant=minbase --include="$INCLUDE" bookworm "$ROOTFS" "$MIRROR" \
      > "$IMG_DIR/debootstrap.log" 2>&1; then
    tail -n 30 "$IMG_DIR/debootstrap.log" >&2
    die "debootstrap failed (log: $IMG_DIR/debootstrap.log)"
  fi
  cat > "$ROOTFS/etc/apt/sources.list" <<SRC
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/var/log/* "$ROOTFS/etc/hostname" "$ROOTFS/etc/resolv.conf"
  tar -C "$ROOTFS" --numeric-owner -cf "$TARBALL.tmp" .
  mv -f "$TARBALL.tmp" "$TARBALL"
  rm -rf "$ROOTFS"; trap - EXIT
  log "base-image: rootfs $(du -h "$TARBALL" | cut -f1) in $(since "$t0") s -> $TARBALL"
fi

start_dockerd

label() { dk image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

if [ "$(label "$ROOTFS_IMAGE" org.dysco.rootfs)" != "$KEY" ]; then
  t0=$(now)
  dk import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.dysco.rootfs=$KEY" \
    --change 'CMD ["/bin/bash"]' \
    "$TARBALL" "$ROOTFS_IMAGE" >/dev/null
  log "base-image: imported $ROOTFS_IMAGE in $(since "$t0") s"
fi
ROOTFS_ID=$(dk image inspect -f '{{.Id}}' "$ROOTFS_IMAGE")

# dysco/base = rootfs + the host's extra CA certificates (images/base/Dockerfile)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/extra-ca"
cp "$CLUSTER_SCRIPTS/images/base/Dockerfile" "$ctx/"
touch "$ctx/extra-ca/.keep"
for crt in /usr/local/share/ca-certificates/*.crt; do
  if [ -f "$crt" ]; then cp "$crt" "$ctx/extra-ca/"; fi
done
BASE_KEY=$( (echo "$ROOTFS_ID"; cd "$ctx" && find . -type f | sort | xargs cat) | sha256sum | cut -c1-12)
if [ "$(label "$BASE_IMAGE" org.dysco.base-key)" != "$BASE_KEY" ]; then
  t0=$(now)
  dk build -q --network none --label "org.dysco.base-key=$BASE_KEY" \
    --build-arg "ROOTFS=$ROOTFS_IMAGE" -t "$BASE_IMAGE" "$ctx" >/dev/null
  log "base-image: built $BASE_IMAGE ($(find "$ctx/extra-ca" -name '*.crt' | wc -l) extra CA" \
    "certificates from the host) in $(since "$t0") s"
fi
rm -rf "$ctx"; trap - EXIT
BASE_ID=$(dk image inspect -f '{{.Id}}' "$BASE_IMAGE")

if [ "$(label "$PAUSE_IMAGE" org.dysco.base-id)" != "$BASE_ID" ]; then
  t0=$(now)
  dk build -q --network none --label "org.dysco.base-id=$BASE_ID" --build-arg "BASE=$BASE_IMAGE" \
    -t "$PAUSE_IMAGE" "$CLUSTER_SCRIPTS/images/pause" >/dev/null
  log "base-image: built $PAUSE_IMAGE in $(since "$t0") s"
fi
if [ -n "$(dk images -q --filter dangling=true)" ]; then dk image prune -f >/dev/null; fi
log "base-image: $BASE_IMAGE and $PAUSE_IMAGE ready ($(since "$t_all") s)"
