# Every target sets up .venv first (Python 3.11, torch from pip), so a fresh clone needs only `make`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install repro test bench up down clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(INSTALLED)

# The main job: the whole reproduction on the embedded default (params.yaml), ~15 min on 2 cores.
repro: $(INSTALLED)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: $(INSTALLED)
	$(BIN)/python -m pytest

# Local S3 (SeaweedFS) + MLflow tracking server on loopback; prints their URLs.
up: $(INSTALLED)
	$(BIN)/python -m services.stack up

down: $(INSTALLED)
	$(BIN)/python -m services.stack down

bench: $(INSTALLED)
	$(BIN)/python benches/efficiency.py

clean:
	rm -rf $(VENV) .pytest_cache
