#!/bin/bash
# Show the local cluster's state: daemons (by recorded PID), API, node, pods. Exit 0 when the
# cluster is up and the node Ready, 1 otherwise.
set -euo pipefail
# shellcheck source=scripts/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
rc=0
for d in dockerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  if pid_alive "$d"; then
    printf '  %-24s running (PID %s)\n' "$d" "$(cat "$PID_DIR/$d.pid")"
  else
    printf '  %-24s not running\n' "$d"; rc=1
  fi
done
if api_ready; then
  echo "  api: https://127.0.0.1:$API_PORT ready; kubeconfig $KUBECONFIG_FILE"
  if node_ready; then echo "  node $NODE_NAME: Ready"; else echo "  node $NODE_NAME: NOT Ready"; rc=1; fi
  kc get pods --all-namespaces -o wide 2>/dev/null | sed 's/^/  /' || true
else
  echo "  api: not ready"; rc=1
fi
[ -f "$K8S_BIN/.stamp" ] && echo "  binaries: $K8S_BIN ($(sed -n 's/^debian-version=//p' "$K8S_BIN/.stamp"))"
if docker_up; then
  dk images --format '  image: {{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'dysco/' || true
fi
exit "$rc"
