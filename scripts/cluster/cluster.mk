# Local single-node Kubernetes (v1.20.2 from Debian's source package) for tests.
# Included by the top-level Makefile. See scripts/cluster/README.md.
CLUSTER_SCRIPTS := scripts/cluster
# this file is included near the top of the Makefile: keep its targets from becoming the default
_cluster_default_goal := $(.DEFAULT_GOAL)

.PHONY: cluster-build cluster-images cluster-tools cluster-up cluster-down cluster-status cluster-test

# binaries (cached in $$DYSCO_CACHE, default /var/cache/dysco) + Debian packages
cluster-build:
	$(CLUSTER_SCRIPTS)/build.sh

# dysco/base:bookworm and dysco/pause:3.2
cluster-images:
	$(CLUSTER_SCRIPTS)/base-image.sh

# helm + kubectl into .venv/bin
cluster-tools:
	$(CLUSTER_SCRIPTS)/tools.sh

# everything above, then start the cluster and wait for the node (idempotent)
cluster-up:
	$(CLUSTER_SCRIPTS)/up.sh

cluster-down:
	$(CLUSTER_SCRIPTS)/down.sh

cluster-status:
	$(CLUSTER_SCRIPTS)/status.sh

cluster-test:
	$(CLUSTER_SCRIPTS)/up.sh
	$(if $(wildcard .venv/bin/pytest),.venv/bin/pytest,python3 -m pytest) -q -m cluster tests/cluster

.DEFAULT_GOAL := $(_cluster_default_goal)
