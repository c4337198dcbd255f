"""Hand-worked and property checks of the full-ranking top-K metrics."""

from __future__ import annotations

import math

import pytest
import torch

from models.metrics import (
    METRIC_NAMES,
    compute_metrics,
    f1_at_k,
    hit_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    top_k_hits,
)

INF = float("-inf")
METRIC_FUNCTIONS = {
    "precision": precision_at_k,
    "recall": recall_at_k,
    "f1": f1_at_k,
    "ndcg": ndcg_at_k,
    "hit": hit_at_k,
    "mrr": mrr_at_k,
}

# Case A: padding item 0 excluded; ranking is items 1, 3, 2 (then 0); relevant items 2 and 3
# sit at ranks 1 and 2, so the top-k hits are [F, T, T].
SCORES_A = torch.tensor([[INF, 0.9, 0.1, 0.8]])
RELEVANT_A = torch.tensor([[False, False, True, True]])

# Case B: ranking is items 0, 1, 2, 3, 4; relevant items 0, 2, 3 sit at ranks 0, 2, 3,
# so the top-k hits are [T, F, T, T, F] and |relevant| = 3.
SCORES_B = torch.tensor([[0.5, 0.4, 0.3, 0.2, 0.1]])
RELEVANT_B = torch.tensor([[True, False, True, True, False]])


