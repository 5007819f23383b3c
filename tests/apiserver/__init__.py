"""Tests against a real kube-apiserver + etcd (marker: apiserver)."""
