# Sandcastle — the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

## setup: the virtualenv with everything installed, and bubblewrap and e2fsprogs (apt) when missing
## (e2fsprogs' mkfs.ext4 makes each local sandbox's size-capped workspace filesystem)
setup: $(STAMP)
	@{ command -v bwrap && PATH="$$PATH:/sbin:/usr/sbin" command -v mkfs.ext4; } >/dev/null || { \
	  echo "installing bubblewrap and e2fsprogs (the local sandbox)…"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq bubblewrap e2fsprogs >/dev/null; }
	@command -v bwrap >/dev/null || { echo "bubblewrap is required: apt-get install bubblewrap"; exit 1; }

$(STAMP): pyproject.toml
	@echo "creating $(VENV): Sandcastle, its dependencies and its test tools (a minute or two; pip shows each package)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install --progress-bar on -e '.[dev]'
	touch $(STAMP)
	@echo "$(VENV) is ready: $(BIN)/sandcastle --help"

## demo: a real run, offline — a playbook writes and runs a script on a CSV in the local sandbox
demo: setup
	cd examples/demo && SANDCASTLE_HOME="$${SANDCASTLE_HOME:-$(CURDIR)/.sandcastle}" ../../$(BIN)/sandcastle run \
	  "Analyse sales.csv: revenue per region and the best-selling product" \
	  --file sales.csv --playbook playbook.json

## test: the whole suite (unit, integration with the real ASL and bubblewrap, e2e)
test: setup
	$(BIN)/pytest -q

## lint: ruff over everything; mypy --strict over the runs package (configured in pyproject.toml)
lint: setup
	$(BIN)/ruff check functions tests
	$(BIN)/ruff format --check functions tests
	$(BIN)/mypy

## bench: figures, not pass/fail, in their own environment (.venv-bench): the project and its peers
## (the OpenAI Agents SDK, LangGraph), which are no dependency of the project. BENCH_QUICK=1: under ~5 min.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_PEERS := 'openai-agents>=0.24,<1' 'langgraph>=1.2,<2' 'langchain-openai>=1.7,<2'

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -e '.[dev]' $(BENCH_PEERS)
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m tests.benchmarks $(if $(BENCH_QUICK),--quick) $(foreach name,$(BENCH_ONLY),--only $(name))

clean:
	rm -rf $(VENV) $(BENCH_VENV) .sandcastle .pytest_cache .ruff_cache
