# shellcheck shell=bash
# shellcheck disable=SC2034  # variables are used by the scripts that source this file
# Shared settings and helpers for scripts/cluster/*.sh (sourced, not executed).
#
# One local single-node Kubernetes v1.20.2 cluster per machine, built from Debian bookworm's
# `kubernetes` source package. Everything listens on 127.0.0.1 or on our own bridge.

# --- paths -------------------------------------------------------------------------------
CLUSTER_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$CLUSTER_SCRIPTS/../.." && pwd)
DYSCO_CACHE=${DYSCO_CACHE:-/var/cache/dysco}        # survives clones and `down`: binaries, images
K8S_DIR=$DYSCO_CACHE/k8s                            # Debian source tree + Go build cache
K8S_BIN=$K8S_DIR/bin                                # kube-* binaries, kubectl
DOCKER_DATA=$DYSCO_CACHE/docker                     # dockerd --data-root (images persist)
STATE=${DYSCO_CLUSTER_STATE:-/var/lib/dysco-cluster}  # runtime state: etcd, pki, kubelet, sockets
CLUSTER_DIR=$REPO/.cluster                          # per-clone: kubeconfig, pids, logs
PID_DIR=$CLUSTER_DIR/pids
LOG_DIR=$CLUSTER_DIR/logs
KUBECONFIG_FILE=$CLUSTER_DIR/kubeconfig
DOCKER_SOCK=$STATE/docker.sock
DOCKER_BIN=/usr/bin/docker     # Debian docker.io 20.10 (/usr/local/bin/docker may be a newer CLI without buildx)

# --- network -----------------------------------------------------------------------------
POD_CIDR=10.244.0.0/16          # cluster CIDR (kube-proxy --cluster-cidr)
NODE_POD_SUBNET=10.244.0.0/24   # this node's range (host-local IPAM)
POD_GW=10.244.0.1               # address of the bridge on the host
CNI_BRIDGE=cni-dysco0
SERVICE_CIDR=10.96.0.0/16
API_SVC_IP=10.96.0.1            # ClusterIP of default/kubernetes
API_PORT=16443
ETCD_PORT=23790
ETCD_PEER_PORT=23800
NODE_NAME=localhost

# --- images ------------------------------------------------------------------------------
BASE_IMAGE=dysco/base:bookworm
PAUSE_IMAGE=dysco/pause:3.2

K8S_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

# Debian packages: build (Go toolchain, apt source) and runtime (etcd, docker, CNI, images).
BUILD_PKGS=(golang-go dpkg-dev rsync jq make golang-github-modern-go-reflect2-dev)
RUNTIME_PKGS=(etcd-server docker.io containernetworking-plugins debootstrap conntrack iptables
  nftables iproute2 openssl curl ca-certificates python3 util-linux procps)

# --- helpers -----------------------------------------------------------------------------
log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[cluster %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (needs netns, iptables, docker)"; }

_apt_updated=0
# ensure_pkgs PKG...: install the Debian packages that are missing (no-op and fast when present).
ensure_pkgs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "apt: installing ${missing[*]}"
  local t0; t0=$(now)
  export DEBIAN_FRONTEND=noninteractive
  if [ "$_apt_updated" = 0 ]; then apt-get update -qq >/dev/null; _apt_updated=1; fi
  # never let a package's postinst start a system-wide daemon (docker.io would create docker0 + iptables)
  local policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy_added=1
  fi
  local rc=0 out
  out=$(apt-get install -y -q --no-install-recommends "${missing[@]}" 2>&1) || rc=$?
  if [ "$policy_added" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  if [ "$rc" != 0 ]; then printf '%s\n' "$out" | tail -n 30 >&2; die "apt-get install failed"; fi
  log "apt: done in $(since "$t0") s"
}

# Docker CLI against our own daemon.
dk() { DOCKER_HOST=unix://$DOCKER_SOCK DOCKER_BUILDKIT=0 "$DOCKER_BIN" "$@"; }
docker_up() { [ -S "$DOCKER_SOCK" ] && dk info >/dev/null 2>&1; }

kc() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# pid_alive NAME: the process recorded in $PID_DIR/NAME.pid is running and is NAME (not a
# reused PID, e.g. after a reboot).
pid_alive() {
  local f=$PID_DIR/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${1:0:15}" ]
}

# start_bg NAME CMD...: run CMD in the background with its log in $LOG_DIR/NAME.log, record the PID.
start_bg() {
  local name=$1; shift
  mkdir -p "$PID_DIR" "$LOG_DIR"
  if [ -s "$LOG_DIR/$name.log" ]; then mv -f "$LOG_DIR/$name.log" "$LOG_DIR/$name.log.prev"; fi
  # setsid: own session, so the caller's Ctrl-C or a CI step ending does not take it down
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$PID_DIR/$name.pid"
}

# wait_for TIMEOUT_S DESCRIPTION NAME CMD...: poll CMD every 0.2 s; fail if NAME's process dies.
wait_for() {
  local timeout=$1 what=$2 name=$3; shift 3
  local deadline; deadline=$(awk -v n="$(now)" -v t="$timeout" 'BEGIN { printf "%d", n + t }')
  until "$@" >/dev/null 2>&1; do
    # kill -0, not pid_alive: the process was just started and until it execs its comm
    # is still setsid's (or env's), which the name check would take for a dead process
    if [ -n "$name" ] && ! kill -0 "$(cat "$PID_DIR/$name.pid" 2>/dev/null)" 2>/dev/null; then
      tail -n 30 "$LOG_DIR/$name.log" >&2 || true
      die "$name exited while waiting for: $what (log: $LOG_DIR/$name.log)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      [ -z "$name" ] || tail -n 30 "$LOG_DIR/$name.log" >&2 || true
      die "timed out after ${timeout}s waiting for: $what"
    fi
    sleep 0.2
  done
}

api_ready() {
  [ -f "$STATE/pki/admin.token" ] || return 1
  [ "$(curl -s --max-time 2 --cacert "$STATE/pki/ca.crt" \
        -H "Authorization: Bearer $(cat "$STATE/pki/admin.token")" \
        "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null)" = ok ]
}

node_ready() {
  [ "$(kc get node "$NODE_NAME" \
        -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# start_dockerd: our own dockerd (no docker0, no iptables/sysctl changes, runc wrapper as the
# default runtime), data under $DOCKER_DATA so images survive `down`. No-op when it answers.
start_dockerd() {
  if docker_up; then return 0; fi
  if [ -e "$DOCKER_SOCK" ] && ! pid_alive dockerd; then rm -f "$DOCKER_SOCK"; fi
  mkdir -p "$STATE/bin" "$DOCKER_DATA" "$STATE/docker-exec"
  install -m 0755 "$CLUSTER_SCRIPTS/runc-wrap" "$STATE/bin/runc-wrap"
  cat > "$STATE/docker-daemon.json" <<JSON
{
  "runtimes": {"runc-wrap": {"path": "$STATE/bin/runc-wrap"}},
  "default-runtime": "runc-wrap",
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "2"}
}
JSON
  local t0; t0=$(now)
  start_bg dockerd dockerd --config-file "$STATE/docker-daemon.json" \
    --data-root "$DOCKER_DATA" --exec-root "$STATE/docker-exec" \
    -H "unix://$DOCKER_SOCK" --pidfile "$STATE/dockerd.pid" \
    --bridge=none --iptables=false --ip-masq=false --ip-forward=false
  wait_for 60 "dockerd on $DOCKER_SOCK" dockerd docker_up
  log "dockerd ready in $(since "$t0") s (data-root $DOCKER_DATA, socket $DOCKER_SOCK)"
}
