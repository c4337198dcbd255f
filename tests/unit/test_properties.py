"""Property tests (hypothesis): invariants of preprocessing and of the ranking metrics on random data.

Preprocessing: the k-core is the unique largest subset where every user and item keeps k events
(a fixpoint, checked against a brute-force reference); the split never lets a later event into an
earlier split (no train/test leakage); under `tie_order: file` each user's sequence is the stable
time sort of the rows as listed, under `id` it does not depend on row order; the id maps are
bijections that do not depend on row order.
Metrics: every value lies in [0, 1]; recall, hit and MRR never fall as K grows; permuting users
permutes their values; and each metric equals a brute-force computation from the ranking.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import polars as pl
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conf.schema import PreprocessConfig, ScenarioConfig, SplitConfig
from models.metrics import METRIC_NAMES, compute_metrics
from tasks.data.ingestion import RawTables
from tasks.data.prepare import prepare_data
from tasks.data.preprocessing import (TIE, add_tie_break, assign_splits, build_sequences, dedupe, index_events,
                                      index_ids, k_core)
from tasks.io import write_parquet

PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPLIT_ORDER = {"train": 0, "valid": 1, "test": 2}


# --- strategies ---------------------------------------------------------------------------------


@st.composite
def event_logs(draw, max_per_user: int = 12, min_items: int = 1) -> pl.DataFrame:
    """Raw interactions: up to 6 users with up to `max_per_user` events over up to 8 items, ties in time
    and repeated items included (few items, so that k-cores are neither trivial nor always empty)."""
    n_users, n_items = draw(st.integers(1, 6)), draw(st.integers(min_items, 8))
    rows = []
    for user in range(n_users):
        length = draw(st.integers(0, max_per_user))
        items = draw(st.lists(st.integers(0, n_items - 1), min_size=length, max_size=length))
        times = draw(st.lists(st.integers(0, 30), min_size=length, max_size=length))
        rows += [(f"u{user}", f"i{item:02d}", time) for item, time in zip(items, times)]
    return pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64},
                        orient="row")


@st.composite
def shuffled(draw, frame: pl.DataFrame) -> pl.DataFrame:
    order = draw(st.permutations(range(frame.height)))
    return frame[list(order)] if frame.height else frame


@st.composite
def rankings(draw, distinct: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [B, N], relevant [B, N]): -inf for excluded items, never relevant; every user has a relevant item.

    `distinct`: finite scores differ within a row (no ties, so the ranking is unique).
    """
    n_users, n_items = draw(st.integers(1, 5)), draw(st.integers(2, 15))
    scores, relevant = [], []
    for _ in range(n_users):
        if distinct:
            row = [float(v) for v in draw(st.permutations(range(n_items)))]
        else:
            row = [float(v) for v in draw(st.lists(st.integers(0, 4), min_size=n_items, max_size=n_items))]
        excluded = draw(st.lists(st.booleans(), min_size=n_items, max_size=n_items))
        keep = draw(st.integers(0, n_items - 1))  # at least one rankable item, which may be the relevant one
        excluded[keep] = False
        rel = [not excluded[i] and draw(st.booleans()) for i in range(n_items)]
        if not any(rel):
            rel[keep] = True
        scores.append([float("-inf") if excluded[i] else row[i] for i in range(n_items)])
        relevant.append(rel)
    return torch.tensor(scores), torch.tensor(relevant)


# --- k-core --------------------------------------------------------------------------------------


def k_core_reference(rows: list[tuple[str, str, int]], k: int) -> list[tuple[str, str, int]]:
    """The k-core by brute force: drop every row of an under-k user or item until none is left to drop."""
    while True:
        users, items = {}, {}
        for user, item, _ in rows:
            users[user] = users.get(user, 0) + 1
            items[item] = items.get(item, 0) + 1
        kept = [row for row in rows if users[row[0]] >= k and items[row[1]] >= k]
        if len(kept) == len(rows):
            return kept
        rows = kept


@PROPERTY
@given(events=event_logs(), k=st.integers(1, 4))
def test_k_core_is_the_fixpoint_every_user_and_item_keeps_k_events(events, k):
    cored = k_core(events, k)
    event(f"k-core keeps {'nothing' if cored.is_empty() else 'all' if cored.height == events.height else 'some'}")
    assert sorted(cored.rows()) == sorted(k_core_reference(events.rows(), k))  # the unique largest such subset
    if cored.height:
        assert cored.group_by("user_id").len()["len"].min() >= k
        assert cored.group_by("item_id").len()["len"].min() >= k
    assert k_core(cored, k).equals(cored)  # a fixpoint: applying it again changes nothing
    # It only removes whole users and items: every input row of a kept user and a kept item stays.
    kept = events.filter(pl.col("user_id").is_in(cored["user_id"].implode())
                         & pl.col("item_id").is_in(cored["item_id"].implode()))
    assert sorted(kept.rows()) == sorted(cored.rows())


@PROPERTY
@given(events=event_logs(), k=st.integers(1, 3))
def test_k_core_shrinks_as_k_grows(events, k):
    looser, stricter = k_core(events, k), k_core(events, k + 1)
    assert set(stricter["user_id"]) <= set(looser["user_id"])
    assert set(stricter["item_id"]) <= set(looser["item_id"])
    assert stricter.height <= looser.height


# --- splits: no leakage --------------------------------------------------------------------------


def split_and_sequences(events: pl.DataFrame, k: int, holdout: int,
                        tie_order: str = "file") -> tuple[pl.DataFrame, pl.DataFrame]:
    """The in-memory preprocessing chain: tie key -> dedupe -> k-core -> contiguous ids -> split -> sequences."""
    cored = k_core(dedupe(add_tie_break(events.lazy(), tie_order), "user_item").collect(), k)
    indexed = index_events(cored, index_ids(cored, "user_id"), index_ids(cored, "item_id"))
    split = assign_splits(indexed, holdout)
    return split, build_sequences(split)


@PROPERTY
@given(events=event_logs(min_items=4), k=st.integers(1, 2), holdout=st.integers(1, 2))
def test_split_never_puts_an_event_before_one_of_an_earlier_split(events, k, holdout):
    split, _ = split_and_sequences(events, k, holdout)
    event(f"users split: {min(split['user_idx'].n_unique(), 3)}+")
    for (_user,), rows in split.group_by("user_idx"):
        # Events in time order (ties by the tie key, as the split orders them): splits never go backwards.
        order = rows.sort("timestamp", TIE)["split"].to_list()
        assert [SPLIT_ORDER[s] for s in order] == sorted(SPLIT_ORDER[s] for s in order)
        assert order.count("valid") == holdout and order.count("test") == holdout and order.count("train") >= 1


@PROPERTY
@given(events=event_logs(min_items=4), k=st.integers(1, 2), holdout=st.integers(1, 2))
def test_split_keeps_exactly_the_users_with_enough_events_and_their_items_stay_disjoint(events, k, holdout):
    cored = k_core(dedupe(add_tie_break(events.lazy(), "file"), "user_item").collect(), k)
    split, sequences = split_and_sequences(events, k, holdout)
    counts = cored.group_by("user_id").len()
    assert sequences.height == counts.filter(pl.col("len") > 2 * holdout).height
    for row in sequences.iter_rows(named=True):
        train, valid, test = set(row["train"]), set(row["valid"]), set(row["test"])
        assert not (train & valid) and not (train & test) and not (valid & test)  # no held-out item in training
        assert row["context"] == []
    # The sequences are the split events, in time order: nothing added, nothing lost.
    assert sum(len(row["train"]) + len(row["valid"]) + len(row["test"]) for row in sequences.iter_rows(named=True)) \
        == split.height


@PROPERTY
@given(data=st.data(), k=st.integers(1, 2), holdout=st.integers(1, 2))
def test_split_under_id_ties_does_not_depend_on_the_order_of_the_input_rows(data, k, holdout):
    events = data.draw(event_logs(min_items=4))
    _, sequences = split_and_sequences(events, k, holdout, "id")
    _, again = split_and_sequences(data.draw(shuffled(events)), k, holdout, "id")
    assert again.equals(sequences)


@PROPERTY
@given(events=event_logs(min_items=4), holdout=st.integers(1, 2))
def test_file_ties_give_each_user_the_stable_time_sort_of_the_file(events, holdout):
    # Reference: Python's stable sort by time of each user's rows as listed, repeats of an item dropped.
    _, sequences = split_and_sequences(events, 1, holdout)
    item_idx = {item: n for n, item in enumerate(sorted(set(events["item_id"])), start=1)}
    expected = []
    for user in sorted(set(events["user_id"])):
        rows = sorted((row for row in events.rows() if row[0] == user), key=lambda row: row[2])
        items = list(dict.fromkeys(item_idx[item] for _, item, _ in rows))  # first occurrence in time order
        if len(items) > 2 * holdout:
            expected.append(items)
    assert [r["train"] + r["valid"] + r["test"] for r in sequences.iter_rows(named=True)] == expected


