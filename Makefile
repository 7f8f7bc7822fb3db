# The two commands of the README: `make demo` and `make test`. Both set themselves up.
VENV  ?= .venv
BIN   := $(VENV)/bin
TOOLS := $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(CURDIR)/$(BIN):$(PATH)

.PHONY: setup setup-test demo test lint typecheck unit crd constraints bench clean

setup:
	@bash scripts/setup.sh

# The tests also need the real Kubernetes control plane (built once from Go modules, cached in .tools/).
setup-test:
	@SETUP_CONTROLPLANE=1 bash scripts/setup.sh

demo: setup
	$(BIN)/agentctl demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

test: setup-test lint typecheck
	$(BIN)/pytest

# Regenerate the committed generated files (CRD, its chart copy, RBAC rules, docs reference).
crd: setup
	$(BIN)/agentctl crd > crds/agentservices.agentops.dev.yaml
	cp crds/agentservices.agentops.dev.yaml charts/agentservice-operator/crds/
	$(BIN)/agentctl rbac > charts/agentservice-operator/files/rbac-rules.yaml
	$(BIN)/agentctl reference > docs/reference.md

# Move the pinned Python dependencies forward: upgrade the venv to the newest releases, then pin
# what it holds (the set-up, the suite and the Dockerfile all install with -c constraints.txt).
constraints: setup
	$(BIN)/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev]' -e ./dev
	$(BIN)/python scripts/constraints.py > constraints.txt
	touch $(VENV)/.installed

bench: setup
	$(BIN)/python bench/render.py

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
