#!/bin/bash
# Start the local single-node Kubernetes v1.20.2 cluster (idempotent):
#   dockerd -> etcd -> kube-apiserver -> controller-manager, scheduler -> kubelet (dockershim,
#   CNI bridge cni-dysco0 + host-local) -> kube-proxy (iptables mode); waits for node Ready.
# On a new machine it first installs the Debian packages, builds the binaries (8-12 min, cached in
# $DYSCO_CACHE) and the base images. When the cluster is already up it checks and exits 0.
#
# Servers listen on 127.0.0.1; pods live on the bridge cni-dysco0 (10.244.0.0/24, no default
# route), Services in 10.96.0.0/16. Pods reach the API server via the usual kubernetes Service
# (10.96.0.1:443), DNAT'ed to 127.0.0.1:16443 by a small nftables table (dysco_cluster).
#
# Usage: scripts/cluster/up.sh        Kubeconfig: <repo>/.cluster/kubeconfig
set -euo pipefail
# shellcheck source=scripts/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

DAEMONS=(dockerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

all_alive() { local d; for d in "${DAEMONS[@]}"; do pid_alive "$d" || return 1; done; }

# --- already up? ---------------------------------------------------------------------------
if all_alive && api_ready && node_ready; then
  log "cluster already up (node $NODE_NAME Ready); kubeconfig: $KUBECONFIG_FILE"
  exit 0
fi
if [ -f "$STATE/owner" ] && [ "$(cat "$STATE/owner")" != "$REPO" ] && api_ready; then
  # started from another clone on this machine: share it (one cluster per machine)
  mkdir -p "$CLUSTER_DIR"
  cp "$STATE/kubeconfig" "$KUBECONFIG_FILE"
  log "cluster is up, started from $(cat "$STATE/owner") (stop it with its down.sh);" \
    "kubeconfig copied to $KUBECONFIG_FILE"
  exit 0
fi
for d in "${DAEMONS[@]}"; do
  if [ -f "$PID_DIR/$d.pid" ] && ! pid_alive "$d"; then
    log "WARNING: $d was recorded but is not running (crash or reboot?); restarting it" \
      "(old log: $LOG_DIR/$d.log)"
    rm -f "$PID_DIR/$d.pid"
  fi
done

t_all=$(now)
declare -a TIMES=()
step_done() { TIMES+=("$(printf '%-30s %6s s' "$1" "$(since "$2")")"); log "$1: done in $(since "$2") s"; }

# --- 1. packages, binaries, images, tools ------------------------------------------------------
t0=$(now)
ensure_pkgs "${BUILD_PKGS[@]}" "${RUNTIME_PKGS[@]}"
step_done "apt packages" "$t0"

t0=$(now)
# base images (debootstrap, mostly I/O) are built while the binaries compile
"$CLUSTER_SCRIPTS/base-image.sh" &
img_pid=$!
build_rc=0; "$CLUSTER_SCRIPTS/build.sh" || build_rc=$?
img_rc=0; wait "$img_pid" || img_rc=$?
[ "$build_rc" = 0 ] || die "build.sh failed"
[ "$img_rc" = 0 ] || die "base-image.sh failed"
step_done "binaries + images" "$t0"

"$CLUSTER_SCRIPTS/tools.sh" || log "WARNING: tools.sh failed (helm/kubectl in .venv); the cluster does not need them"

# --- 2. state, certificates, kubeconfig (generated once) -------------------------------------
mkdir -p "$STATE/pki" "$PID_DIR" "$LOG_DIR"
echo "$REPO" > "$STATE/owner"
PKI=$STATE/pki
if [ ! -s "$PKI/apiserver.crt" ]; then
  t0=$(now)
  log "pki: generating CA, API server certificate, service-account key and admin token in $PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dysco-cluster-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$PKI/apiserver.key" -out "$PKI/apiserver.csr" 2>/dev/null
  printf '%s\n' \
    "subjectAltName=IP:127.0.0.1,IP:$API_SVC_IP,IP:$POD_GW,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
    "extendedKeyUsage=serverAuth" "keyUsage=digitalSignature,keyEncipherment" > "$PKI/apiserver.ext"
  openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$PKI/apiserver.ext" -out "$PKI/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rand -hex 24 > "$PKI/admin.token"
  printf '%s,admin,admin,system:masters\n' "$(cat "$PKI/admin.token")" > "$PKI/tokens.csv"
  chmod 600 "$PKI"/*.key "$PKI/admin.token" "$PKI/tokens.csv"
  step_done "pki (once)" "$t0"
fi
cat > "$STATE/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: dysco
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: admin
  user:
    token: $(cat "$PKI/admin.token")
contexts:
- name: dysco
  context: {cluster: dysco, user: admin, namespace: default}
current-context: dysco
KC
chmod 600 "$STATE/kubeconfig"
cp "$STATE/kubeconfig" "$KUBECONFIG_FILE"
KC=$STATE/kubeconfig

# host settings we change; down.sh restores them
if [ ! -f "$STATE/sysctl.orig" ]; then
  printf 'net.ipv4.conf.all.route_localnet=%s\n' "$(sysctl -n net.ipv4.conf.all.route_localnet)" \
    > "$STATE/sysctl.orig"
fi

# --- 3. dockerd ------------------------------------------------------------------------------
t0=$(now)
start_dockerd
step_done "dockerd" "$t0"

# --- 4. etcd + kube-apiserver --------------------------------------------------------------------
t0=$(now)
if ! pid_alive etcd; then
  mkdir -p "$STATE/etcd"
  start_bg etcd etcd --name dysco --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "dysco=http://127.0.0.1:$ETCD_PEER_PORT" \
    --quota-backend-bytes 2147483648
fi
etcd_ok() { curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
wait_for 60 "etcd health on 127.0.0.1:$ETCD_PORT" etcd etcd_ok
step_done "etcd" "$t0"

t0=$(now)
if ! pid_alive kube-apiserver; then
  start_bg kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --secure-port="$API_PORT" --insecure-port=0 --advertise-address=127.0.0.1 \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --service-account-key-file="$PKI/sa.key" --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="$SERVICE_CIDR" --endpoint-reconciler-type=none \
    --kubelet-preferred-address-types=Hostname,InternalIP
fi
wait_for 90 "kube-apiserver /readyz on 127.0.0.1:$API_PORT" kube-apiserver api_ready
step_done "kube-apiserver" "$t0"

# The apiserver itself only listens on loopback: give default/kubernetes (10.96.0.1:443) an
# endpoint on the bridge address; nft (below) maps both to 127.0.0.1:$API_PORT.
kc apply -f - >/dev/null <<EP
apiVersion: v1
kind: Endpoints
metadata: {name: kubernetes, namespace: default}
subsets:
- addresses: [{ip: $POD_GW}]
  ports: [{name: https, port: $API_PORT, protocol: TCP}]
EP

mkdir -p "$STATE/kubelet-plugins"

# --- 5. controller-manager, scheduler ---------------------------------------------------------
t0=$(now)
if ! pid_alive kube-controller-manager; then
  start_bg kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig="$KC" \
    --bind-address=127.0.0.1 --port=0 --secure-port=0 --leader-elect=false \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials=false --controllers='*,-nodeipam' \
    --cluster-cidr="$POD_CIDR" --service-cluster-ip-range="$SERVICE_CIDR" \
    --flex-volume-plugin-dir="$STATE/kubelet-plugins"
fi
if ! pid_alive kube-scheduler; then
  start_bg kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$KC" \
    --bind-address=127.0.0.1 --port=0 --secure-port=0 --leader-elect=false
fi
step_done "controller-manager+scheduler" "$t0"

# --- 6. network: bridge, CNI config, API DNAT ---------------------------------------------------
t0=$(now)
mkdir -p "$STATE/cni/net.d" "$STATE/cni/ipam" "$STATE/cni/cache"
cat > "$STATE/cni/net.d/10-dysco.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "dysco",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_SUBNET", "gateway": "$POD_GW"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    },
    {"type": "loopback"}
  ]
}
CNI
# Create the bridge ourselves (the bridge plugin adopts it) so that the host has routes to the
# pod subnet and the service CIDR through it before the first pod exists.
if ! ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
  ip link add "$CNI_BRIDGE" type bridge
fi
ip addr replace "$POD_GW/${NODE_POD_SUBNET#*/}" dev "$CNI_BRIDGE"
ip link set "$CNI_BRIDGE" up
ip route replace "$SERVICE_CIDR" dev "$CNI_BRIDGE" src "$POD_GW"
# Pods -> API server: 10.96.0.1:443 and $POD_GW:$API_PORT go to 127.0.0.1:$API_PORT. Priority
# -110 runs before iptables' nat table (-100), i.e. before kube-proxy's rules for the Service.
sysctl -qw net.ipv4.conf.all.route_localnet=1
nft -f - <<NFT
table ip dysco_cluster
delete table ip dysco_cluster
table ip dysco_cluster {
  chain prerouting {
    type nat hook prerouting priority -110; policy accept;
    iifname "$CNI_BRIDGE" ip daddr $API_SVC_IP tcp dport 443 dnat to 127.0.0.1:$API_PORT
    iifname "$CNI_BRIDGE" ip daddr $POD_GW tcp dport $API_PORT dnat to 127.0.0.1:$API_PORT
  }
  chain output {
    type nat hook output priority -110; policy accept;
    ip daddr $API_SVC_IP tcp dport 443 dnat to 127.0.0.1:$API_PORT
  }
}
NFT
step_done "bridge + CNI + API DNAT" "$t0"

