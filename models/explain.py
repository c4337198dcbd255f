"""Why an item was recommended: the few items of the user's own history that point to it most, with a score.

Method, single-item evidence. The reason score of history item h for recommended item r is how much
the model's score of r rises when the history holds h alone instead of nothing:

    evidence(h, r) = score_all([h])[r] - score_all([])[r]

(histories left-padded to the width the user was scored with). The reasons for r are the `n_reasons`
distinct history items with the highest positive evidence, best first; an item with evidence <= 0
does not point to r and is never given as a reason, so a recommendation may carry fewer reasons, or
none. Reasons come only from the history the model read: export and serving pass the model's read
domain (a mapping model reads the user's source-domain items, so its reasons are source-domain items:
the items the cross-domain mapping carried over to the target recommendation), its last max_seq_len
items; a mapping model's non-source items are also masked here, as its score ignores them.

The definition holds for any `Recommender` (`ScoreEvidence` computes it from `score_all`), and each
kind has a closed form that needs only a [B, K, T] product per batch, which the model gives through
its `evidence()` method:
- Neural models with a linear head (GRU, Caser, SASRec, BERT transfer; EMCDR and PTUPCDR through
  their target head) score x·c_r + b_r, x the interest, so evidence = (q_h - q_0)·c_r: q_h is the
  interest after the one-item history [h] (for a mapping model: the mapped target interest of the
  one-source-item history), q_0 the interest after an empty one, c_r the head's vector of r (the
  output layer's row; BERT transfer: r's text-grounded representation times its logit scale). q is
  computed once per item (in chunks) and cached.
- ItemKNN: evidence = sim(h, r), the item-item cosine of its neighbour lists (its score of r is the
  recency-weighted sum of these over the history).
- Popularity: the score ignores the history, so the evidence is 0 everywhere and no reasons are given.
- Domain-aware SASRec scores each domain with its own interest (no single linear head): the definition,
  from `score_all`.

What it is not: a decomposition of the user's actual score. A sequence model's interest after
[h1, h2, ...] is not a sum over items; single-item evidence says what each history item alone would
lead the model to recommend. Leave-one-out attribution would follow the actual score more closely,
but costs one extra scoring pass per history position (50 at max_seq_len 50) for every user.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor



N_REASONS = 3  # reasons kept per recommended item
ENCODE_CHUNK = 4096  # one-item histories encoded at once when building the q_h table


@dataclass(frozen=True)
class Reasons:
    """The reasons of each recommended item, best first."""

    items: Tensor  # [B, K, R] item_idx of history items; 0 where there are fewer than R reasons
    scores: Tensor  # [B, K, R] evidence, > 0; -inf where items is 0


class Evidence(Protocol):
    """evidence(h, r) of every history position for every recommended item of a batch."""

    def __call__(self, history: Tensor, recommended: Tensor) -> Tensor:
        """history [B, T] item_idx (left-padded), recommended [B, K] item_idx -> [B, K, T] evidence."""
        ...


def distinct_items(history: Tensor) -> Tensor:
    """[B, T] bool: True at each item's most recent position (padding and earlier repeats False)."""
    later = torch.ones(history.shape[1], history.shape[1], dtype=torch.bool, device=history.device).triu(1)
    repeated = ((history.unsqueeze(2) == history.unsqueeze(1)) & later).any(dim=2)  # [B, T]
    return (history > 0) & ~repeated


def top_reasons(history: Tensor, evidence: Tensor, n_reasons: int = N_REASONS) -> Reasons:
    """The n_reasons distinct history items of highest positive evidence per recommended item.

    history [B, T], evidence [B, K, T] -> Reasons with R = min(n_reasons, T).
    """
    usable = distinct_items(history).unsqueeze(1) & (evidence > 0)  # [B, K, T]; NaN never counts
    masked = evidence.float().masked_fill(~usable, float("-inf"))
    top = masked.topk(min(n_reasons, history.shape[1]), dim=2)  # [B, K, R]
    batch, recommended, width = top.indices.shape
    items = history.gather(1, top.indices.reshape(batch, -1)).view(batch, recommended, width)
    return Reasons(items.masked_fill(torch.isinf(top.values), 0), top.values)


def explain(evidence: Evidence, history: Tensor, recommended: Tensor, n_reasons: int = N_REASONS) -> Reasons:
    """Reasons for each recommended item: history [B, T], recommended [B, K] item_idx -> Reasons [B, K, R]."""
    return top_reasons(history, evidence(history, recommended), n_reasons)


class NoEvidence:
    """A model whose scores ignore the history (popularity): no history item is a reason."""

    def __call__(self, history: Tensor, recommended: Tensor) -> Tensor:
        return torch.zeros(history.shape[0], recommended.shape[1], history.shape[1], device=history.device)


