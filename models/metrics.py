"""Full-ranking top-K metrics as plain, vectorised torch functions.

Every function takes `scores` [B, N] (one row per user, one column per item, -inf for items that
must never be recommended: padding index 0, items already seen) and `relevant` [B, N] bool (the
user's held-out items), and returns one float value per user, [B]. Items are ranked by descending
score with `torch.topk`; the order among tied scores is whatever topk returns. With `hits` the
relevant items among the top k, `n_rel` the user's relevant items and ranks counted from 0:

- precision@k = hits / k
- recall@k    = hits / n_rel
- f1@k        = harmonic mean of precision@k and recall@k, 0 when both are 0
- ndcg@k      = sum over hit ranks r of 1/log2(r + 2), divided by the same sum over the
                min(n_rel, k) best ranks (binary relevance)
- hit@k       = 1 if hits > 0 else 0
- mrr@k       = 1/(r + 1) for the first hit rank r within the top k, else 0

A -inf item is never a hit, even when it fills the top k because fewer than k items are rankable.
A relevant item that is excluded (-inf) still counts in n_rel, so the caller should not mark
excluded items relevant. Users with no relevant item make recall and ndcg undefined; every metric
rejects them, so the caller drops them first. Averaging over users is left to the caller, which
scores the catalogue in chunks of users.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

METRIC_NAMES = ("precision", "recall", "f1", "ndcg", "hit", "mrr")


def top_k_hits(scores: Tensor, relevant: Tensor, k: int) -> Tensor:
    """Return whether the item at each of the top k ranks is relevant: [B, k] bool."""
    _check_inputs(scores, relevant, k)
    top_scores, top_items = torch.topk(scores, k, dim=1)              # [B, k], [B, k]
    # topk must still fill k slots when fewer than k items are rankable; those slots are no hit.
    return relevant.gather(1, top_items) & (top_scores != float("-inf"))


def precision_at_k(scores: Tensor, relevant: Tensor, k: int) -> Tensor:
    """Return the share of the top k items that are relevant, per user: [B]."""
    return _metric_at_k("precision", scores, relevant, k)


def recall_at_k(scores: Tensor, relevant: Tensor, k: int) -> Tensor:
    """Return the share of the user's relevant items found in the top k, per user: [B]."""
    return _metric_at_k("recall", scores, relevant, k)


def f1_at_k(scores: Tensor, relevant: Tensor, k: int) -> Tensor:
    """Return the harmonic mean of precision@k and recall@k (0 when both are 0), per user: [B]."""
    return _metric_at_k("f1", scores, relevant, k)


def ndcg_at_k(scores: Tensor, relevant: Tensor, k: int) -> Tensor:
    """Return binary-relevance DCG@k over the ideal DCG@k, per user: [B]."""
    return _metric_at_k("ndcg", scores, relevant, k)


def hit_at_k(scores: Tensor, relevant: Tensor, k: int) -> Tensor:
    """Return 1.0 where any relevant item is in the top k, else 0.0, per user: [B]."""
    return _metric_at_k("hit", scores, relevant, k)


def mrr_at_k(scores: Tensor, relevant: Tensor, k: int) -> Tensor:
    """Return 1/(rank+1) of the first relevant item in the top k (0 if none), per user: [B]."""
    return _metric_at_k("mrr", scores, relevant, k)


def compute_metrics(
    scores: Tensor, relevant: Tensor, ks: Sequence[int]
) -> dict[tuple[str, int], Tensor]:
    """Return every metric in METRIC_NAMES at every k, keyed by (name, k), each per user: [B]."""
    if len(ks) == 0:
        raise ValueError("compute_metrics: ks is empty; expected at least one k")
    n_relevant = _count_relevant(relevant)                             # [B]
    # One topk at the largest k serves every smaller k: its first k ranks are the top k.
    hits = top_k_hits(scores, relevant, max(ks))                       # [B, max(ks)]
    return {
        (name, k): _FROM_HITS[name](hits[:, :k], n_relevant)
        for k in ks
        for name in METRIC_NAMES
    }


