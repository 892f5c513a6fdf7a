# Two entry points for a fresh machine: `make demo` and `make test` (each runs `make setup`).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: readme-results readme-original reproduce setup demo test lint pytest docs-test patches-check install-check bench bench-setup schema

setup:
	@bash scripts/setup.sh

# The main job on SmolLM2-135M + Jane Austen (offline): the clustering sweep, then the
# CPU-sized frontier (SAEs vs clustering at every L0).
demo: setup
	$(VENV)/bin/sae-fvu sweep $(ARGS)
	$(VENV)/bin/sae-fvu frontier $(ARGS)

# The original experiment at its own scale (786,432 fit tokens per layer, d_sae 4,096, k-means
# 4,096 / 16,384): hours; every stage cached, rerun to continue. ARGS="--device cuda" on a GPU.
reproduce: setup
	$(VENV)/bin/sae-fvu reproduce $(ARGS)

lint: setup
	$(PY) -m ruff check sae_fvu_plugin tests benchmarks scripts patches/equivalence
	$(PY) -m ruff format --check sae_fvu_plugin tests benchmarks scripts patches/equivalence
	$(PY) -m mypy

pytest: setup
	$(PY) -m pytest $(ARGS)

# The README's Python blocks, each in a fresh namespace, at the toy sizes they state.
docs-test: setup
	$(PY) -m pytest -q -p no:cacheprovider --markdown-docs -m markdown-docs README.md

# Apply patches/ to the pinned sae-bench and sae-lens releases (fetched from PyPI), run
# the tests they add and the equivalence tests in a scratch environment.
patches-check: setup
	$(PY) scripts/patches.py check

# A plain `uv pip install` of the plugin's wheel next to sae-bench==0.6.0 in a scratch
# environment (what a pip user gets), then the README's SAEBench block in it.
install-check: setup
	bash scripts/install_check.sh

test: lint pytest docs-test patches-check install-check

bench-setup: setup
	$(VENV)/bin/uv pip install -q --python $(PY) -c $(VENV)/constraints.txt faiss-cpu fast-pytorch-kmeans

bench: bench-setup
	$(PY) benchmarks/saebench_overhead.py
	$(PY) benchmarks/kmeans_seeding.py
	$(PY) benchmarks/kmeans.py
	$(PY) benchmarks/kmeans_quality.py
	$(PY) benchmarks/assign.py
	$(PY) benchmarks/sae_training.py
	$(PY) benchmarks/seeding_screen.py
	$(PY) benchmarks/kmeans_pruning.py

schema: setup
	$(PY) -c "import sae_fvu_plugin.saebench as s; print(s.write_schema())"

# After `make demo`: docs/clustering_sweep/, docs/frontier/ and the README's Results from out/.
readme-results: setup
	$(PY) scripts/readme_results.py collect

# After `make reproduce` (or a part of it): docs/original-scale/ and its README section.
readme-original: setup
	$(PY) scripts/readme_results.py collect-original
