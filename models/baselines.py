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
from models.explain import NoEvidence


def popularity_scores(counts: Tensor) -> Tensor:
    """Distinct scores ranking items by count, equal counts by lower item_idx first: [n_items] float32.

    The top item scores n_items - 1, the last 1, padding -inf. Distinct values make torch.topk's
    order fully determined (its order among equal values is unspecified); float32 holds them
    exactly up to 2**24 items.
    """
    # A stable descending sort keeps equal counts in item_idx order.
    order = torch.sort(counts[1:], descending=True, stable=True).indices + 1  # item_idx, best first
    scores = torch.full((counts.numel(),), float("-inf"), device=counts.device)
    scores[order] = torch.arange(order.numel(), 0, -1, dtype=torch.float32, device=counts.device)
    return scores


class PopularityRecommender:
    """Items ranked by their number of training interactions, the same list for every user.

    Equal counts rank by lower item_idx first (item_idx follows sorted item id), so ties never
    depend on torch.topk. `score_all` returns those rank scores (see `popularity_scores`), not
    the counts, which `counts` keeps.
    """

    kind: ClassVar[str] = "popularity"

    def evidence(self) -> NoEvidence:
        """Its score ignores the history: no history item is a reason."""
        return NoEvidence()

    def __init__(self, n_items: int):
        self.n_items = n_items
        self.counts = torch.zeros(n_items)

    @property
    def counts(self) -> Tensor:
        """Training interactions per item_idx: [n_items] float."""
        return self._counts

    @counts.setter
    def counts(self, counts: Tensor) -> None:
        # The rank scores follow every assignment (fit, load, a hand-set table), never stale.
        self._counts = counts
        self._scores = popularity_scores(counts)

    def fit(self, data: SequenceData, train: TrainConfig | None = None, seed: int = 0,
            loggers: Sequence[Logger] = (), checkpoint_dir: Path | None = None) -> FitSummary:
        """Count each item's training interactions."""
        started = time.perf_counter()
        items = np.concatenate(data.train) if data.train else np.empty(0, np.int64)
        self.counts = torch.bincount(torch.as_tensor(items, dtype=torch.long), minlength=self.n_items).float()
        return FitSummary(epochs=0, best_valid_ndcg=None, seconds=time.perf_counter() - started)

    def score_all(self, history: Tensor) -> Tensor:
        """The popularity rank scores, the same for every user: [B, T] -> [B, n_items]."""
        return self._scores.to(history.device).expand(history.shape[0], -1).clone()

    def save(self, path: Path) -> None:
        """Write the counts to one file."""
        save_payload(path, self.kind, {"n_items": self.n_items}, {"counts": self.counts})

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the counts written by `save`."""
        self.counts = state["counts"]