def _metric_at_k(name: str, scores: Tensor, relevant: Tensor, k: int) -> Tensor:
    """Return one named metric at k per user: [B]."""
    n_relevant = _count_relevant(relevant)                             # [B]
    return _FROM_HITS[name](top_k_hits(scores, relevant, k), n_relevant)


def _check_inputs(scores: Tensor, relevant: Tensor, k: int) -> None:
    """Raise ValueError unless scores and relevant are matching [B, N] tensors and 1 <= k <= N."""
    if scores.dim() != 2 or scores.shape != relevant.shape:
        raise ValueError(
            f"expected scores and relevant of the same shape [B, N]; "
            f"found scores {tuple(scores.shape)} and relevant {tuple(relevant.shape)}"
        )
    if relevant.dtype != torch.bool:
        raise ValueError(f"expected relevant of dtype torch.bool; found {relevant.dtype}")
    n_items = scores.shape[1]
    if not 1 <= k <= n_items:
        raise ValueError(f"expected 1 <= k <= N; found k={k} with N={n_items} items")


def _count_relevant(relevant: Tensor) -> Tensor:
    """Return the number of relevant items per user, raising if any user has none: [B] long."""
    n_relevant = relevant.sum(dim=1)                                   # [B]
    if bool((n_relevant == 0).any()):
        n_empty = int((n_relevant == 0).sum())
        raise ValueError(
            f"found {n_empty} users with no relevant item; recall, f1 and ndcg are undefined "
            "for them, so drop them before computing metrics"
        )
    return n_relevant


def _rank_gains(k: int, device: torch.device) -> Tensor:
    """Return the DCG gain 1/log2(rank + 2) of ranks 0..k-1: [k]."""
    ranks = torch.arange(k, device=device, dtype=torch.float32)       # [k]
    return 1.0 / torch.log2(ranks + 2.0)


def _precision(hits: Tensor, n_relevant: Tensor) -> Tensor:
    return hits.sum(dim=1).float() / hits.shape[1]


def _recall(hits: Tensor, n_relevant: Tensor) -> Tensor:
    return hits.sum(dim=1).float() / n_relevant.float()


def _f1(hits: Tensor, n_relevant: Tensor) -> Tensor:
    # 2PR/(P+R) with P = h/k, R = h/n reduces to 2h/(k+n): no 0/0 when there is no hit.
    return 2.0 * hits.sum(dim=1).float() / (hits.shape[1] + n_relevant.float())


def _ndcg(hits: Tensor, n_relevant: Tensor) -> Tensor:
    gains = _rank_gains(hits.shape[1], hits.device)                   # [k]
    dcg = (hits.float() * gains).sum(dim=1)                           # [B]
    # The ideal ranking puts min(n_rel, k) relevant items first; n_rel >= 1 is checked upstream.
    # The k running sums are taken on the CPU: a floating-point cumsum has no deterministic CUDA
    # kernel, so it raises under torch.use_deterministic_algorithms (Lightning's deterministic=True).
    ideal_gains = _rank_gains(hits.shape[1], torch.device("cpu")).cumsum(dim=0).to(hits.device)   # [k]
    ideal_dcg = ideal_gains[n_relevant.clamp(max=hits.shape[1]) - 1]   # [B]
    return dcg / ideal_dcg


def _hit(hits: Tensor, n_relevant: Tensor) -> Tensor:
    return hits.any(dim=1).float()


def _mrr(hits: Tensor, n_relevant: Tensor) -> Tensor:
    ranks = torch.arange(hits.shape[1], device=hits.device, dtype=torch.float32)   # [k]
    # 1/(rank+1) falls with rank, so the largest one among the hits is the first hit's.
    return (hits.float() / (ranks + 1.0)).max(dim=1).values


# Each maps hits [B, k] bool and n_relevant [B] to the metric at k per user, [B].
_FROM_HITS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "precision": _precision,
    "recall": _recall,
    "f1": _f1,
    "ndcg": _ndcg,
    "hit": _hit,
    "mrr": _mrr,
}
