# The two commands of the README: `make demo` and `make test`. Both set themselves up.
VENV  ?= .venv
BIN   := $(VENV)/bin
TOOLS := $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(CURDIR)/$(BIN):$(PATH)

.PHONY: setup demo test lint typecheck unit crd bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/agentctl demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/pytest

# Regenerate the committed generated files (CRD, chart copy, docs reference).
crd: setup
	$(BIN)/agentctl crd > crds/agentservices.agentops.dev.yaml

bench: setup
	$(BIN)/python bench/render.py

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
