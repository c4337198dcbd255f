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


import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pytest  # noqa: E402

from conf.schema import SyntheticConfig  # noqa: E402
from models.data import SequenceData  # noqa: E402
from tasks.data.synthetic import generate_shop  # noqa: E402


@pytest.fixture(autouse=True)
def no_leaked_tracking_uri():
    """MLflow writes MLFLOW_TRACKING_URI into os.environ when a run sets it (Lightning's MLFlowLogger does):
    drop it after each test so subprocesses started by later tests do not inherit another test's store."""
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def tiny_data() -> SequenceData:
    """Leave-one-out splits of a small synthetic shop, items re-indexed from 1, first visits only."""
    shop = generate_shop(SyntheticConfig(n_users=80, n_items=40, mean_events_per_user=10), seed=1)
    item_idx = {item: idx for idx, item in enumerate(shop.items["item_id"].to_list(), start=1)}
    sequences = (
        shop.interactions.sort("user_id", "timestamp")
        .unique(["user_id", "item_id"], keep="first", maintain_order=True)
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_id"))
    )
    histories = [np.array([item_idx[i] for i in items]) for items in sequences["item_id"].to_list()]
    histories = [h for h in histories if len(h) >= 4]
    return SequenceData(len(item_idx) + 1, [h[:-2] for h in histories], [h[-2:-1] for h in histories],
                        [h[-1:] for h in histories])
