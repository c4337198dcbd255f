"""Prefect flows. Importing this package sets offline-safe defaults before Prefect or MLflow load.

Prefect and MLflow read these variables at import time, so they are set here, the first thing
any entry point (the `itx` CLI or `python -m flows.cli`, a deployment) imports.
"""
import logging
import os
import warnings

for _name, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # Plain functions log through logging.getLogger(__name__); Prefect forwards these loggers.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks,models",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ.setdefault(_name, _value)

for _logger in ("tasks", "models"):
    logging.getLogger(_logger).setLevel(logging.INFO)

# Noise that says nothing about this run: Lightning's advertisement for its hosted logger and a
# deprecation inside Lightning itself (pytorch_lightning 2.6.6 with torch 2.13).
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda record: "litlogger" not in record.getMessage())
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