# --- id maps -------------------------------------------------------------------------------------


@PROPERTY
@given(data=st.data(), column=st.sampled_from(["user_id", "item_id"]))
def test_id_map_is_a_bijection_onto_1_to_n_in_sorted_id_order_whatever_the_row_order(data, column):
    events = data.draw(event_logs())
    mapping = index_ids(events, column)
    index_column = column.replace("_id", "_idx")
    ids = sorted(set(events[column]))
    assert mapping[column].to_list() == ids  # every id once, in sorted order
    assert mapping[index_column].to_list() == list(range(1, len(ids) + 1))  # contiguous from 1, 0 is padding
    # Stable: shuffling or repeating rows, or dropping the other columns, gives the same map.
    assert index_ids(data.draw(shuffled(events)), column).equals(mapping)
    assert index_ids(pl.concat([events, events]), column).equals(mapping)


@PROPERTY
@given(events=event_logs())
def test_indexed_events_map_back_to_the_raw_ids(events):
    users, items = index_ids(events, "user_id"), index_ids(events, "item_id")
    indexed = index_events(add_tie_break(events.lazy(), "file").collect(), users, items)
    back = indexed.join(users, on="user_idx").join(items, on="item_idx").select("user_id", "item_id", "timestamp")
    assert sorted(back.rows()) == sorted(events.rows())


@PROPERTY
@given(events=event_logs(max_per_user=16, min_items=3), k=st.integers(1, 2))
def test_prepared_tables_have_bijective_maps_and_no_leakage(events, k):
    # The whole in-memory stage, through its Parquet files. Logs where no user keeps 3 events are
    # rejected by the stage (DataError); they are not what this property is about.
    cored = k_core(dedupe(add_tie_break(events.lazy(), "file"), "user_item").collect(), k)
    if cored.is_empty() or cored.group_by("user_id").len()["len"].max() < 3:
        event("rejected: no user keeps 3 events")
        return
    with tempfile.TemporaryDirectory(prefix="itx-property-") as folder:
        root = Path(folder)
        item_ids = sorted(set(events["item_id"]))
        raw = RawTables(
            interactions=write_parquet(events, root / "raw" / "interactions.parquet"),
            items=write_parquet(pl.DataFrame({"item_id": item_ids, "title": item_ids, "category": None,
                                              "domain": "shop"}, schema_overrides={"category": pl.String}),
                                root / "raw" / "items.parquet"),
            users=write_parquet(pl.DataFrame({"user_id": sorted(set(events["user_id"]))}),
                                root / "raw" / "users.parquet"),
        )
        prepared = prepare_data(raw, PreprocessConfig(k_core=k), SplitConfig(), ScenarioConfig(partition="none"),
                                None, root / "cache")
        tables = {name: pl.read_parquet(getattr(prepared, name).path)
                  for name in ("events", "sequences", "users", "items")}
    users, items, prepared_events = tables["users"], tables["items"], tables["events"]
    assert users["user_idx"].to_list() == list(range(1, prepared.n_users + 1))
    assert items["item_idx"].to_list() == list(range(1, prepared.n_items))
    assert users["user_id"].n_unique() == users.height and items["item_id"].n_unique() == items.height
    assert set(prepared_events["user_idx"]) == set(users["user_idx"])
    assert set(prepared_events["item_idx"]) <= set(items["item_idx"])
    bounds = prepared_events.with_columns(pl.col("split").replace_strict(SPLIT_ORDER).alias("rank")).group_by(
        "user_idx", "rank").agg(pl.col("timestamp").min().alias("first"), pl.col("timestamp").max().alias("last"))
    for (_user,), rows in bounds.group_by("user_idx"):
        rows = rows.sort("rank")
        assert all(earlier <= later for earlier, later in zip(rows["last"][:-1], rows["first"][1:]))


# --- metrics -------------------------------------------------------------------------------------


