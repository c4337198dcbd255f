"""Test isolation: a throwaway Prefect home and no telemetry, set before Prefect is imported."""
import os
import tempfile

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="itx-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def no_leaked_tracking_uri():
    """MLflow writes MLFLOW_TRACKING_URI into os.environ when a run sets it (Lightning's MLFlowLogger does):
    drop it after each test so subprocesses started by later tests do not inherit another test's store."""
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