class NeighbourEvidence:
    """ItemKNN: evidence(h, r) = similarity of r in h's neighbour list (0 when r is not a neighbour)."""

    def __init__(self, model: Any):  # an ItemKNNRecommender (its neighbour lists)
        self.n_items = model.n_items
        rows = torch.arange(model.n_items).unsqueeze(1).expand_as(model.neighbour_items)
        kept = model.neighbour_values.cpu() > 0  # drops the right padding (item 0, 0.0)
        keys = (rows * model.n_items + model.neighbour_items.cpu())[kept]  # h * n_items + r
        self.keys, order = keys.sort()
        self.values = model.neighbour_values.cpu()[kept][order]

    def __call__(self, history: Tensor, recommended: Tensor) -> Tensor:
        if self.keys.device != history.device:  # move once, not per batch
            self.keys, self.values = self.keys.to(history.device), self.values.to(history.device)
        if len(self.keys) == 0:
            return NoEvidence()(history, recommended)
        queries = history.unsqueeze(1) * self.n_items + recommended.unsqueeze(2)  # [B, K, T]
        found = torch.searchsorted(self.keys, queries).clamp(max=len(self.keys) - 1)
        return torch.where(self.keys[found] == queries, self.values[found], 0.0)


class InterestEvidence:
    """A linear head: evidence(h, r) = (q_h - q_0)·c_r, q_h the interest after the one-item history [h].

    interest: [B, T] history -> [B, D] interest the head scores; head: () -> [n_items, D] c_r;
    readable: [n_items] bool of the items the model reads (others get q_h = q_0, evidence 0).
    """

    def __init__(self, n_items: int, interest: Callable[[Tensor], Tensor], head: Callable[[], Tensor],
                 readable: Callable[[], Tensor] | None = None):
        self.n_items, self.interest, self.head, self.readable = n_items, interest, head, readable
        self.cache: dict[tuple[int, torch.device], tuple[Tensor, Tensor]] = {}

    def tables(self, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(q_h - q_0 [n_items, D], c [n_items, D]) for histories `width` wide, computed once per width."""
        key = (width, device)
        if key not in self.cache:
            with torch.no_grad():
                items = torch.arange(self.n_items, device=device)
                if self.readable is not None:
                    items = items[self.readable().to(device)]
                items = torch.cat([torch.zeros(1, dtype=torch.long, device=device), items[items > 0]])
                rows = []
                for start in range(0, len(items), ENCODE_CHUNK):
                    chunk = items[start:start + ENCODE_CHUNK]
                    history = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
                    history[:, -1] = chunk  # [h] left-padded; row 0 (item 0) is the empty history
                    rows.append(self.interest(history).float())
                interests = torch.cat(rows)  # [1 + readable items, D]
                table = torch.zeros(self.n_items, interests.shape[1], device=device)
                table[items] = interests - interests[0]  # row 0 and unreadable items stay 0
                self.cache[key] = (table, self.head().detach().float().to(device))
        return self.cache[key]

    def __call__(self, history: Tensor, recommended: Tensor) -> Tensor:
        table, head = self.tables(history.shape[1], history.device)
        return head[recommended] @ table[history].transpose(1, 2)  # [B, K, D] @ [B, D, T]


class ScoreEvidence:
    """The definition itself, from `score_all`, for any Recommender: U one-item histories scored per batch
    (U its distinct history items), so it costs U × n_items scores; the closed forms above avoid that."""

    def __init__(self, model: Any):  # any Recommender (its score_all)
        self.model = model

    def __call__(self, history: Tensor, recommended: Tensor) -> Tensor:
        with torch.no_grad():
            items, position = torch.unique(history, return_inverse=True)  # items[position] == history
            singles = torch.zeros(len(items) + 1, history.shape[1], dtype=torch.long, device=history.device)
            singles[1:, -1] = items  # row 0: the empty history
            scores = self.model.score_all(singles).float().to(history.device)  # [1 + U, n_items]
            lifted = scores[1:] - scores[0]  # [U, n_items]
            lifted = torch.nan_to_num(lifted, nan=0.0, posinf=0.0, neginf=0.0)  # padding column: -inf - -inf
            return lifted[position.unsqueeze(1), recommended.unsqueeze(2)]  # [B, K, T]


def evidence_for(model: Any) -> Evidence:
    """The evidence function of a model: the closed form it gives (its `evidence()`), else the `score_all`
    definition. Each model kind says for itself which one fits its scoring (see the module docstring)."""
    return model.evidence() if hasattr(model, "evidence") else ScoreEvidence(model)
