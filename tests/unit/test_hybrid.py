"""Co-occurrence hybrid (models/hybrid.py): standardised blending, the weight chosen on validation by a real fit,
faithful save/load, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conf.schema import PipelineConfig, TrainConfig
from models.data import SequenceData
from models.hybrid import BLEND_GRID, HybridRecommender, standardised
from models.kinds import build_model, load_model

N_ITEMS = 41  # items 1..40: two clusters of 20
SEQUENCE = {"kind": "rnn", "embedding_dim": 8, "hidden_dim": 8, "max_seq_len": 10}


def clustered_data(seed: int = 0, users: int = 120) -> SequenceData:
    """Each user takes random items of one cluster (1..20 or 21..40); validation and test come from it too:
    co-occurrence says it all, order says nothing."""
    rng = np.random.default_rng(seed)
    train, valid, test = [], [], []
    for user in range(users):
        low = 1 + 20 * (user % 2)
        items = rng.permutation(np.arange(low, low + 20))[:8]
        train.append(items[:6]), valid.append(items[6:7]), test.append(items[7:8])
    return SequenceData(N_ITEMS, train, valid, test)


def test_standardised_rows_have_mean_zero_and_unit_spread_and_keep_minus_infinity():
    scores = torch.tensor([[float("-inf"), 1.0, 2.0, 3.0], [float("-inf"), 5.0, float("-inf"), 5.0]])
    z = standardised(scores)
    torch.testing.assert_close(z[0, 1:], torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-4, rtol=0)
    assert torch.isneginf(z[:, 0]).all() and torch.isneginf(z[1, 2])
    assert torch.equal(z[1, [1, 3]], torch.zeros(2))  # a constant row: no division by zero


def test_the_blend_is_the_best_weight_on_validation_and_scores_are_that_blend(tmp_path, monkeypatch):
    data = clustered_data()
    torch.manual_seed(0)
    model = build_model("hybrid", N_ITEMS, {"sequence": SEQUENCE})
    monkeypatch.chdir(tmp_path)
    summary = model.fit(data, TrainConfig(max_epochs=1, progress_bar=False, accelerator="cpu"), seed=0)
    assert list(tmp_path.iterdir()) == []  # a fit without checkpoint_dir leaves nothing in the working directory
    assert set(model.blend_scores) == set(BLEND_GRID)
    assert model.blend_scores[model.blend] == max(model.blend_scores.values())
    assert summary.best_valid_ndcg == model.blend_scores[model.blend]
    # One epoch of a GRU knows little; the clusters are pure co-occurrence: ItemKNN must carry weight.
    assert model.blend > 0 and model.blend_scores[model.blend] > model.blend_scores[0.0]
    history = torch.tensor([[0, 1, 2, 3], [21, 22, 23, 24]])
    with torch.no_grad():
        expected = model.blended(model.sequence.score_all(history).float(), model.knn.score_all(history), model.blend)
        expected[:, 0] = float("-inf")
        assert torch.equal(model.score_all(history), expected)
    # The weight a fit chose is saved and loads back (a numpy scalar once broke torch.load(weights_only=True)).
    model.save(tmp_path / "model.pt")
    assert load_model(tmp_path / "model.pt").blend == model.blend


def test_a_saved_hybrid_loads_with_identical_scores(tmp_path):
    data = clustered_data()
    model = build_model("hybrid", N_ITEMS, {"sequence": SEQUENCE, "blend": 0.3})
    model.knn.fit(data)
    model.save(tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    history = torch.tensor([[0, 1, 2, 3], [21, 22, 23, 24]])
    assert loaded.blend == 0.3
    with torch.no_grad():
        assert torch.equal(loaded.score_all(history), model.eval().score_all(history))


def test_an_unknown_sequence_kind_and_scoring_before_fit_are_refused():
    with pytest.raises(ValueError, match="hybrid sequence kind 'itemknn' is unknown"):
        HybridRecommender(N_ITEMS, {"kind": "itemknn"})
    with pytest.raises(RuntimeError, match="before fit"):
        HybridRecommender(N_ITEMS, SEQUENCE).score_all(torch.tensor([[1, 2]]))


def test_the_config_takes_a_hybrid_of_any_sequence_kind_and_counts_it_as_a_transfer_method():
    config = PipelineConfig.model_validate({
        "scenario": {"partition": "item_domain", "attribute": "domain", "source": "books", "target": "movies"},
        "models": [{"kind": "hybrid", "name": "blend", "sequence": {"kind": "domain_sasrec", "tie_output": True}}]})
    assert config.models[0].sequence.kind == "domain_sasrec"
    assert config.transfer_methods() == ["blend"]


def test_a_fine_tuning_regime_is_refused_for_a_hybrid_with_the_setting_named():
    with pytest.raises(ValueError, match="hybrid cannot train_on 'source_then_target'"):
        PipelineConfig.model_validate({"scenario": {"name": "cross_group"},
                                       "models": [{"kind": "hybrid", "train_on": "source_then_target"}]})
