# The two commands: `make run` and `make test`. Everything they need is installed here
# (venv, pip, local npm peers, Debian packages for the sandbox tiers), never by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SYMBI := $(VENV)/bin/symbi
CONFIG ?= examples/symbi.toml
PYTEST_ARGS ?=

.PHONY: all setup python-deps node-deps upstream-user sandbox image state-engines browser wrk run stdio test test-fast bench bench-peers soak mutate lint typecheck format clean

all: setup

setup: python-deps node-deps upstream-user

python-deps: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,peers]'
	# The real OPA engine, as the oracle for the embedded one (its metadata says 3.12+, it runs on 3.11).
	$(PY) -m pip install -q --ignore-requires-python 'opa-golib-python-bindings>=0.4.4,<0.5'
	touch $@

node-deps: node_modules/.installed tests/conformance/node/node_modules/.installed
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@
# node 22 (from npm, as a package) and the conformance suite's alpha, for tests/conformance
tests/conformance/node/node_modules/.installed: tests/conformance/node/package.json tests/conformance/node/package-lock.json
	npm ci --prefix tests/conformance/node --no-audit --no-fund --loglevel=error
	touch $@

# The unprivileged user unsandboxed upstream servers run as, able to start the venv's interpreter.
upstream-user: python-deps
	bash scripts/setup-upstream-user.sh $(PY)

# Debian packages for the sandbox tiers, runsc registered with Docker, dockerd started,
# the base image imported (no registry pull). Idempotent; quick when already done.
sandbox:
	bash scripts/setup-sandbox.sh

# The gateway image (deploy/Dockerfile) on the sandbox's local base, no registry pull:
# scripts/build-image.sh stages Debian's python3.11, the needed shared libraries and a venv
# with the gateway (pip on the host), then `docker build`s it. IMAGE_TAG=name:tag for another tag.
IMAGE_TAG ?= symbi-gateway:latest
image: sandbox
	bash scripts/build-image.sh $(IMAGE_TAG)

# Debian's redis-server, postgresql and haproxy: the bus and shared-state tests and benchmarks
# start their own on 127.0.0.1 (random port, own folder); no service is started here.
state-engines:
	@bash scripts/setup-state-engines.sh

# Debian's Chromium for the dashboard's browser tests (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Debian's wrk: bench/http_load.py's load (C, a few % of the CPU a Python client needs per call)
# and tests/bench/test_wrk.py, which checks its reply check.
wrk:
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

run: setup sandbox
	@bash scripts/run-banner.sh $(CONFIG)
	$(SYMBI) serve --config $(CONFIG)

stdio: setup
	$(SYMBI) mcp --config $(CONFIG)

# pytest-xdist: TEST_WORKERS processes (a one-process run keeps about one of the two cores
# busy: much of it waits on subprocesses, sandboxes and I/O; two workers still left the
# machine at about one core on average over a whole run: 23 CPU-min in 23 min). Four on these
# two cores: pytest 13-16 min against 20 min 24 s with two (session 25's fresh clones). Each
# test file runs whole, in order, on one worker, so a module's fixtures are made once and its
# tests keep their order; files start in collection order (--no-loadscope-reorder), which
# tests/conftest.py puts longest first. TEST_WORKERS=0: one process, no xdist.
TEST_WORKERS ?= 4
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: setup sandbox state-engines browser wrk
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup state-engines
	$(PY) -m pytest $(XDIST) -m "not sandbox and not slow" $(PYTEST_ARGS)

# The rule set and the strictness live in pyproject.toml ([tool.ruff.lint], [tool.mypy]).
LINTED := gateway schemapin tests bench scripts examples

typecheck: python-deps
	$(PY) -m mypy gateway schemapin bench scripts tests

# Mutation testing of the security-critical modules (mutmut; its cost per group in CPU-seconds is in
# the report; not part of `make test`).
# One group: make mutate GROUPS=steps. Report: reports/mutation.md (+ .json).
# MUTATE_TIMEOUT=seconds stops each group's run there (a partial report: "not checked").
GROUPS ?=
MUTATE_TIMEOUT ?=
mutate: setup
	$(PY) scripts/mutate.py --max-children 2 $(if $(MUTATE_TIMEOUT),--timeout $(MUTATE_TIMEOUT)) $(GROUPS)

lint: python-deps
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

format: python-deps
	$(PY) -m ruff format $(LINTED)
	$(PY) -m ruff check --fix $(LINTED)

# mcp-proxy (PyPI) in its own venv: the peer of bench/http_load.py (it pins its own MCP SDK)
bench-peers: wrk
	bash scripts/mcp-proxy-peer.sh

bench: setup sandbox state-engines bench-peers
	$(PY) bench/proxy.py
	$(PY) bench/policy.py
	$(PY) bench/audit.py
	$(PY) bench/sandbox.py
	$(PY) bench/schemapin.py
	$(PY) bench/bus.py
	$(PY) bench/runtime.py
	$(PY) bench/context.py
	$(PY) bench/screen.py
	$(PY) bench/counters.py
	$(PY) bench/tracing.py
	$(PY) bench/http.py
	$(PY) bench/http_load.py
	$(PY) bench/scale.py
	$(PY) bench/growth.py
	$(PY) bench/speed.py
	$(PY) bench/large_input.py

# The soak benchmark (bench/soak.py): 1,000,000 calls by default (hours); SOAK_ARGS="--calls 100000" for less.
SOAK_ARGS ?=
soak: setup
	$(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache
