"""Evaluation and export on hand-worked data: per-user metrics, tidy summaries, metric keys,
top-K recommendations that skip everything a user has seen, and the choice of the export model.
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from conf.schema import EvaluationConfig
from models.baselines import PopularityRecommender
from models.data import EvalBatch, SequenceData
from models.kinds import build_model
from tasks.modelling.evaluation import metric_key, score_users, summarize
from tasks.modelling.export import best_model, recommend_top_k
from tasks.io import TableRef
from tasks.modelling.training import TrainedModel

G3 = 1 / math.log2(3)  # DCG gain at rank 1 (ranks from 0)
G5 = 1 / math.log2(5)  # ... at rank 3
G6 = 1 / math.log2(6)  # ... at rank 4

# Items 1..5 (0 is padding). Training counts: item 1 ×3, item 2 ×2, items 3 and 4 ×1, item 5 ×0.
# Items 3 and 4 tie, so no user's relevant set holds just one of them while both are rankable.
HAND = SequenceData(
    n_items=6,
    train=[np.array([1, 2]), np.array([1, 3]), np.array([1, 2, 4])],
    valid=[np.array([5]), np.array([4]), np.array([3])],
    test=[np.array([3, 4]), np.array([5]), np.array([5])],
)
KS = [1, 3, 5]

# Test split, history = train + valid: u0 saw {1,2,5}, u1 {1,3,4}, u2 {1,2,3,4}.
#
# exclude_seen=False: everyone gets 1, 2, {3,4}, 5 (ranks 0..4).
#   u0 relevant {3,4} at ranks 2,3: @1 nothing; @3 one hit at rank 2: ndcg = G(2)/(G(0)+G(1))
#      = 0.5/(1+G3), precision 1/3, recall 1/2; @5 hits at 2,3: ndcg = (0.5+G5)/(1+G3), recall 1.
#   u1, u2 relevant {5} at rank 4: nothing @1 or @3; @5 ndcg = G6, precision 1/5, recall 1.
# exclude_seen=True: only unseen items are ranked, the rest of the top k is -inf (never a hit).
#   u0 ranks {3,4} (tied) at ranks 0,1: both relevant, so @1 precision 1, recall 1/2, ndcg 1;
#      @3 and @5 precision 2/3 and 2/5, recall 1, ndcg 1.
#   u1 ranks 2, 5 (valid item 4 is excluded too): relevant 5 at rank 1: nothing @1;
#      @3 ndcg G3, precision 1/3; @5 ndcg G3, precision 1/5; recall 1.
#   u2 ranks 5 alone: relevant at rank 0: everything 1 except precision 1/3 @3 and 1/5 @5.
EXPECTED = {
    False: {
        "ndcg_at_1": [0, 0, 0], "hit_at_1": [0, 0, 0], "precision_at_1": [0, 0, 0], "recall_at_1": [0, 0, 0],
        "ndcg_at_3": [0.5 / (1 + G3), 0, 0], "hit_at_3": [1, 0, 0],
        "precision_at_3": [1 / 3, 0, 0], "recall_at_3": [1 / 2, 0, 0],
        "ndcg_at_5": [(0.5 + G5) / (1 + G3), G6, G6], "hit_at_5": [1, 1, 1],
        "precision_at_5": [2 / 5, 1 / 5, 1 / 5], "recall_at_5": [1, 1, 1],
    },
    True: {
        "ndcg_at_1": [1, 0, 1], "hit_at_1": [1, 0, 1], "precision_at_1": [1, 0, 1], "recall_at_1": [1 / 2, 0, 1],
        "ndcg_at_3": [1, G3, 1], "hit_at_3": [1, 1, 1],
        "precision_at_3": [2 / 3, 1 / 3, 1 / 3], "recall_at_3": [1, 1, 1],
        "ndcg_at_5": [1, G3, 1], "hit_at_5": [1, 1, 1],
        "precision_at_5": [2 / 5, 1 / 5, 1 / 5], "recall_at_5": [1, 1, 1],
    },
}


@pytest.fixture
def popularity() -> PopularityRecommender:
    model = PopularityRecommender(HAND.n_items)
    model.fit(HAND)
    return model


@pytest.mark.parametrize("exclude_seen", [False, True])
@pytest.mark.parametrize("batch_size", [1, 1024])
def test_score_users_matches_hand_worked_metrics(popularity, exclude_seen, batch_size):
    cfg = EvaluationConfig(ks=KS, exclude_seen=exclude_seen, batch_size=batch_size)
    _, per_user = score_users(popularity, HAND, "test", cfg, max_seq_len=4)
    assert per_user.height == 3
    assert set(per_user.columns) == {f"{m}_at_{k}" for m in ("precision", "recall", "f1", "ndcg", "hit", "mrr")
                                     for k in KS}
    for column, values in EXPECTED[exclude_seen].items():
        assert per_user[column].to_list() == pytest.approx(values, abs=1e-6), column


def test_score_users_on_valid_reads_only_the_training_history(popularity):
    # Valid split, history = train: u0 saw {1,2} and ranks 3/4 (tied), 5: its valid item 5 at rank 2.
    # u1 saw {1,3}: ranks 2, 4, 5: valid item 4 at rank 1. u2 saw {1,2,4}: ranks 3, 5: item 3 at rank 0.
    cfg = EvaluationConfig(ks=[3], exclude_seen=True)
    _, per_user = score_users(popularity, HAND, "valid", cfg, max_seq_len=4)
    assert per_user["ndcg_at_3"].to_list() == pytest.approx([0.5, G3, 1.0])


def test_score_users_ranks_items_of_equal_popularity_by_lower_item_idx(popularity):
    # Valid split, seen items kept: everyone gets 1, 2, 3, 4, 5 (3 and 4 tie; 3 is the lower item_idx).
    # u0's valid item 5 at rank 4, u1's item 4 at rank 3 (never 2), u2's item 3 at rank 2 (never 3).
    cfg = EvaluationConfig(ks=[5], exclude_seen=False)
    _, per_user = score_users(popularity, HAND, "valid", cfg, max_seq_len=4)
    assert per_user["ndcg_at_5"].to_list() == pytest.approx([G6, G5, 0.5])
    assert per_user["mrr_at_5"].to_list() == pytest.approx([1 / 5, 1 / 4, 1 / 3])


PER_USER = pl.DataFrame({"ndcg_at_10": [0.2, 0.4, 0.9, 0.5], "hit_at_10": [1.0, 0.0, 1.0, 1.0],
                         "ndcg_at_5": [0.1, 0.0, 0.8, 0.3]})
GROUPS = pl.Series("gender", ["F", "M", "F", "M"])


def value(table: pl.DataFrame, group: str, metric: str, k: int) -> float:
    row = table.filter((pl.col("group") == group) & (pl.col("metric") == metric) & (pl.col("k") == k))
    assert row.height == 1
    return row["value"].item()


def test_summarize_gives_tidy_rows_for_all_users_and_each_group():
    table = summarize(PER_USER, GROUPS, scenario="pooled", model="gru", split="test")
    assert table.columns == ["scenario", "model", "split", "group", "metric", "k", "value"]
    assert table.height == 3 * 3  # (all, F, M) × three metric columns
    assert set(table["scenario"]) == {"pooled"} and set(table["model"]) == {"gru"} and set(table["split"]) == {"test"}
    assert table["k"].dtype == pl.Int32 and table["value"].dtype == pl.Float64
    assert value(table, "all", "ndcg", 10) == pytest.approx((0.2 + 0.4 + 0.9 + 0.5) / 4)
    assert value(table, "F", "ndcg", 10) == pytest.approx((0.2 + 0.9) / 2)
    assert value(table, "M", "ndcg", 10) == pytest.approx((0.4 + 0.5) / 2)
    assert value(table, "M", "hit", 10) == pytest.approx(0.5)
    assert value(table, "all", "ndcg", 5) == pytest.approx(0.3)
    assert value(table, "F", "ndcg", 5) == pytest.approx(0.45)


def test_summarize_without_groups_reports_all_users_only():
    table = summarize(PER_USER, None, scenario="pooled", model="gru", split="valid")
    assert set(table["group"]) == {"all"}
    assert table.height == 3
    assert value(table, "all", "hit", 10) == pytest.approx(0.75)


def test_metric_key_reads_split_group_metric_at_k():
    assert metric_key({"split": "test", "group": "all", "metric": "ndcg", "k": 10}) == "test/ndcg_at_10"
    assert metric_key({"split": "test", "group": "F", "metric": "ndcg", "k": 10}) == "test/F/ndcg_at_10"
    assert metric_key({"split": "valid", "group": "M", "metric": "hit", "k": 5}) == "valid/M/hit_at_5"


def export_data() -> SequenceData:
    """30 items; users whose histories hold the most popular items, so exclusion matters."""
    rng = np.random.default_rng(0)
    train = [rng.permutation(np.arange(1, 30))[:n] for n in (3, 8, 15, 1)]
    train.append(np.arange(1, 13))  # user 4 saw items 1..12 in training
    valid = [np.setdiff1d(np.arange(1, 30), h)[:1] for h in train]
    test = [np.setdiff1d(np.arange(1, 30), np.concatenate([h, v]))[-1:] for h, v in zip(train, valid)]
    return SequenceData(30, train, valid, test)


@pytest.mark.parametrize("kind", ["popularity", "rnn"])
def test_recommend_top_k_ranks_unseen_items_only_best_first(kind):
    data = export_data()
    options = {} if kind == "popularity" else {"embedding_dim": 8, "hidden_dim": 8}
    torch.manual_seed(0)
    model = build_model(kind, data.n_items, options)
    if kind == "popularity":
        model.fit(data)
    else:
        model.eval()  # untrained weights: any scores will do, exclusion and order are checked
    top_k = 10
    users, items, scores = recommend_top_k(model, data, top_k, max_seq_len=20, batch_size=2)
    assert len(users) == len(items) == len(scores) == len(data.train) * top_k
    # One block of top_k rows per user, in user order: row i of a block is rank i + 1.
    assert users.tolist() == np.repeat(np.arange(len(data.train)), top_k).tolist()
    for user, history in enumerate(data.history("all")):
        block = slice(user * top_k, (user + 1) * top_k)
        assert not set(items[block].tolist()) & set(history.tolist())
        assert 0 not in items[block]
        assert len(set(items[block].tolist())) == top_k
        assert np.isfinite(scores[block]).all()
        assert (np.diff(scores[block]) <= 0).all()


def test_recommend_top_k_with_popularity_gives_the_most_popular_unseen_items():
    data = SequenceData(8, train=[np.array([1, 2, 3]), np.array([1, 2]), np.array([1, 4])],
                        valid=[np.array([4]), np.array([3]), np.array([5])],
                        test=[np.array([5]), np.array([6]), np.array([6])])
    # Training counts: 1 ×3, 2 ×2, 3 ×1, 4 ×1, others 0; equal counts rank by lower item_idx first,
    # so the rank scores are 1: 7, 2: 6, 3: 5, 4: 4, 5: 3, 6: 2, 7: 1.
    model = PopularityRecommender(data.n_items)
    model.fit(data)
    users, items, scores = recommend_top_k(model, data, top_k=2, max_seq_len=5)
    # u0 saw 1..5 -> 6, 7 (both 0); u1 saw {1,2,3,6} -> 4, then 5 (ties 7); u2 saw {1,4,5,6} -> 2, 3.
    assert items.tolist() == [6, 7, 4, 5, 2, 3]
    assert scores.tolist() == [2.0, 1.0, 4.0, 3.0, 6.0, 5.0]


def trained(name: str) -> TrainedModel:
    return TrainedModel(name, "rnn", TableRef(f"{name}.pt", "0" * 16), 1, None, 0.0, None)


def metrics_rows(rows: list[tuple[str, str, str, str, int, float]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["model", "split", "group", "metric", "k", "value"], orient="row")


# caser wins only where it shouldn't count: on test, on one group, at another k, or on another metric.
CANDIDATE_METRICS = metrics_rows([
    ("popularity", "valid", "all", "ndcg", 10, 0.10),
    ("gru", "valid", "all", "ndcg", 10, 0.30),
    ("caser", "valid", "all", "ndcg", 10, 0.20),
    ("caser", "test", "all", "ndcg", 10, 0.90),
    ("caser", "valid", "F", "ndcg", 10, 0.90),
    ("caser", "valid", "all", "ndcg", 20, 0.90),
    ("caser", "valid", "all", "hit", 10, 0.90),
])
CANDIDATES = [trained("popularity"), trained("gru"), trained("caser")]


def test_best_model_picks_highest_valid_ndcg_at_10_over_all_users():
    assert best_model(CANDIDATES, CANDIDATE_METRICS, chosen=None).name == "gru"


def test_best_model_honours_an_explicit_choice():
    assert best_model(CANDIDATES, CANDIDATE_METRICS, chosen="popularity").name == "popularity"


def test_best_model_falls_back_to_the_largest_k_without_ndcg_at_10():
    metrics = metrics_rows([
        ("gru", "valid", "all", "ndcg", 5, 0.50),
        ("caser", "valid", "all", "ndcg", 5, 0.10),
        ("gru", "valid", "all", "ndcg", 20, 0.20),
        ("caser", "valid", "all", "ndcg", 20, 0.40),
    ])
    assert best_model(CANDIDATES, metrics, chosen=None).name == "caser"


# --- restricted candidates (the sampled protocol of the cross-domain benchmarks) ----------------

def domain_batch(users: list[int]) -> EvalBatch:
    from models.data import ranking_loader

    # 11 items (1..10 plus padding): items 1-5 are domain 0, items 6-10 domain 1.
    histories = [np.array([1, 2]), np.array([6, 7]), np.array([3])]
    targets = [np.array([4]), np.array([9]), np.array([8])]
    loader = ranking_loader(histories, targets, max_len=3, batch_size=8, users=np.array(users))
    return next(iter(loader))


DOMAINS = torch.tensor([-1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])


def test_target_domain_candidates_keep_only_items_of_the_held_out_items_domain():
    from tasks.modelling.evaluation import candidate_mask

    cfg = EvaluationConfig(ks=[1], candidates="target_domain")
    mask = candidate_mask(domain_batch([0, 1, 2]), 11, DOMAINS, cfg)
    assert mask[0].nonzero().flatten().tolist() == [1, 2, 3, 4, 5]
    assert mask[1].nonzero().flatten().tolist() == [6, 7, 8, 9, 10]
    assert mask[2].nonzero().flatten().tolist() == [6, 7, 8, 9, 10]  # user 2's target 8 is in domain 1


def test_sampled_candidates_are_the_targets_plus_n_negatives_fixed_per_user():
    from tasks.modelling.evaluation import candidate_mask

    cfg = EvaluationConfig(ks=[1], candidates="target_domain", sampled_negatives=2, sample_seed=7)
    together = candidate_mask(domain_batch([0, 1, 2]), 11, DOMAINS, cfg)
    alone = candidate_mask(domain_batch([2]), 11, DOMAINS, cfg)
    assert together.sum(dim=1).tolist() == [3, 3, 3]  # one target + two negatives each
    assert together[2].tolist() == alone[0].tolist()  # a user's draw does not depend on the batch
    assert together[0, 4] and together[1, 9] and together[2, 8]  # targets always kept
    assert not together[0, 6:].any()  # never outside the target's domain
    other_seed = candidate_mask(domain_batch([0, 1, 2]),
                                11, DOMAINS, cfg.model_copy(update={"sample_seed": 8}))
    assert other_seed.shape == together.shape
