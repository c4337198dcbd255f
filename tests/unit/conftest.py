"""Shared fixtures of the unit tests."""
import numpy as np
import polars as pl
import pytest

from conf.schema import SyntheticConfig
from models.data import SequenceData
from tasks.synthetic import generate_shop


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
