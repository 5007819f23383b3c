#!/bin/bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl
# (v1.20.2) from Debian bookworm's `kubernetes` SOURCE package, offline (GOPROXY=off), and install
# the Debian packages the cluster needs. Cached in $DYSCO_CACHE/k8s (default /var/cache/dysco):
# a second run is a no-op when the binaries and their stamp are present. FORCE=1 rebuilds.
#
# Usage: scripts/cluster/build.sh
set -euo pipefail
# shellcheck source=scripts/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

# Bump when the build recipe changes, so cached binaries get rebuilt.
RECIPE=1
WANT_STAMP="recipe=$RECIPE components=${K8S_COMPONENTS[*]}"

t_all=$(now)
ensure_pkgs "${BUILD_PKGS[@]}" "${RUNTIME_PKGS[@]}"

binaries_ok() {
  local c
  for c in "${K8S_COMPONENTS[@]}"; do [ -x "$K8S_BIN/$c" ] || return 1; done
  [ -f "$K8S_BIN/.stamp" ] && grep -qxF "$WANT_STAMP" "$K8S_BIN/.stamp"
}
if [ "${FORCE:-0}" != 1 ] && binaries_ok; then
  log "build: kubernetes binaries up to date in $K8S_BIN ($(sed -n 's/^debian-version=//p' "$K8S_BIN/.stamp"))"
  exit 0
fi

# --- Debian source ---------------------------------------------------------------------
if ! grep -rqsE '^(Types: *deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "build: adding a deb-src entry for bookworm (/etc/apt/sources.list.d/dysco-debian-src.sources)"
  cat > /etc/apt/sources.list.d/dysco-debian-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
fi

SRC_ROOT=$K8S_DIR/src
mkdir -p "$SRC_ROOT" "$K8S_DIR/home" "$K8S_BIN"
src_dir() { find "$SRC_ROOT" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | sort | tail -n 1; }
if [ -z "$(src_dir)" ]; then
  t0=$(now)
  log "build: apt-get source kubernetes (~34 MB) into $SRC_ROOT"
  # apt-get source fetches as root into a root-owned dir; the _apt sandbox warning is harmless
  (cd "$SRC_ROOT" && apt-get source -qq kubernetes >/dev/null 2>&1) \
    || (cd "$SRC_ROOT" && apt-get update -qq && apt-get source -qq kubernetes >/dev/null)
  log "build: source unpacked in $(since "$t0") s"
fi
SRC=$(src_dir)
[ -n "$SRC" ] || die "no kubernetes-* source tree in $SRC_ROOT"
DEB_VERSION=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Version 2>/dev/null || echo unknown)
log "build: source $SRC (Debian $DEB_VERSION)"

# Vendored modern-go/reflect2 v1.0.1 segfaults under Go >= 1.18 (map iteration, on the first
# custom-resource POST); use Debian's v1.0.2 instead.
R2=/usr/share/gocode/src/github.com/modern-go/reflect2
if ! cmp -s "$R2/go_above_118.go" "$SRC/vendor/github.com/modern-go/reflect2/go_above_118.go" 2>/dev/null; then
  log "build: replacing vendored reflect2 with Debian's golang-github-modern-go-reflect2-dev"
  rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
  mkdir -p "$SRC/vendor/github.com/modern-go/reflect2"
  cp -a "$R2/." "$SRC/vendor/github.com/modern-go/reflect2/"
fi

# --- compile (GOPATH mode via upstream make, as debian/rules does; it generates openapi code) ----
WHAT=""
for c in "${K8S_COMPONENTS[@]}"; do WHAT="$WHAT cmd/$c"; done
WHAT=${WHAT# }
export GOPATH=$SRC/.go GOCACHE=$K8S_DIR/gocache GOPROXY=off CGO_ENABLED=0 HOME=$K8S_DIR/home
export GOGC=${GOGC:-400}   # fewer GC cycles in the compiler: a little faster, RAM is plentiful
export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn ../../.. "$GOPATH/src/k8s.io/kubernetes"
t0=$(now)
log "build: make WHAT='$WHAT' (cold: ~6-7 min on 2 cores; log: $K8S_DIR/build.log)"
if ! (cd "$SRC" && make WHAT="$WHAT" GOLDFLAGS="-s -w" > "$K8S_DIR/build.log" 2>&1); then
  tail -n 40 "$K8S_DIR/build.log" >&2
  die "kubernetes build failed (full log: $K8S_DIR/build.log)"
fi
log "build: compiled in $(since "$t0") s"

rm -f "$K8S_BIN/.stamp"
for c in "${K8S_COMPONENTS[@]}"; do
  install -m 0755 "$SRC/_output/bin/$c" "$K8S_BIN/$c.new"
  mv -f "$K8S_BIN/$c.new" "$K8S_BIN/$c"
done
printf '%s\ndebian-version=%s\nbuilt=%s\n' "$WANT_STAMP" "$DEB_VERSION" "$(date -u +%FT%TZ)" \
  > "$K8S_BIN/.stamp"
log "build: $("$K8S_BIN/kube-apiserver" --version) -> $K8S_BIN (total $(since "$t_all") s)"
