"""Prefect flows. Importing this package sets offline-safe defaults before Prefect or MLflow load.

Prefect and MLflow read these variables at import time, so they are set here, the first thing
any entry point (the `itx` CLI, a deployment, `python -m flows.pipeline`) imports.
"""
import logging
import os

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
