"""Co-occurrence hybrid: a sequence model's scores blended with ItemKNN's, the blend chosen on validation.

Why: on sparse shop data (Amazon Food–Kitchen) item-to-item co-occurrence is strong exactly where a
sequence model is weak, on rare items whose embeddings saw a handful of positives, and the two err on
different users. Blending scores is the plainest way to use both (the "hybrid" baselines of the
session-based literature, e.g. Ludewig & Jannach, "Evaluation of Session-based Recommendation
Algorithms", 2018, who find such blends hard to beat).

    score(u, i) = (1 - w) · z_seq(u, i) + w · z_knn(u, i)

z: each user's scores standardised over the catalogue (padding left out), so that a softmax logit and
a sum of cosines are on one scale. w is taken from BLEND_GRID: the value with the best NDCG@10 on the
validation users of the data the hybrid is fitted on (the same users and ranking that stop the
sequence model early), after both parts are fitted. The sequence model is any neural extractor kind.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pytorch_lightning.loggers import Logger
from torch import Tensor

from conf.schema import TrainConfig
from models.attention import SASRecRecommender
from models.base import FitSummary, SequentialRecommender, neural_options, save_payload, section_options
from models.data import SequenceData, split_loader
from models.domain_attention import DomainSASRecRecommender
from models.extractors import CaserRecommender, GRURecommender
from models.itemknn import ItemKNNRecommender
from models.metrics import ndcg_at_k

SEQUENCE_MODELS: dict[str, type[SequentialRecommender]] = {
    "rnn": GRURecommender, "cnn": CaserRecommender, "sasrec": SASRecRecommender,
    "domain_sasrec": DomainSASRecRecommender,
}
# 0: the sequence model alone, 1: ItemKNN alone. Python floats: the chosen weight is saved with the model, and
# torch.load(weights_only=True) refuses numpy scalars.
BLEND_GRID = tuple(float(round(w, 2)) for w in np.linspace(0.0, 1.0, 11))
EVAL_BATCH = 512

log = logging.getLogger(__name__)


def standardised(scores: Tensor) -> Tensor:
    """Each row's scores as z-scores over its finite entries (the -inf of padding and seen items stay -inf)."""
    finite = torch.isfinite(scores)
    values = scores.masked_fill(~finite, 0.0)
    count = finite.sum(dim=1, keepdim=True).clamp(min=1)
    mean = values.sum(dim=1, keepdim=True) / count
    spread = (((values - mean) * finite) ** 2).sum(dim=1, keepdim=True) / count
    return ((values - mean) / spread.sqrt().clamp(min=1e-6)).masked_fill(~finite, float("-inf"))


