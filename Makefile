# Quick start: `make demo` (install + train the demo model), `make test` (install + tests).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test clean-venv

install: $(STAMP)

# torch first (the local CPU wheel): anything unpinned would pull a multi-GB CUDA build.
# fairseq-fixed is built without build isolation, against that torch, and installed with
# --no-deps because it asks for torchaudio, which has no release for torch 2.13; its real
# runtime needs are listed in requirements.txt.
$(STAMP): setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-build-isolation --no-deps fairseq-fixed==0.12.3.1
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

demo: install
	$(PY) scripts/demo.py

# ruff's settings are in pyproject.toml
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
