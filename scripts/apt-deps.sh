#!/bin/bash
# Debian packages the project needs on a new machine (idempotent, quiet when present).
set -euo pipefail
PKGS=(iptables nftables conntrack libnetfilter-queue-dev iproute2 iperf3 tcpdump ethtool iputils-ping unzip procps)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "apt-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