class HybridRecommender:
    """A sequence model and ItemKNN fitted on the same data, scores blended with a weight fitted on validation."""

    kind: ClassVar[str] = "hybrid"

    @classmethod
    def options_from(cls, section: Any, train: TrainConfig, exclude_seen: bool, text_dim: int | None = None,
                     text_model_path: str | None = None) -> dict[str, Any]:
        """The sequence model's options (with its kind) and the ItemKNN neighbours."""
        return {"sequence": section_options(section.sequence, keep_kind=True) | neural_options(train, exclude_seen),
                "neighbours": section.neighbours}

    def __init__(self, n_items: int, sequence: dict[str, Any], neighbours: int = 100, blend: float | None = None):
        """sequence: {"kind": rnn | cnn | sasrec | domain_sasrec, **that model's constructor options}."""
        options = dict(sequence)
        kind = options.pop("kind", None)
        if kind not in SEQUENCE_MODELS:
            raise ValueError(f"hybrid sequence kind '{kind}' is unknown; known kinds: {sorted(SEQUENCE_MODELS)}")
        self.n_items, self.sequence_options, self.neighbours = n_items, dict(sequence), neighbours
        self.sequence = SEQUENCE_MODELS[kind](n_items=n_items, **options)
        self.knn = ItemKNNRecommender(n_items, neighbours)
        self.blend = blend  # None until fitted
        self.max_seq_len = self.sequence.max_seq_len
        self.blend_scores: dict[float, float] = {}  # validation NDCG@10 of every weight tried in the last fit

    def attach_item_domains(self, domains: Tensor | np.ndarray) -> None:
        """Pass the item domains on to a domain-aware sequence model (others need none)."""
        if hasattr(self.sequence, "attach_item_domains"):
            self.sequence.attach_item_domains(domains)

    def eval(self) -> HybridRecommender:
        self.sequence.eval()
        return self

    def blended(self, sequence_scores: Tensor, knn_scores: Tensor, blend: float) -> Tensor:
        """[B, n_items] blend of the two parts' standardised scores."""
        return (1 - blend) * standardised(sequence_scores) + blend * standardised(knn_scores)

    def score_all(self, history: Tensor) -> Tensor:
        """The blended scores: [B, T] -> [B, n_items] (on the history's device)."""
        if self.blend is None:
            raise RuntimeError("hybrid: score_all before fit (its blend weight is chosen when it is fitted)")
        with torch.no_grad():
            sequence_scores = self.sequence.score_all(history).float().to(history.device)
            scores = self.blended(sequence_scores, self.knn.score_all(history), self.blend)
        scores[:, 0] = float("-inf")
        return scores

    def fit(self, data: SequenceData, train: TrainConfig, seed: int, loggers: Sequence[Logger] = (),
            checkpoint_dir: Path | None = None) -> FitSummary:
        """Fit the sequence model (early-stopped as usual) and ItemKNN on `data`, then choose the blend weight."""
        started = time.perf_counter()
        sequence = self.sequence.fit(data, train, seed, loggers=loggers, checkpoint_dir=checkpoint_dir)
        self.knn.fit(data)
        self.blend_scores = self.validation_ndcg(data)
        if self.blend_scores:  # the best weight; ties go to the smaller weight, the grid's earlier one
            self.blend = max(self.blend_scores, key=lambda w: (self.blend_scores[w], -w))
        else:  # no validation users: nothing to choose on, so the sequence model alone
            self.blend = 0.0
        best = self.blend_scores.get(self.blend)
        if self.blend_scores:  # the whole curve: its ends are each part alone, so it shows what blending adds
            log.info("hybrid blend %.1f chosen; validation NDCG@10 by ItemKNN weight: %s", self.blend,
                     ", ".join(f"{w:.1f}: {v:.4f}" for w, v in self.blend_scores.items()))
        return FitSummary(sequence.epochs, best if best is not None else sequence.best_valid_ndcg,
                          time.perf_counter() - started, sequence.stopped_by)

    def validation_ndcg(self, data: SequenceData) -> dict[float, float]:
        """Mean validation NDCG@10 of every weight of BLEND_GRID ({} without validation users)."""
        totals, users = {w: 0.0 for w in BLEND_GRID}, 0
        self.sequence.eval()
        with torch.no_grad():
            for batch in split_loader(data, "valid", self.max_seq_len, EVAL_BATCH):
                sequence_scores = self.sequence.score_all(batch.history).float()
                knn_scores = self.knn.score_all(batch.history)
                relevant = batch.mask(batch.target_rows, batch.target_items, self.n_items)
                seen = (batch.seen_rows, batch.seen_items) if self.sequence.exclude_seen else None
                for blend in BLEND_GRID:
                    scores = self.blended(sequence_scores, knn_scores, blend)
                    scores[:, 0] = float("-inf")
                    if seen is not None:
                        scores[seen] = float("-inf")
                    scores = self.sequence.validation_ranking(scores, batch)  # ranked as its sequence model validates
                    totals[blend] += float(ndcg_at_k(scores, relevant, k=10).sum())
                users += batch.history.shape[0]
        return {w: total / users for w, total in totals.items()} if users else {}

    def save(self, path: Path) -> None:
        """Write both parts and the blend weight to one file."""
        if self.blend is None:
            raise RuntimeError("hybrid: save before fit")
        state = {f"sequence.{k}": v.cpu() for k, v in self.sequence.state_dict().items()}
        state |= {"knn.neighbour_items": self.knn.neighbour_items.cpu(), "knn.neighbour_values": self.knn.neighbour_values.cpu()}
        save_payload(path, self.kind, {"n_items": self.n_items, "sequence": dict(self.sequence_options),
                                       "neighbours": self.neighbours, "blend": float(self.blend)}, state)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore both parts written by `save`."""
        self.sequence.load_state_dict({k.removeprefix("sequence."): v for k, v in state.items()
                                       if k.startswith("sequence.")})
        self.knn.load_state_dict({k.removeprefix("knn."): v for k, v in state.items() if k.startswith("knn.")})
