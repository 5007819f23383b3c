# One install for everything; see README.md.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup apt-deps test lint typecheck sim clean

-include scripts/cluster/cluster.mk

apt-deps:
	scripts/apt-deps.sh

$(BIN)/dysco: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/dysco

setup: apt-deps $(BIN)/dysco

lint: setup
	$(BIN)/ruff check agent-sidecar operator tests
	$(BIN)/mypy --strict agent-sidecar/dysco/core agent-sidecar/dysco/sim

test: setup lint
	$(BIN)/pytest -q

sim: setup
	$(BIN)/dysco sim --all --runs 50 --seed 1 --loss 0.02

clean:
	rm -rf $(VENV)
