#!/bin/bash
# Stop the local cluster started by up.sh and undo its host changes:
#  - kills exactly the PIDs recorded in <repo>/.cluster/pids (never by name);
#  - removes the bridge cni-dysco0 (and its routes), the nftables table dysco_cluster, the
#    KUBE-* iptables/ip6tables chains of kubelet and kube-proxy, conntrack entries of the pod and
#    service ranges; restores net.ipv4.conf.all.route_localnet;
#  - unmounts and deletes runtime state (etcd data, kubelet dir, CNI IPAM), so the next up.sh
#    starts an empty cluster. Keeps the caches ($DYSCO_CACHE: binaries, images) and the
#    certificates/token in $STATE/pki (the kubeconfig stays valid).
#
# Usage: scripts/cluster/down.sh
set -euo pipefail
# shellcheck source=scripts/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

if [ -f "$STATE/owner" ] && [ "$(cat "$STATE/owner")" != "$REPO" ]; then
  owner=$(cat "$STATE/owner")
  if compgen -G "$owner/.cluster/pids/*.pid" >/dev/null; then
    die "the cluster was started from $owner: run $owner/scripts/cluster/down.sh"
  fi
fi

t_all=$(now)

# stop TIMEOUT_S NAME...: SIGTERM the recorded PIDs (if they still run that program), wait for
# them together, SIGKILL what is left after the timeout.
stop() {
  local timeout=$1 name f pid comm i j
  shift
  local -a names=() pids=()
  for name in "$@"; do
    f=$PID_DIR/$name.pid
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    rm -f "$f"
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then continue; fi
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    if [ "$comm" != "${name:0:15}" ]; then
      log "WARNING: PID $pid from $f is '$comm', not $name (reused PID?); not killing it"
      continue
    fi
    kill -TERM "$pid" 2>/dev/null || true
    names+=("$name"); pids+=("$pid")
  done
  for ((i = 0; i < ${#pids[@]}; i++)); do
    for ((j = 0; j < timeout * 10; j++)); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "${pids[i]}" 2>/dev/null; then
      log "${names[i]} (PID ${pids[i]}) did not stop in ${timeout}s; SIGKILL"
      kill -KILL "${pids[i]}" 2>/dev/null || true
    fi
    log "stopped ${names[i]} (PID ${pids[i]})"
  done
}

# --- 1. pods: delete through the kubelet so CNI DEL frees veths and IPs -----------------------
if pid_alive kubelet && api_ready; then
  stop 10 kube-controller-manager kube-scheduler   # nothing recreates or schedules pods any more
  t0=$(now)
  kc delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  pods_gone() { [ -z "$(dk ps -q --filter label=io.kubernetes.pod.name)" ]; }
  for _ in $(seq 100); do pods_gone && break; sleep 0.3; done
  log "pods deleted ($(since "$t0") s)"
fi

# --- 2. daemons --------------------------------------------------------------------------------
stop 15 kube-proxy kubelet kube-controller-manager kube-scheduler
pod_uids=""
if docker_up; then
  pod_uids=$(dk ps -a --filter label=io.kubernetes.pod.uid --format '{{.Label "io.kubernetes.pod.uid"}}')
  # leftover pod containers (dockershim keeps exited ones); other containers die with dockerd
  ids=$(dk ps -aq --filter label=io.kubernetes.pod.name)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    dk rm -f $ids >/dev/null 2>&1 || true
  fi
fi
stop 30 dockerd
stop 15 kube-apiserver
stop 15 etcd

# --- 3. host network state ------------------------------------------------------------------------
nft delete table ip dysco_cluster 2>/dev/null || true
# veths of pods whose netns outlived the kubelet (normally none), then the bridge and its routes
for v in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  ip link del "$v" 2>/dev/null || true
done
if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then ip link del "$CNI_BRIDGE"; fi

# KUBE-* chains of kubelet (KUBE-FIREWALL, KUBE-MARK-*, KUBE-KUBELET-CANARY, ...) and kube-proxy
# (KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-*, ...): drop the jumps from built-in chains, flush, delete.
clean_kube_chains() {
  local ipt=$1 t rule chains ch
  command -v "$ipt" >/dev/null || return 0
  for t in filter nat mangle; do
    "$ipt" -t "$t" -S >/dev/null 2>&1 || continue
    while IFS= read -r rule; do
      eval "set -- $rule"
      shift                                   # drop "-A"
      "$ipt" -t "$t" -D "$@" 2>/dev/null || true
    done < <("$ipt" -t "$t" -S | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j KUBE-' || true)
    chains=$("$ipt" -t "$t" -S | awk '/^-N KUBE-/ { print $2 }')
    for ch in $chains; do "$ipt" -t "$t" -F "$ch" 2>/dev/null || true; done
    for ch in $chains; do "$ipt" -t "$t" -X "$ch" 2>/dev/null || true; done
  done
}
clean_kube_chains iptables
clean_kube_chains ip6tables

if command -v conntrack >/dev/null; then
  for args in "-s $POD_CIDR" "-d $POD_CIDR" "-d $SERVICE_CIDR"; do
    # shellcheck disable=SC2086
    conntrack -D $args >/dev/null 2>&1 || true
  done
fi
if [ -f "$STATE/sysctl.orig" ]; then
  while IFS= read -r kv; do sysctl -qw "$kv" || true; done < "$STATE/sysctl.orig"
  rm -f "$STATE/sysctl.orig"
fi

# --- 4. runtime state -----------------------------------------------------------------------------
# logs of our pods (kubelet 1.20 writes them to the fixed /var/log/pods/<ns>_<name>_<uid>)
for d in "$STATE"/kubelet/pods/*/; do
  if [ -d "$d" ]; then pod_uids="$pod_uids $(basename "$d")"; fi
done
if [ -d /var/log/pods ]; then
  # shellcheck disable=SC2086  # split the list of UIDs
  for uid in $(printf '%s\n' $pod_uids | sort -u); do
    find /var/log/pods -mindepth 1 -maxdepth 1 -type d -name "*_$uid" -exec rm -rf {} +
  done
fi
if [ -d "$STATE" ]; then
  # secret/configmap tmpfs of pod volumes, netns bind mounts of docker
  findmnt -rn -o TARGET | grep -E "^$STATE/" | sort -r | while IFS= read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$STATE/etcd" "$STATE/kubelet" "$STATE/kubelet-pki" "$STATE/dockershim" "$STATE/cni" \
    "$STATE/docker-exec" "$STATE/docker.sock" "$STATE/dockerd.pid" "$STATE/owner" \
    "$STATE/dockershim.sock"
fi
# fixed paths of kubelet 1.20 outside $STATE: the device-plugin socket dir and pod logs
rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/DEPRECATION \
  /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint
rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || true
find /var/log/containers -maxdepth 1 -xtype l -name '*.log' -delete 2>/dev/null || true
rmdir "$PID_DIR" 2>/dev/null || true
log "cluster down in $(since "$t_all") s (caches kept in $DYSCO_CACHE, certificates in $STATE/pki)"
