"""Non-neural baselines behind the same Recommender interface."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pytorch_lightning.loggers import Logger
from torch import Tensor

from conf.schema import TrainConfig
from models.base import FitSummary, save_payload
from models.data import SequenceData


class PopularityRecommender:
    """Items ranked by their number of training interactions, the same list for every user."""

    kind: ClassVar[str] = "popularity"

    def __init__(self, n_items: int):
        self.n_items = n_items
        self.counts = torch.zeros(n_items)

    def fit(self, data: SequenceData, train: TrainConfig | None = None, seed: int = 0,
            loggers: Sequence[Logger] = (), checkpoint_dir: Path | None = None) -> FitSummary:
        """Count each item's training interactions."""
        started = time.perf_counter()
        items = np.concatenate(data.train) if data.train else np.empty(0, np.int64)
        self.counts = torch.bincount(torch.as_tensor(items, dtype=torch.long), minlength=self.n_items).float()
        return FitSummary(epochs=0, best_valid_ndcg=None, seconds=time.perf_counter() - started)

    def score_all(self, history: Tensor) -> Tensor:
        """The training counts for every user: [B, T] -> [B, n_items]."""
        scores = self.counts.to(history.device).expand(history.shape[0], -1).clone()
        scores[:, 0] = float("-inf")
        return scores

    def save(self, path: Path) -> None:
        """Write the counts to one file."""
        save_payload(path, self.kind, {"n_items": self.n_items}, {"counts": self.counts})

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the counts written by `save`."""
        self.counts = state["counts"]
