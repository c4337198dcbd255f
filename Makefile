# The two commands a user needs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Offline-safe, quiet defaults (see ../shared/STACK_NOTES.md): no telemetry, no hub lookups.
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export HF_HUB_OFFLINE := 1

.PHONY: venv demo test test-fast smoke bench clean mlflow-ui prefect-ui serve

venv: $(STAMP)

# torch goes in first and is pinned on the same line as the project: otherwise pip resolves a
# multi-GB CUDA build from PyPI for the torch-dependent packages.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q torch==2.13.0 -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/itx demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

# The registered model behind a real `mlflow models serve`, queried over HTTP (CI runs it after the tests).
smoke: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/smoke_serving.py

# Prefect UI on http://127.0.0.1:4200 with the pipeline and nightly-retrain deployments served from here.
serve: $(STAMP)
	$(BIN)/itx serve

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_pipeline.py

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf outputs mlflow.db mlruns .pytest_cache

# Prefect UI on http://127.0.0.1:4200; in another shell: export PREFECT_API_URL=http://127.0.0.1:4200/api
prefect-ui: $(STAMP)
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200
