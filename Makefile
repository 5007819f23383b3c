# One install for everything; see README.md.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup apt-deps demo test lint sim clean

-include scripts/cluster/cluster.mk

apt-deps:
	scripts/apt-deps.sh

$(BIN)/dysco: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/dysco

setup: apt-deps $(BIN)/dysco

# README command one: the main job on the built-in local setup.
demo: setup sim

# README command two: linters, type checks and the whole test suite.
test: setup lint
	$(BIN)/pytest -q tests/unit tests/sim

lint: setup
	$(BIN)/ruff check agent-sidecar operator tests
	$(BIN)/mypy --strict agent-sidecar/dysco operator/dysco_operator

sim: setup
	$(BIN)/dysco sim --all --runs 20 --seed 1 --loss 0.02 --quiet

clean:
	rm -rf $(VENV)
