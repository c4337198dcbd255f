"""Model properties: output shape, padding never scored, no leakage from later steps, windows that
label every event once, loss falling when overfitting one batch, faithful save/load, and a real fit.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conf.schema import TrainConfig
from models.base import FitSummary, SequentialRecommender, rankable_scores
from models.baselines import PopularityRecommender
from models.data import NextItemWindows, SequenceData, left_pad, ranking_loader
from models.attention import SASRecRecommender
from models.extractors import CaserRecommender, GRURecommender
from models.metrics import ndcg_at_k
from models.kinds import build_model, load_model

N_ITEMS = 30  # item_idx 1..29, 0 is padding
SMALL_OPTIONS = {
    "rnn": {"embedding_dim": 8, "hidden_dim": 16},
    "cnn": {"embedding_dim": 8, "window": 3, "horizontal_filters": 4, "vertical_filters": 2},
    "sasrec": {"embedding_dim": 16, "num_blocks": 2, "num_heads": 2, "max_seq_len": 12},
    "sasrec_tied": {"embedding_dim": 16, "num_blocks": 2, "num_heads": 2, "max_seq_len": 12, "tie_output": True},
}
NEURAL_KINDS = sorted(SMALL_OPTIONS)  # sasrec_tied: SASRec with the paper's tied output head


def kind_of(variant: str) -> str:
    return variant.removesuffix("_tied")


def small_model(kind: str, **overrides) -> SequentialRecommender:
    torch.manual_seed(0)
    return build_model(kind_of(kind), N_ITEMS, SMALL_OPTIONS[kind] | overrides)


def random_history(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, N_ITEMS, (batch, length), generator=generator)  # [B, T]


def test_neural_kinds_build_the_expected_classes():
    assert isinstance(small_model("rnn"), GRURecommender)
    assert isinstance(small_model("cnn"), CaserRecommender)
    assert isinstance(small_model("sasrec"), SASRecRecommender)


@pytest.mark.parametrize("kind", NEURAL_KINDS)
def test_score_all_scores_every_item_and_never_padding_even_for_an_empty_history(kind):
    model = small_model(kind).eval()
    history = random_history(4, 7)
    history[0, :3] = 0  # a left-padded row
    history[1] = 0  # a user with no history at all
    with torch.no_grad():
        scores = model.score_all(history)  # [B, n_items]
    assert scores.shape == (4, N_ITEMS)
    assert torch.isneginf(scores[:, 0]).all()
    assert torch.isfinite(scores[:, 1:]).all()


@pytest.mark.parametrize("kind", NEURAL_KINDS)
@pytest.mark.parametrize("changed_position", [2, 5, 9])
def test_encode_is_causal_later_items_do_not_change_earlier_interests(kind, changed_position):
    model = small_model(kind).eval()
    history = random_history(3, 10)
    altered = history.clone()
    altered[:, changed_position] = (history[:, changed_position] % (N_ITEMS - 1)) + 1  # a different item
    with torch.no_grad():
        original, changed = model.encode(history), model.encode(altered)  # [B, T, H]
    assert torch.equal(original[:, :changed_position], changed[:, :changed_position])
    # The change does reach its own position, so the check above is not vacuous.
    assert not torch.allclose(original[:, changed_position], changed[:, changed_position])


def test_left_pad_pads_on_the_left_and_keeps_the_last_items():
    batch = left_pad([np.array([1, 2, 3, 4, 5]), np.array([7, 8]), np.array([], dtype=np.int64)], length=3)
    assert batch.dtype == torch.long
    assert batch.tolist() == [[3, 4, 5], [0, 7, 8], [0, 0, 0]]


def collated(sequences: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    windows = NextItemWindows(sequences, max_len)
    return windows.collate(windows[list(range(len(windows)))])


@pytest.mark.parametrize("length", [2, 5, 6, 11, 23])
def test_windows_target_every_event_after_the_first_exactly_once(length):
    max_len = 5
    # Distinct items per sequence, so each target names the event it labels.
    sequences = [np.arange(1, length + 1), np.arange(100, 104)]
    inputs, targets = collated(sequences, max_len)  # [W, T] each
    assert inputs.shape[1] == targets.shape[1] == max_len
    labelled = targets[targets > 0].tolist()
    expected = list(range(2, length + 1)) + [101, 102, 103]
    assert sorted(labelled) == sorted(expected)  # sorted() keeps duplicates: each exactly once


def test_windows_pair_each_target_with_the_item_just_before_it():
    sequence = np.arange(1, 24)  # item i follows item i - 1; longer than max_len
    inputs, targets = collated([sequence], max_len=5)  # [W, T] each
    labelled = targets > 0
    assert torch.equal(inputs[labelled], targets[labelled] - 1)
    # Targets are the inputs shifted by one step: each label is the next position's input.
    shifted = labelled[:, :-1]
    assert torch.equal(targets[:, :-1][shifted], inputs[:, 1:][shifted])


def test_windows_never_label_a_position_whose_input_is_padding():
    inputs, targets = collated([np.arange(1, 6), np.arange(1, 7), np.array([8, 9])], max_len=5)
    assert not (targets[inputs == 0] > 0).any()


def test_a_single_event_sequence_yields_no_window():
    assert len(NextItemWindows([np.array([4])], max_len=5)) == 0


@pytest.mark.parametrize("kind", NEURAL_KINDS)
def test_loss_falls_when_overfitting_one_batch(kind, monkeypatch):
    model = small_model(kind, dropout=0.0, learning_rate=1e-2)
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)  # no Trainer to log to
    sequences = [np.random.default_rng(row).integers(1, N_ITEMS, 9) for row in range(8)]
    batch = collated(sequences, max_len=8)
    optimizer = model.configure_optimizers()
    model.train()
    losses = []
    for step in range(50):
        optimizer.zero_grad()
        loss = model.training_step(batch, step)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kind", NEURAL_KINDS)
def test_saved_model_loads_with_identical_scores(kind, tmp_path):
    model = small_model(kind).eval()
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert not loaded.training
    history = random_history(5, 6)
    with torch.no_grad():
        assert torch.equal(model.score_all(history), loaded.score_all(history))
    assert dict(loaded.hparams) == dict(model.hparams)
    payload = torch.load(path, weights_only=True)  # no pickled code in the file
    assert payload["kind"] == kind_of(kind)


def test_saved_popularity_loads_with_identical_counts(tmp_path):
    model = PopularityRecommender(6)
    model.fit(SequenceData(6, [np.array([1, 2, 2])], [np.array([3])], [np.array([4])]))
    model.save(tmp_path / "popularity.pt")
    loaded = load_model(tmp_path / "popularity.pt")
    assert torch.equal(loaded.counts, model.counts)


def test_popularity_ranks_by_training_counts_and_never_scores_padding():
    # Training counts: item 1 ×1, item 2 ×3, item 3 ×2, items 4 and 5 ×0; valid/test items don't count.
    data = SequenceData(6, train=[np.array([2, 3]), np.array([2, 1, 3]), np.array([2])],
                        valid=[np.array([4]), np.array([4]), np.array([4])],
                        test=[np.array([5]), np.array([5]), np.array([5])])
    model = PopularityRecommender(6)
    model.fit(data)
    scores = model.score_all(torch.tensor([[0, 1], [2, 3]]))  # [B, n_items], same row for everyone
    assert scores.shape == (2, 6)
    assert torch.isneginf(scores[:, 0]).all()
    # Rank scores: 2 (×3) 5, 3 (×2) 4, 1 (×1) 3, then the tie 4, 5 (×0) by item_idx: 2, 1.
    assert scores[0].tolist()[1:] == [3.0, 5.0, 4.0, 2.0, 1.0]
    assert torch.equal(scores[0], scores[1])
    assert scores[0].argsort(descending=True)[:3].tolist() == [2, 3, 1]


def test_popularity_ranks_equal_counts_by_lower_item_idx_first_through_topk():
    # Counts: items 2, 5, 7 ×2; items 1, 4, 6 ×1; item 3 ×0. Every tie goes to the lower item_idx.
    data = SequenceData(8, train=[np.array([7, 5, 2, 6]), np.array([2, 5, 7, 4, 1])],
                        valid=[np.array([3]), np.array([3])], test=[np.array([3]), np.array([3])])
    model = PopularityRecommender(8)
    model.fit(data)
    scores = model.score_all(torch.zeros(2, 3, dtype=torch.long))  # [B, n_items]
    assert torch.topk(scores, 7, dim=1).indices.tolist() == [[2, 5, 7, 1, 4, 6, 3]] * 2
    assert len(set(scores[0, 1:].tolist())) == 7  # distinct: nothing left to topk's tie order
    # Large equal counts stay distinct (a count-plus-fraction score would round them together in float32).
    model.counts = torch.tensor([0.0] + [2.0**25] * 7)
    assert model.score_all(torch.zeros(1, 1, dtype=torch.long)).topk(7).indices.tolist() == [[1, 2, 3, 4, 5, 6, 7]]


def test_rankable_scores_masks_seen_items_only_when_asked():
    data = SequenceData(6, train=[np.array([2, 3]), np.array([1])], valid=[np.array([4]), np.array([5])],
                        test=[np.array([5]), np.array([2])])
    model = PopularityRecommender(6)
    model.fit(data)
    batch = next(iter(ranking_loader(data.history("valid"), data.targets("valid"), max_len=4, batch_size=8)))
    masked = rankable_scores(model, batch, exclude_seen=True)
    unmasked = rankable_scores(model, batch, exclude_seen=False)
    seen = [[2, 3], [1]]
    for row, items in enumerate(seen):
        unseen = [i for i in range(1, 6) if i not in items]
        assert torch.isneginf(masked[row, items]).all()
        assert torch.isfinite(masked[row, unseen]).all()
        assert torch.isfinite(unmasked[row, 1:]).all()
    assert torch.isneginf(masked[:, 0]).all() and torch.isneginf(unmasked[:, 0]).all()


@pytest.mark.parametrize("kind", NEURAL_KINDS)
def test_short_fit_reports_valid_ndcg_keeps_best_weights_and_writes_a_checkpoint(kind, tmp_path, tiny_data):
    data = tiny_data
    model = build_model(kind_of(kind), data.n_items, SMALL_OPTIONS[kind] | {"max_seq_len": 10})
    train = TrainConfig(max_epochs=2, progress_bar=False, batch_size=32, accelerator="cpu")
    summary = model.fit(data, train, seed=0, checkpoint_dir=tmp_path)
    assert isinstance(summary, FitSummary)
    assert summary.epochs == 2
    assert 0.0 < summary.best_valid_ndcg <= 1.0
    assert list(tmp_path.glob("best-*.ckpt"))
    assert not model.training
    # The model keeps the best epoch's weights: re-ranking the valid split reproduces its NDCG@10.
    batch = next(iter(ranking_loader(data.history("valid"), data.targets("valid"), 10, len(data.train))))
    with torch.no_grad():
        scores = rankable_scores(model, batch, exclude_seen=True)
    relevant = batch.mask(batch.target_rows, batch.target_items, data.n_items)
    assert ndcg_at_k(scores, relevant, k=10).mean().item() == pytest.approx(summary.best_valid_ndcg, abs=1e-5)


@pytest.mark.parametrize(("settings", "learning_rate", "stopped_by"), [
    ({"max_epochs": 2}, 1e-3, "max_epochs"),
    ({"max_epochs": 50, "patience": 1}, 1e-12, "early_stopping"),  # the weights, so validation, never move
    ({"max_epochs": 50, "max_minutes": 1e-6}, 1e-3, "time_budget"),
])
def test_a_fit_says_what_stopped_it(settings, learning_rate, stopped_by, tiny_data, tmp_path):
    options = SMALL_OPTIONS["rnn"] | {"max_seq_len": 10, "learning_rate": learning_rate}
    model = build_model("rnn", tiny_data.n_items, options)
    train = TrainConfig(progress_bar=False, batch_size=32, accelerator="cpu", **settings)
    assert model.fit(tiny_data, train, seed=0, checkpoint_dir=tmp_path).stopped_by == stopped_by


def test_learning_rate_decays_on_the_validation_metric_when_asked(tiny_data, tmp_path):
    model = build_model("rnn", tiny_data.n_items, SMALL_OPTIONS["rnn"] | {"max_seq_len": 10})
    train = TrainConfig(max_epochs=3, progress_bar=False, batch_size=32, accelerator="cpu",
                        lr_decay_factor=0.5, lr_decay_patience=0)
    summary = model.fit(tiny_data, train, seed=0, checkpoint_dir=tmp_path)
    (config,) = model.trainer.lr_scheduler_configs
    plateau = config.scheduler
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    # The scheduler saw every epoch's validation NDCG@10: its best is the fit's best.
    assert plateau.best == pytest.approx(summary.best_valid_ndcg, abs=1e-6)


def test_unknown_model_kind_is_rejected_with_the_known_kinds():
    with pytest.raises(ValueError, match="unknown.*cnn.*popularity.*rnn"):
        build_model("transformer", N_ITEMS, {})

