"""Item-based nearest neighbours over training co-occurrence.

Follows Sarwar et al., "Item-Based Collaborative Filtering Recommendation Algorithms", WWW 2001:
cosine similarity of the items' binary user vectors, each item keeping its `neighbours` most similar
items. Departure: the history items a user is scored from are weighted by recency (RECENCY_DECAY per
step back from the most recent) instead of equally, because in sequential data the latest items
predict the next one best. Across domains it transfers through shared users: an item co-occurs with
the other domain's items of the users who have both.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pytorch_lightning.loggers import Logger
from scipy import sparse
from torch import Tensor

from conf.schema import TrainConfig
from models.base import FitSummary, save_payload
from models.data import SequenceData
from models.explain import NeighbourEvidence

RECENCY_DECAY = 0.9  # weight of an item one step further back than the next more recent one


def cosine_cooccurrence(sequences: list[np.ndarray], n_items: int) -> sparse.csr_matrix:
    """[n_items, n_items] cosine similarity of the items' binary user vectors, zero diagonal."""
    lengths = [len(s) for s in sequences]
    users = np.repeat(np.arange(len(sequences)), lengths)
    items = np.concatenate(sequences).astype(np.int64) if sequences else np.empty(0, np.int64)
    interactions = sparse.csr_matrix((np.ones(len(items), np.float32), (users, items)),
                                     shape=(len(sequences), n_items))  # [U, n_items]
    interactions.sum_duplicates()
    interactions.data[:] = 1.0  # binary: an item a user saw twice counts once
    cooccurrence = (interactions.T @ interactions).tocsr()  # [n_items, n_items] users holding both items
    users_per_item = cooccurrence.diagonal()  # n_i
    cooccurrence = (cooccurrence - sparse.diags(users_per_item)).tocsr()
    cooccurrence.eliminate_zeros()
    scale = sparse.diags(np.where(users_per_item > 0, 1 / np.sqrt(np.maximum(users_per_item, 1)), 0.0))
    return (scale @ cooccurrence @ scale).tocsr().astype(np.float32)  # C_ij / sqrt(n_i n_j)


def top_k_per_row(matrix: sparse.csr_matrix, k: int) -> sparse.csr_matrix:
    """A copy of `matrix` with only the k largest entries of each row (row by row: memory stays O(nnz))."""
    pruned = matrix.copy()
    pruned.sort_indices()  # the same input always keeps the same entries
    indptr, data = pruned.indptr, pruned.data
    for row in np.flatnonzero(np.diff(indptr) > k):
        start, end = indptr[row], indptr[row + 1]
        beyond = np.argpartition(-data[start:end], k)[k:]  # entries past the k largest
        data[start + beyond] = 0.0
    pruned.eliminate_zeros()
    return pruned


def neighbour_lists(similarity: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Each row's entries as ([n_rows, K] column indices, [n_rows, K] values), right-padded with item 0 / 0.0,
    K the longest row: a fixed width lets score_all gather a history's neighbours in one step."""
    counts = np.diff(similarity.indptr)
    width = int(counts.max()) if len(counts) else 0
    rows = np.repeat(np.arange(similarity.shape[0]), counts)
    slots = np.arange(similarity.nnz) - similarity.indptr[rows]  # position of each entry within its row
    items = np.zeros((similarity.shape[0], width), np.int64)
    values = np.zeros((similarity.shape[0], width), np.float32)
    items[rows, slots], values[rows, slots] = similarity.indices, similarity.data
    return items, values


class ItemKNNRecommender:
    """Scores an item by its summed similarity to the user's history items, recent ones weighted higher."""

    kind: ClassVar[str] = "itemknn"

    def evidence(self) -> NeighbourEvidence:
        """evidence(h, r) = sim(h, r): its score of r sums these over the history."""
        return NeighbourEvidence(self)

    def __init__(self, n_items: int, neighbours: int = 100):
        self.n_items, self.neighbours = n_items, neighbours
        # Row i: the neighbours of item i and their similarity to it; padded with item 0 / 0.0.
        self.neighbour_items = torch.zeros(n_items, 0, dtype=torch.long)  # [n_items, K]
        self.neighbour_values = torch.zeros(n_items, 0)  # [n_items, K]

    def fit(self, data: SequenceData, train: TrainConfig | None = None, seed: int = 0,
            loggers: Sequence[Logger] = (), checkpoint_dir: Path | None = None) -> FitSummary:
        """Keep each item's `neighbours` most similar items, from the training sequences only."""
        started = time.perf_counter()
        similarity = top_k_per_row(cosine_cooccurrence(data.train, self.n_items), self.neighbours)
        items, values = neighbour_lists(similarity)
        self.neighbour_items, self.neighbour_values = torch.as_tensor(items), torch.as_tensor(values)
        return FitSummary(epochs=0, best_valid_ndcg=None, seconds=time.perf_counter() - started)

    def score_all(self, history: Tensor) -> Tensor:
        """Recency-weighted sum of the history items' similarity rows: [B, T] -> [B, n_items]."""
        if self.neighbour_items.device != history.device:  # move once, not per batch
            self.neighbour_items = self.neighbour_items.to(history.device)
            self.neighbour_values = self.neighbour_values.to(history.device)
        present = history > 0  # [B, T]
        # Steps back from the most recent item, counting items only, so any padding layout works.
        steps_back = present.flip(1).cumsum(1).flip(1) - 1  # [B, T], 0 at the most recent item
        weights = RECENCY_DECAY ** steps_back.clamp(min=0).float() * present  # [B, T]
        neighbours = self.neighbour_items[history].flatten(1)  # [B, T·K]
        contributions = (self.neighbour_values[history] * weights.unsqueeze(-1)).flatten(1)  # [B, T·K]
        scores = torch.zeros(history.shape[0], self.n_items, device=history.device)
        scores.scatter_add_(1, neighbours, contributions)  # [B, n_items]
        scores[:, 0] = float("-inf")  # padding is never recommended
        return scores

    def save(self, path: Path) -> None:
        """Write the neighbour lists to one file."""
        save_payload(path, self.kind, {"n_items": self.n_items, "neighbours": self.neighbours},
                     {"neighbour_items": self.neighbour_items.cpu(), "neighbour_values": self.neighbour_values.cpu()})

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the neighbour lists written by `save`."""
        self.neighbour_items, self.neighbour_values = state["neighbour_items"], state["neighbour_values"]
