"""The CPU fast paths of training: length-sorted batches with padding cut, and the cheap dropout mask.

Both must leave what is learnt unchanged in kind: every window once per epoch, the same labelled
pairs, outputs that do not depend on the padding cut, a drop rate and expectation as asked, and
reproducible draws (a resumed fit relies on that).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler

from conf.schema import TrainConfig
from models.base import FitSummary
from models.bert_transfer import BertTransferRecommender
from models.data import LengthBatches, NextItemWindows, left_pad
from models.dropout import Dropout, dropout
from models.kinds import build_model

N_ITEMS = 40
PADDING_FREE_OPTIONS = {
    "cnn": {"embedding_dim": 8, "window": 3, "horizontal_filters": 4, "vertical_filters": 2, "max_seq_len": 24},
    "rnn": {"embedding_dim": 8, "hidden_dim": 16, "max_seq_len": 24},
    "sasrec": {"embedding_dim": 8, "num_blocks": 2, "num_heads": 2, "max_seq_len": 24},
}


def sequences_of_lengths(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, N_ITEMS, length) for length in lengths]


def epoch(windows: NextItemWindows, batch_size: int, seed: int) -> list[list[int]]:
    return list(LengthBatches(windows.labelled_counts(), batch_size, torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_length_batches_hold_every_window_once_in_as_many_batches_as_random_batching(batch_size):
    windows = NextItemWindows(sequences_of_lengths(list(range(2, 60, 3)) * 3), max_len=20)
    batches = epoch(windows, batch_size, seed=0)
    assert len(batches) == -(-len(windows) // batch_size)
    assert all(batches)  # no empty batch
    assert sorted(i for batch in batches for i in batch) == list(range(len(windows)))


def test_length_batches_group_similar_lengths_and_balance_labelled_positions():
    windows = NextItemWindows(sequences_of_lengths([2 + (7 * i) % 40 for i in range(200)]), max_len=40)
    labelled = windows.labelled_counts()
    batches = epoch(windows, batch_size=16, seed=0)
    spreads = [int(labelled[b].max() - labelled[b].min()) for b in batches]
    random_spreads = [int(labelled[b].max() - labelled[b].min()) for b in torch.randperm(len(windows)).split(16)]
    assert np.mean(spreads) < 0.25 * np.mean(random_spreads)
    # About the same number of labelled positions in each batch: short windows come more to a batch.
    totals = [int(labelled[b].sum()) for b in batches]
    share = int(labelled.sum()) / len(batches)
    assert max(abs(total - share) for total in totals) <= int(labelled.max())
    assert max(len(b) for b in batches) > min(len(b) for b in batches)


def test_length_batches_are_reproducible_per_seed_and_differ_between_epochs():
    windows = NextItemWindows(sequences_of_lengths([5, 5, 5, 5, 9, 9, 9, 9, 14, 14, 14, 14]), max_len=20)
    assert epoch(windows, 4, seed=3) == epoch(windows, 4, seed=3)
    sampler = LengthBatches(windows.labelled_counts(), 4, torch.Generator().manual_seed(3))
    first, second = list(sampler), list(sampler)
    assert first != second  # new tie-breaks and batch order each epoch


def test_trimmed_batches_cut_only_padding_columns_and_keep_every_labelled_pair():
    sequences = sequences_of_lengths([3, 6, 4])
    full, trimmed = NextItemWindows(sequences, max_len=10), NextItemWindows(sequences, max_len=10, trim_padding=True)
    batch = full[[0, 1, 2]]
    full_inputs, full_targets = full.collate(batch)
    inputs, targets = trimmed.collate(batch)
    assert inputs.shape == (3, 5)  # the longest window has 6 items: 5 inputs
    assert (full_inputs[:, :-5] == 0).all()
    assert torch.equal(inputs, full_inputs[:, -5:]) and torch.equal(targets, full_targets[:, -5:])


@pytest.mark.parametrize("kind", sorted(PADDING_FREE_OPTIONS))
def test_models_trained_on_cut_batches_give_the_same_interests_whatever_the_padding(kind):
    torch.manual_seed(0)
    model = build_model(kind, N_ITEMS, PADDING_FREE_OPTIONS[kind]).eval()
    assert not model.reads_padding
    histories = sequences_of_lengths([3, 7, 5])
    with torch.no_grad():
        tight = model.encode(left_pad(histories, 7))  # [3, 7, D]
        padded = model.encode(left_pad(histories, 24))  # [3, 24, D]
    assert torch.allclose(padded[:, -7:], tight, atol=1e-5)
    assert (padded[:, :-7] == 0).all()  # padding positions carry no interest


def test_the_gru_scores_a_user_the_same_alone_or_beside_a_longer_history():
    torch.manual_seed(0)
    model = build_model("rnn", N_ITEMS, PADDING_FREE_OPTIONS["rnn"]).eval()
    short, long = sequences_of_lengths([2, 20])
    with torch.no_grad():
        alone = model.score_all(left_pad([short], 2))
        beside = model.score_all(left_pad([short, long], 24))[:1]
        empty = model.score_all(left_pad([np.empty(0, np.int64)], 24))
    assert torch.allclose(alone[:, 1:], beside[:, 1:], atol=1e-5)
    assert torch.allclose(empty[0, 1:], model.output.bias[1:])  # no history: the learnt popularity alone


def test_a_model_that_reads_its_padding_keeps_random_batches(tiny_data, tmp_path):
    # The BERT transfer model's encoder sees padded positions; such a model is never given cut batches.
    assert BertTransferRecommender.reads_padding
    model = build_model("rnn", tiny_data.n_items, PADDING_FREE_OPTIONS["rnn"] | {"max_seq_len": 10})
    model.reads_padding = True
    train = TrainConfig(max_epochs=1, progress_bar=False, batch_size=16, accelerator="cpu", batching="by_length")
    model.fit(tiny_data, train, seed=0, checkpoint_dir=tmp_path)
    assert model.trainer.train_dataloader.sampler.__class__ is BatchSampler


@pytest.mark.parametrize("kind", sorted(PADDING_FREE_OPTIONS))
def test_a_fit_on_length_batches_learns_and_is_reproducible(kind, tiny_data, tmp_path):
    train = TrainConfig(max_epochs=3, progress_bar=False, batch_size=16, accelerator="cpu", batching="by_length")

    def fit(folder):
        torch.manual_seed(0)
        model = build_model(kind, tiny_data.n_items, PADDING_FREE_OPTIONS[kind] | {"max_seq_len": 10})
        return model, model.fit(tiny_data, train, seed=0, checkpoint_dir=folder)

    model, summary = fit(tmp_path / "a")
    assert isinstance(summary, FitSummary) and summary.epochs == 3 and summary.best_valid_ndcg > 0
    assert model.trainer.train_dataloader.sampler.__class__ is LengthBatches
    _, again = fit(tmp_path / "b")
    assert again.best_valid_ndcg == pytest.approx(summary.best_valid_ndcg, abs=1e-7)  # seeded: reproducible


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_dropout_drops_the_rounded_share_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(400_000)
    out = dropout(x, p)
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(round(p * 256) / 256, abs=0.005)
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.unique(out[out != 0]).tolist() == pytest.approx([256 / (256 - round(p * 256))])


def test_dropout_is_the_identity_in_eval_mode_or_at_zero_and_reproducible_when_seeded():
    x = torch.randn(64, 32)
    module = Dropout(0.3).eval()
    assert torch.equal(module(x), x)
    assert torch.equal(dropout(x, 0.0), x)
    torch.manual_seed(5)
    first = Dropout(0.3)(x)
    torch.manual_seed(5)
    assert torch.equal(Dropout(0.3)(x), first)
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, 1.0)


def test_dropout_passes_gradients_to_the_kept_elements_only():
    x = torch.randn(1000, requires_grad=True)
    torch.manual_seed(1)
    out = dropout(x, 0.25)
    out.sum().backward()
    kept = out.detach() != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 256 / 192))
    assert (x.grad[~kept] == 0).all()