def random_case(n_users: int = 6, n_items: int = 12, seed: int = 0):
    """Return scores [B, N] with padding column 0 at -inf, and relevant [B, N] with >= 1 per row."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(n_users, n_items, generator=generator)
    scores[:, 0] = INF
    relevant = torch.rand(n_users, n_items, generator=generator) < 0.3
    relevant[:, 0] = False
    forced = torch.randint(1, n_items, (n_users,), generator=generator)
    relevant[torch.arange(n_users), forced] = True
    return scores, relevant


def test_top_k_hits_marks_relevant_ranks():
    # Case A ranking 1, 3, 2, 0 -> relevant? F, T, T, F
    hits = top_k_hits(SCORES_A, RELEVANT_A, k=4)
    assert hits.tolist() == [[False, True, True, False]]


@pytest.mark.parametrize(
    ("metric", "k", "expected"),
    [
        # Case A: hits [F, T, T], |relevant| = 2.
        ("precision", 1, 0.0),                       # 0 hits / 1
        ("precision", 2, 0.5),                       # 1 hit / 2
        ("precision", 3, 2 / 3),                     # 2 hits / 3
        ("recall", 2, 0.5),                          # 1 hit / 2 relevant
        ("recall", 3, 1.0),                          # 2 hits / 2 relevant
        ("f1", 2, 0.5),                              # P = R = 1/2
        ("f1", 3, 0.8),                              # P = 2/3, R = 1: 2 * (2/3) / (5/3)
        ("ndcg", 2, (1 / math.log2(3)) / (1 + 1 / math.log2(3))),
        # DCG = 1/log2(3) + 1/log2(4); ideal over min(2, 3) = 2 ranks: 1 + 1/log2(3)
        ("ndcg", 3, (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))),
        ("hit", 1, 0.0),                             # rank 0 is item 1, not relevant
        ("hit", 2, 1.0),
        ("mrr", 1, 0.0),
        ("mrr", 3, 0.5),                             # first hit at rank 1: 1/(1+1)
    ],
)
def test_metric_matches_hand_computation_case_a(metric, k, expected):
    value = METRIC_FUNCTIONS[metric](SCORES_A, RELEVANT_A, k)
    assert value.shape == (1,)
    assert value.item() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("metric", "k", "expected"),
    [
        # Case B: hits [T, F, T, T, F], |relevant| = 3.
        ("precision", 2, 0.5),                       # 1 hit / 2
        ("recall", 2, 1 / 3),                        # 1 hit / 3 relevant
        ("f1", 2, 0.4),                              # P = 1/2, R = 1/3: (1/3) / (5/6)
        ("recall", 4, 1.0),                          # 3 hits / 3 relevant
        ("precision", 4, 0.75),                      # 3 hits / 4
        # DCG = 1 (rank 0); ideal over min(3, 2) = 2 ranks: 1 + 1/log2(3)
        ("ndcg", 2, 1 / (1 + 1 / math.log2(3))),
        # DCG = 1 + 1/log2(4) + 1/log2(5); ideal over 3 ranks: 1 + 1/log2(3) + 1/log2(4)
        ("ndcg", 4, (1 + 0.5 + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 0.5)),
        ("hit", 1, 1.0),
        ("mrr", 5, 1.0),                             # first hit at rank 0
    ],
)
def test_metric_matches_hand_computation_case_b(metric, k, expected):
    value = METRIC_FUNCTIONS[metric](SCORES_B, RELEVANT_B, k)
    assert value.item() == pytest.approx(expected)


def test_ndcg_is_one_for_a_perfect_ranking():
    # Case B with relevant items moved to ranks 0, 1, 2: DCG equals the ideal DCG.
    relevant = torch.tensor([[True, True, True, False, False]])
    assert ndcg_at_k(SCORES_B, relevant, k=5).item() == pytest.approx(1.0)
    assert ndcg_at_k(SCORES_B, relevant, k=2).item() == pytest.approx(1.0)


def test_single_relevant_item_gives_recall_equal_hit_and_f1_from_hit():
    scores, _ = random_case(n_users=8, n_items=10, seed=1)
    only_item = torch.randint(1, 10, (8,), generator=torch.Generator().manual_seed(2))   # [B]
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    relevant[torch.arange(8), only_item] = True
    for k in range(1, 11):
        hit = hit_at_k(scores, relevant, k)
        assert torch.equal(recall_at_k(scores, relevant, k), hit)
        # P = hit/k, R = hit: 2PR/(P+R) = 2 hit / (k + 1)
        torch.testing.assert_close(f1_at_k(scores, relevant, k), 2 * hit / (k + 1))


def test_minus_inf_items_are_never_hits():
    # Only item 2 is rankable; relevant items 0 and 1 are excluded yet fill the top 3: no hits.
    scores = torch.tensor([[INF, INF, 0.3]])
    relevant = torch.tensor([[True, True, False]])
    assert not top_k_hits(scores, relevant, k=3).any()
    for name, metric in METRIC_FUNCTIONS.items():
        assert metric(scores, relevant, k=3).item() == 0.0, name


def test_metrics_lie_between_zero_and_one():
    scores, relevant = random_case(n_users=20, n_items=15, seed=3)
    for (name, k), value in compute_metrics(scores, relevant, ks=[1, 3, 5, 15]).items():
        assert value.shape == (20,)
        assert bool(((value >= 0) & (value <= 1 + 1e-6)).all()), (name, k)


def test_recall_and_hit_do_not_fall_as_k_grows():
    scores, relevant = random_case(n_users=20, n_items=15, seed=4)
    for metric in (recall_at_k, hit_at_k):
        by_k = torch.stack([metric(scores, relevant, k) for k in range(1, 16)])   # [K, B]
        assert bool((by_k[1:] >= by_k[:-1]).all()), metric.__name__
        assert bool((by_k[-1] == 1).all()), metric.__name__     # k = N finds every rankable item


def test_batch_equals_users_scored_one_at_a_time():
    scores, relevant = random_case(n_users=7, n_items=12, seed=5)
    for name, metric in METRIC_FUNCTIONS.items():
        batched = metric(scores, relevant, 4)
        rows = [metric(scores[i : i + 1], relevant[i : i + 1], 4) for i in range(7)]
        torch.testing.assert_close(batched, torch.cat(rows), msg=name)


def test_k_larger_than_catalogue_raises_naming_k_and_n():
    with pytest.raises(ValueError, match=r"k=5.*N=4"):
        top_k_hits(SCORES_A, RELEVANT_A, k=5)
    with pytest.raises(ValueError, match=r"k=5.*N=4"):
        compute_metrics(SCORES_A, RELEVANT_A, ks=[1, 5])


@pytest.mark.parametrize(
    "metric",
    [*METRIC_FUNCTIONS.values(), lambda s, r, k: compute_metrics(s, r, [k])],
    ids=[*METRIC_FUNCTIONS, "compute_metrics"],
)
def test_user_without_relevant_items_raises(metric):
    relevant = torch.cat([RELEVANT_A, torch.zeros_like(RELEVANT_A)])   # second user has none
    with pytest.raises(ValueError, match="users with no relevant item"):
        metric(SCORES_A.repeat(2, 1), relevant, 2)


def test_compute_metrics_agrees_with_single_functions():
    scores, relevant = random_case(n_users=9, n_items=20, seed=6)
    ks = [1, 5, 10]
    results = compute_metrics(scores, relevant, ks)
    assert set(results) == {(name, k) for name in METRIC_NAMES for k in ks}
    for (name, k), value in results.items():
        expected = METRIC_FUNCTIONS[name](scores, relevant, k)
        torch.testing.assert_close(value, expected, msg=str((name, k)))
