# Every target sets up .venv first (Python 3.11, torch from pip), so a fresh clone needs only `make`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install repro test bench up down retrain deploy-check clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'  # precompiled: PYTHONDONTWRITEBYTECODE may be set, and torch would recompile in every process
	touch $@

install: $(INSTALLED)

# The main job: the whole reproduction on the embedded default (params.yaml), about 25 min on 2 cores (README: Results).
repro: $(INSTALLED)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# Two workers, one test file each at a time; the two end-to-end files start first (tests/conftest.py),
# one on each worker, and the rest fill in: about half the serial time on 2 cores.
test: $(INSTALLED)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# The local stack on loopback: S3 (SeaweedFS), MLflow, the Prefect server (UI :4200), the work
# pools with prefect.yaml's deployments, a training worker and a device worker; prints the URLs.
up: $(INSTALLED)
	$(BIN)/python -m services.stack up

down: $(INSTALLED)
	$(BIN)/python -m services.stack down

# Start the retraining deployment now instead of waiting for its schedule (needs `make up`).
retrain: $(INSTALLED)
	$(BIN)/python -m services.stack retrain

# A deployment team's view: a venv with mlflow, torch and the two runtimes only (not this project)
# pulls the champion by its URI and checks its .pte and .onnx against its PyTorch program (needs `make repro`).
DEPLOY_VENV := .venv-deploy
$(DEPLOY_VENV)/.installed:
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet mlflow==3.17.2 torch==2.14.1 executorch==1.5.1 onnxruntime==1.32.0
	touch $@

deploy-check: $(DEPLOY_VENV)/.installed
	$(DEPLOY_VENV)/bin/python deploy/check_champion.py $(MODEL)

bench: $(INSTALLED)
	$(BIN)/python benches/efficiency.py
	$(BIN)/python benches/inference_form.py
	$(BIN)/python benches/harness.py  # needs `make repro`'s data
	$(BIN)/python benches/train_cost.py --profile paper  # the paper profile's projected time here (needs the data too)

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) .pytest_cache