def reference_metrics(scores: list[float], relevant: list[bool], k: int) -> dict[str, float]:
    """One user's metrics at k from the explicit ranking (finite scores distinct), by the textbook formulas."""
    ranked = sorted((i for i, s in enumerate(scores) if s != float("-inf")), key=lambda i: -scores[i])[:k]
    hits = [relevant[i] for i in ranked] + [False] * (k - len(ranked))
    n_rel, n_hits = sum(relevant), sum(hits)
    precision, recall = n_hits / k, n_hits / n_rel
    dcg = sum(1 / math.log2(r + 2) for r, hit in enumerate(hits) if hit)
    ideal = sum(1 / math.log2(r + 2) for r in range(min(n_rel, k)))
    first = next((r for r, hit in enumerate(hits) if hit), None)
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if n_hits else 0.0,
        "ndcg": dcg / ideal,
        "hit": float(n_hits > 0),
        "mrr": 0.0 if first is None else 1 / (first + 1),
    }


def all_ks(scores: torch.Tensor) -> list[int]:
    return list(range(1, scores.shape[1] + 1))


@PROPERTY
@given(ranking=rankings())
def test_every_metric_lies_between_zero_and_one(ranking):
    scores, relevant = ranking
    for (name, k), values in compute_metrics(scores, relevant, all_ks(scores)).items():
        assert values.shape == (scores.shape[0],)
        assert bool(((values >= 0) & (values <= 1 + 1e-6)).all()), (name, k, values)


@PROPERTY
@given(ranking=rankings())
def test_recall_hit_mrr_and_hit_count_never_fall_as_k_grows(ranking):
    scores, relevant = ranking
    ks = all_ks(scores)
    metrics = compute_metrics(scores, relevant, ks)
    for name in ("recall", "hit", "mrr"):
        for k in ks[:-1]:
            assert bool((metrics[(name, k + 1)] >= metrics[(name, k)] - 1e-6).all()), (name, k)
    for k in ks[:-1]:  # precision x k is the number of hits in the top k
        assert bool((metrics[("precision", k + 1)] * (k + 1) >= metrics[("precision", k)] * k - 1e-5).all())


@PROPERTY
@given(ranking=rankings())
def test_with_one_relevant_item_ndcg_never_falls_as_k_grows_and_recall_equals_hit(ranking):
    scores, relevant = ranking
    # Keep only each user's first relevant item (leave-one-out evaluation).
    single = torch.zeros_like(relevant)
    single[torch.arange(relevant.shape[0]), relevant.float().argmax(dim=1)] = True
    ks = all_ks(scores)
    metrics = compute_metrics(scores, single, ks)
    for k in ks:
        assert torch.equal(metrics[("recall", k)], metrics[("hit", k)])
        if k < ks[-1]:
            assert bool((metrics[("ndcg", k + 1)] >= metrics[("ndcg", k)] - 1e-6).all())


@PROPERTY
@given(ranking=rankings(distinct=True), data=st.data())
def test_permuting_users_permutes_their_metrics(ranking, data):
    scores, relevant = ranking
    order = torch.tensor(data.draw(st.permutations(range(scores.shape[0]))), dtype=torch.long)
    ks = all_ks(scores)
    metrics, permuted = compute_metrics(scores, relevant, ks), compute_metrics(scores[order], relevant[order], ks)
    for key, values in metrics.items():
        assert torch.equal(permuted[key], values[order]), key
        assert permuted[key].mean().item() == pytest.approx(values.mean().item())  # the reported average


@PROPERTY
@given(ranking=rankings(distinct=True), data=st.data())
def test_relabelling_items_changes_no_metric(ranking, data):
    scores, relevant = ranking
    columns = torch.tensor(data.draw(st.permutations(range(scores.shape[1]))), dtype=torch.long)
    ks = all_ks(scores)
    metrics, relabelled = compute_metrics(scores, relevant, ks), compute_metrics(scores[:, columns],
                                                                                 relevant[:, columns], ks)
    for key, values in metrics.items():
        assert torch.allclose(relabelled[key], values), key


@PROPERTY
@given(ranking=rankings(distinct=True))
def test_metrics_equal_a_brute_force_computation_from_the_ranking(ranking):
    scores, relevant = ranking
    ks = all_ks(scores)
    metrics = compute_metrics(scores, relevant, ks)
    for user in range(scores.shape[0]):
        for k in ks:
            expected = reference_metrics(scores[user].tolist(), relevant[user].tolist(), k)
            for name in METRIC_NAMES:
                assert metrics[(name, k)][user].item() == pytest.approx(expected[name], abs=1e-5), (user, name, k)
