# Two entry points for a fresh machine: `make demo` and `make test` (each runs `make setup`).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export SAE_FVU_CACHE ?= $(CURDIR)/.cache

.PHONY: setup demo test lint pytest bench

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m sae_fvu_plugin.demo $(ARGS)

lint: setup
	$(PY) -m ruff check sae_fvu_plugin tests benchmarks
	$(PY) -m ruff format --check sae_fvu_plugin tests benchmarks
	$(PY) -m mypy

pytest: setup
	$(PY) -m pytest $(ARGS)

test: lint pytest

bench: setup
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done