# --- 7. kubelet, kube-proxy -----------------------------------------------------------------------
t0=$(now)
mkdir -p "$STATE/kubelet" "$STATE/kubelet-pki" "$STATE/dockershim"
if ! pid_alive kubelet; then
  # AWS_EC2_METADATA_DISABLED: the kubelet's ECR credential provider would otherwise probe the
  # EC2 metadata address (169.254.169.254) at start. --docker/--docker-root/--containerd point
  # the embedded cadvisor at our daemons instead of the default /var/run sockets.
  start_bg kubelet env AWS_EC2_METADATA_DISABLED=true "$K8S_BIN/kubelet" --kubeconfig="$KC" \
    --hostname-override="$NODE_NAME" --node-status-update-frequency=2s \
    --container-runtime=docker --docker-endpoint="unix://$DOCKER_SOCK" \
    --container-runtime-endpoint="unix://$STATE/dockershim.sock" \
    --image-service-endpoint="unix://$STATE/dockershim.sock" \
    --docker="unix://$DOCKER_SOCK" --docker-root="$DOCKER_DATA" \
    --containerd="$STATE/docker-exec/containerd/containerd.sock" \
    --pod-infra-container-image="$PAUSE_IMAGE" \
    --network-plugin=cni --cni-bin-dir=/usr/lib/cni --cni-conf-dir="$STATE/cni/net.d" \
    --cni-cache-dir="$STATE/cni/cache" \
    --root-dir="$STATE/kubelet" --cert-dir="$STATE/kubelet-pki" \
    --volume-plugin-dir="$STATE/kubelet-plugins" \
    --experimental-dockershim-root-directory="$STATE/dockershim" \
    --address=127.0.0.1 --healthz-bind-address=127.0.0.1 --read-only-port=0 \
    --fail-swap-on=false --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= \
    --authentication-token-webhook=false --anonymous-auth=true --authorization-mode=AlwaysAllow \
    --eviction-hard= --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
    --pod-manifest-path= --serialize-image-pulls=false --oom-score-adj=0
