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

.PHONY: venv demo test test-slow test-all docs screenshots smoke bench clean mlflow-ui prefect-ui serve

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

# The fast tier, run often: unit tests and a few in-process flow runs (a few minutes on 2 cores).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

# The second tier: real subprocesses, kill/resume, concurrency, deployments, serving, the bad-input
# corpus and the real-data tests (these skip without ../shared/datasets). CI runs both tiers.
test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m slow

test-all: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

# docs/configuration.md's reference, regenerated from conf/schema.py (a test fails when it is stale).
docs: $(STAMP)
	$(BIN)/python -m conf.reference

# docs/images/*.png: the MLflow and Prefect UIs after a real run, by a headless Chromium (apt install chromium).
screenshots: $(STAMP)
	$(BIN)/python benchmarks/ui_screenshots.py

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
