# goodbot developer targets. Every target bootstraps .venv on first use.
#   make run     serve the gateway with the embedded demo control plane and demo Graph (the main job)
#   make chat    chat with it as the local user (another terminal)
#   make check   format check, lint, mypy strict, import contracts, the full test suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= .goodbot
# The main job runs the demo Microsoft Graph too (calendar tools with no tenant); empty it to skip.
SERVE_FLAGS ?= --demo-graph

.PHONY: run chat check test lint fmt types contracts bench clean system-deps migration

$(PY):
	@interp="$$(bash deploy/find-python.sh)" || exit 1; \
	echo "creating $(VENV) with $$interp"; \
	"$$interp" -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

system-deps:
	@bash deploy/system-deps.sh

run: $(STAMP)
	$(VENV)/bin/goodbot serve --data-dir $(DATA_DIR) $(SERVE_FLAGS)

chat: $(STAMP)
	$(VENV)/bin/goodbot chat --data-dir $(DATA_DIR)

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

types: $(STAMP)
	$(VENV)/bin/mypy

contracts: $(STAMP)
	$(VENV)/bin/lint-imports

test: $(STAMP) system-deps
	$(VENV)/bin/pytest -q

check: lint types contracts test

bench: $(STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# Regenerate the newest unreleased migration from the models: make migration REV=0002 MSG="…"
migration: $(STAMP)
	rm -f controlplane/migrations/versions/$(REV)_*.py
	$(PY) deploy/new-migration.py $(REV) "$(MSG)"