fi
if ! pid_alive kube-proxy; then
  start_bg kube-proxy "$K8S_BIN/kube-proxy" --kubeconfig="$KC" --hostname-override="$NODE_NAME" \
    --proxy-mode=iptables --cluster-cidr="$POD_CIDR" --bind-address=127.0.0.1 \
    --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 \
    --conntrack-tcp-timeout-close-wait=0 --oom-score-adj=0
fi
wait_for 120 "node $NODE_NAME Ready" kubelet node_ready
step_done "kubelet (node Ready)" "$t0"

t0=$(now)
proxy_ok() { curl -sf --max-time 2 http://127.0.0.1:10256/healthz >/dev/null; }
wait_for 60 "kube-proxy healthz" kube-proxy proxy_ok
# pods are rejected until the token controller has given the ServiceAccount its secret
sa_ok() { [ -n "$(kc -n default get serviceaccount default -o 'jsonpath={.secrets[0].name}')" ]; }
wait_for 60 "default ServiceAccount token" kube-controller-manager sa_ok
step_done "kube-proxy + SA token" "$t0"

log "cluster up in $(since "$t_all") s"
printf '  %s\n' "${TIMES[@]}"
cat <<INFO
  kubeconfig : $KUBECONFIG_FILE   (export KUBECONFIG=$KUBECONFIG_FILE)
  env        : eval "\$(scripts/cluster/env.sh)"   (KUBECONFIG, DOCKER_HOST, PATH with kubectl/helm)
  node       : $NODE_NAME    pods: $NODE_POD_SUBNET on $CNI_BRIDGE    services: $SERVICE_CIDR
  images     : $BASE_IMAGE, $PAUSE_IMAGE (imagePullPolicy: Never); build more with
               scripts/cluster/docker-build.sh <context> <tag> [dockerfile]
  logs, pids : $LOG_DIR, $PID_DIR        stop: scripts/cluster/down.sh
INFO
