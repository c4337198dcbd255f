"""Reasons for recommendations (models/explain.py): for every kind, reasons are items of the user's own
history (and of the domain the model reads), at most n_reasons, distinct, with positive evidence, best
first; the fast closed forms equal the definition computed from score_all; exported rows and served
predictions carry them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

from models.base import rankable_scores
from models.bert_transfer import BertTransferRecommender
from models.data import SequenceData, left_pad, ranking_loader
from models.explain import (N_REASONS, InterestEvidence, NeighbourEvidence, NoEvidence, ScoreEvidence,
                            distinct_items, evidence_for, explain, top_reasons)
from models.itemknn import ItemKNNRecommender
from models.mapping import EMCDRRecommender, PTUPCDRRecommender
from models.kinds import build_model
from models.serving import Catalogue, recommend
from models.transfer_data import SOURCE, TARGET
from tasks import schemas
from tasks.modelling.export import (CSV_LIST_SEPARATOR, RecommendationWriter, iter_top_k, rank_batch,
                          recommendation_frame)

N_ITEMS = 31  # items 1..30; 0 is padding
MAX_SEQ_LEN = 8
# Cross-domain kinds: items 1..15 are the source domain, 16..30 the target domain.
ITEM_ROLE = np.array([0] + [SOURCE] * 15 + [TARGET] * 15, dtype=np.int8)
SOURCE_ITEMS = set(np.flatnonzero(ITEM_ROLE == SOURCE).tolist())
KINDS = ["popularity", "itemknn", "rnn", "cnn", "sasrec", "domain_sasrec", "hybrid", "bert_transfer", "emcdr",
         "ptupcdr"]
MAPPING_KINDS = {"emcdr", "ptupcdr"}
EXTRACTOR = {"kind": "rnn", "embedding_dim": 8, "hidden_dim": 8, "max_seq_len": MAX_SEQ_LEN}


def random_data(seed: int, n_users: int = 12) -> SequenceData:
    """Random histories of 1..12 items, repeats allowed (a user may see an item twice)."""
    rng = np.random.default_rng(seed)
    train = [rng.integers(1, N_ITEMS, size=rng.integers(1, 13)) for _ in range(n_users)]
    return SequenceData(N_ITEMS, train, [rng.integers(1, N_ITEMS, size=1) for _ in range(n_users)],
                        [rng.integers(1, N_ITEMS, size=1) for _ in range(n_users)])


def small_model(kind: str):
    """A small model of `kind`: baselines fitted on random data, neural ones with untrained weights (eval mode)."""
    torch.manual_seed(0)
    if kind in ("popularity", "itemknn"):
        model = build_model(kind, N_ITEMS, {})
        model.fit(random_data(seed=99, n_users=40))
        return model
    if kind == "bert_transfer":
        model = BertTransferRecommender(N_ITEMS, text_dim=16, init="scratch", num_layers=1, hidden_dim=16,
                                        num_heads=2, max_seq_len=MAX_SEQ_LEN)
        model.attach_item_text(torch.nn.functional.normalize(torch.randn(N_ITEMS, 16), dim=1))
        with torch.no_grad():  # the ID embeddings start at 0; give them something to say
            model.id_embedding.weight.normal_(std=0.5)
        return model.eval()
    if kind in MAPPING_KINDS:
        cls = EMCDRRecommender if kind == "emcdr" else PTUPCDRRecommender
        model = cls(n_items=N_ITEMS, extractor=EXTRACTOR, mapping_hidden=16)
        model.item_role.copy_(torch.as_tensor(ITEM_ROLE))  # as fit_views sets it
        return model.eval()
    if kind == "hybrid":
        model = build_model(kind, N_ITEMS, {"sequence": EXTRACTOR, "blend": 0.5})
        model.knn.fit(random_data(seed=99, n_users=40))
        return model.eval()
    options = {"embedding_dim": 8, "max_seq_len": MAX_SEQ_LEN}
    if kind == "rnn":
        options["hidden_dim"] = 8
    model = build_model(kind, N_ITEMS, options).eval()
    if kind == "domain_sasrec":
        model.attach_item_domains(ITEM_ROLE)
        for layer in model.domain_interest_maps:  # away from their zero start, so the domains differ
            torch.nn.init.normal_(layer.weight, std=0.3)
    return model


@pytest.fixture(scope="module", params=KINDS)
def model(request):
    return small_model(request.param)


def read_histories(model, data: SequenceData) -> list[np.ndarray]:
    """What export gives a model: the read domain of each history (mapping models read the source)."""
    histories = data.history("all")
    if getattr(model, "kind", "") in MAPPING_KINDS:
        return [h[ITEM_ROLE[h] == SOURCE] for h in histories]
    return histories


def ranked_with_reasons(model, histories: list[np.ndarray], top_k: int = 5):
    """(history [B, T], top-k item_idx [B, K], Reasons) of one batch, as export computes them."""
    batch = next(iter(ranking_loader(histories, None, MAX_SEQ_LEN, batch_size=len(histories))))
    with torch.inference_mode():
        recommended = rankable_scores(model, batch, exclude_seen=True).topk(top_k, dim=1).indices
        return batch.history, recommended, explain(evidence_for(model), batch.history, recommended)


@pytest.mark.parametrize("seed", range(4))
def test_reasons_are_distinct_items_of_the_users_own_history_best_first(model, seed):
    data = random_data(seed)
    history, recommended, reasons = ranked_with_reasons(model, read_histories(model, data))
    assert reasons.items.shape == (*recommended.shape, N_REASONS)
    for row in range(history.shape[0]):
        own = set(history[row].tolist()) - {0}  # the window the model read
        for items, scores in zip(reasons.items[row], reasons.scores[row]):
            given = items[items > 0].tolist()
            assert set(given) <= own, (given, own)
            assert len(given) == len(set(given)) <= N_REASONS
            assert given == items[:len(given)].tolist(), "missing reasons come last"
            assert (scores[:len(given)] > 0).all() and torch.isinf(scores[len(given):]).all()
            assert (scores[:len(given)].diff() <= 0).all(), "best first"
            if model.kind in MAPPING_KINDS:
                assert set(given) <= SOURCE_ITEMS, "a mapping model's reasons come from the source domain"


def test_neural_and_neighbour_models_explain_most_recommendations(model):
    _, _, reasons = ranked_with_reasons(model, read_histories(model, random_data(0)))
    explained = (reasons.items[..., 0] > 0).float().mean().item()
    if model.kind == "popularity":
        assert explained == 0.0  # its scores ignore the history: no item is a reason
    else:
        assert explained > 0.3, explained


@pytest.mark.parametrize("seed", range(3))
def test_the_closed_form_equals_the_definition_from_score_all(model, seed):
    rng = np.random.default_rng(seed)
    history = left_pad([rng.integers(1, N_ITEMS, size=rng.integers(1, 10)) for _ in range(6)], MAX_SEQ_LEN)
    recommended = torch.as_tensor(rng.integers(1, N_ITEMS, size=(6, 4)))
    with torch.inference_mode():
        fast = evidence_for(model)(history, recommended)
        definition = ScoreEvidence(model)(history, recommended)
    assert fast.shape == (6, 4, MAX_SEQ_LEN)
    torch.testing.assert_close(fast, definition, atol=1e-5, rtol=1e-4)


def test_each_kind_gets_its_closed_form():
    expected = {"popularity": NoEvidence, "itemknn": NeighbourEvidence, "rnn": InterestEvidence,
                "cnn": InterestEvidence, "sasrec": InterestEvidence, "domain_sasrec": ScoreEvidence,
                "hybrid": ScoreEvidence, "bert_transfer": InterestEvidence,
                "emcdr": InterestEvidence, "ptupcdr": InterestEvidence}
    assert {kind: type(evidence_for(small_model(kind))) for kind in KINDS} == expected


def test_mapping_reasons_ignore_target_items_of_a_mixed_history():
    model = small_model("emcdr")
    rng = np.random.default_rng(0)
    mixed = [rng.integers(1, N_ITEMS, size=8) for _ in range(10)]  # both domains
    history, recommended, reasons = ranked_with_reasons(model, mixed)
    given = reasons.items[reasons.items > 0]
    assert len(given) > 0 and set(given.tolist()) <= SOURCE_ITEMS
    with torch.inference_mode():  # target items have no evidence at all: the mapping never reads them
        evidence = evidence_for(model)(history, recommended)
    in_target = torch.as_tensor(ITEM_ROLE == TARGET)[history]  # [B, T]
    assert in_target.any() and (evidence[in_target.unsqueeze(1).expand_as(evidence)] == 0).all()


def test_itemknn_reasons_are_the_neighbours_by_similarity():
    model = ItemKNNRecommender(n_items=6)
    model.neighbour_items = torch.tensor([[0, 0], [2, 3], [1, 0], [1, 5], [0, 0], [3, 0]])
    model.neighbour_values = torch.tensor([[0.0, 0.0], [0.9, 0.4], [0.9, 0.0], [0.4, 0.2], [0.0, 0.0], [0.2, 0.0]])
    history = torch.tensor([[0, 2, 1, 3]])  # 3 most recent
    reasons = explain(evidence_for(model), history, torch.tensor([[5, 2, 4]]), n_reasons=2)
    # item 5: only item 3 lists it (0.2); item 2: only item 1 (0.9); item 4: nobody lists it.
    assert reasons.items.tolist() == [[[3, 0], [1, 0], [0, 0]]]
    assert reasons.scores[0, 0, 0].item() == pytest.approx(0.2) and reasons.scores[0, 1, 0].item() == pytest.approx(0.9)


def test_a_repeated_history_item_is_one_reason():
    history = torch.tensor([[0, 4, 7, 4, 9]])
    assert distinct_items(history).tolist() == [[False, False, True, True, True]]
    evidence = torch.tensor([[[0.0, 0.8, 0.1, 0.8, -0.5]]])  # item 4 at two positions
    reasons = top_reasons(history, evidence, n_reasons=3)
    assert reasons.items.tolist() == [[[4, 7, 0]]]  # 9 points away (negative): not a reason


def test_export_rows_carry_reasons_from_the_users_history_and_chunks_change_nothing(tmp_path):
    model = small_model("rnn")
    data = random_data(3, n_users=9)
    user_ids = pl.Series([f"u{u}" for u in range(len(data.train))])
    item_ids = pl.Series([f"i{i}" for i in range(1, N_ITEMS)]).to_arrow()
    frames = {}
    for batch_size in (2, 64):
        with RecommendationWriter(tmp_path / f"r{batch_size}.parquet", tmp_path / f"r{batch_size}.csv") as writer:
            for ranked in iter_top_k(model, data, 5, MAX_SEQ_LEN, batch_size, torch.device("cpu")):
                writer.write(recommendation_frame(ranked, user_ids, item_ids))
        frames[batch_size] = pl.read_parquet(tmp_path / f"r{batch_size}.parquet")
        assert writer.rows == frames[batch_size].height == len(data.train) * 5
    frame = frames[2]
    # Batch size changes nothing but float rounding in the matmuls.
    assert_frame_equal(frame, frames[64], check_exact=False, rel_tol=1e-5, abs_tol=1e-6)
    schemas.check_schema(frame.schema, schemas.RECOMMENDATIONS, "recommendations", "test")
    assert frame.columns == list(schemas.RECOMMENDATIONS)
    window = {f"u{u}": {f"i{i}" for i in h[-MAX_SEQ_LEN:]} for u, h in enumerate(data.history("all"))}
    for user, reasons, scores in frame.select("user_id", "reason_item_ids", "reason_scores").iter_rows():
        assert set(reasons) <= window[user] and len(reasons) == len(scores) <= N_REASONS
    assert (frame["reason_item_ids"].list.len() > 0).mean() > 0.3
    csv = pl.read_csv(tmp_path / "r2.csv", schema_overrides={"reason_item_ids": pl.String})
    assert csv.height == frame.height
    assert csv["reason_item_ids"].fill_null("").to_list() == \
        [CSV_LIST_SEPARATOR.join(r) for r in frame["reason_item_ids"].to_list()]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_export_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError), RecommendationWriter(tmp_path / "r.parquet", tmp_path / "r.csv") as writer:
        writer.write(pl.DataFrame({"user_id": ["u"], "item_id": ["i"], "rank": [1], "score": [1.0],
                                   "reason_item_ids": [["j"]], "reason_scores": [[0.5]]},
                                  schema=schemas.RECOMMENDATIONS))
        raise RuntimeError("scoring failed half-way")
    assert not list(tmp_path.iterdir())


def test_rank_batch_without_evidence_has_no_reason_columns():
    model = small_model("rnn")
    batch = next(iter(ranking_loader(random_data(0).history("all"), None, MAX_SEQ_LEN, 4)))
    with torch.inference_mode():
        ranked = rank_batch(model, batch, 3, evidence=None)
    assert ranked.items.shape == (4, 3) and ranked.reason_items.shape == (4, 3, 0)


@pytest.mark.parametrize("kind", ["sasrec", "emcdr"])
def test_served_predictions_carry_reasons_from_the_history_the_model_reads(kind):
    model = small_model(kind)
    ids = [f"{'s' if ITEM_ROLE[i] == SOURCE else 't'}{i}" for i in range(1, N_ITEMS)]
    roles = ["source" if ITEM_ROLE[i] == SOURCE else "target" for i in range(1, N_ITEMS)]
    rng = np.random.default_rng(1)
    rows = [{"history": [ids[i] for i in rng.integers(15, 30, size=3)],  # target items
             "source_history": [ids[i] for i in rng.integers(0, 15, size=5)]} for _ in range(6)]
    reads = "source" if kind in MAPPING_KINDS else "all"
    result = recommend(model, Catalogue(ids, roles), pd.DataFrame(rows), k=4, reads=reads, max_seq_len=MAX_SEQ_LEN)
    assert list(result.columns) == ["item_ids", "scores", "reason_item_ids", "reason_scores"]
    for row, request in zip(result.itertuples(), rows):
        read = set(request["source_history"])
        if reads == "all":
            read |= set(request["history"])
        assert len(row.reason_item_ids) == len(row.item_ids) == 4
        for reasons, scores in zip(row.reason_item_ids, row.reason_scores):
            assert set(reasons) <= read and len(reasons) == len(scores) <= N_REASONS
            assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    assert any(reasons for row in result.reason_item_ids for reasons in row)
