"""Scoring on an accelerator: the device choice, batches moved and pinned, and the same results as on the CPU.

Tests needing CUDA skip without it; on a GPU machine they compare the CUDA path against the CPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conf.schema import EvaluationConfig, TrainConfig
from models.base import rankable_scores
from models.data import SequenceData, SequenceDataModule, left_pad, ranking_loader
from models.device import on_device, pins_memory, scoring_device, training_precision, uses_cuda
from models import device as device_module
from models.metrics import compute_metrics
from models.kinds import build_model
from tasks.modelling.evaluation import candidate_mask, score_users
from tasks.modelling.export import recommend_top_k

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device: torch.cuda.is_available() is False")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def small_model(kind: str, n_items: int):
    torch.manual_seed(0)
    return build_model(kind, n_items, {"max_seq_len": 8}).eval()


# --- choosing the device ---------------------------------------------------------------------------

@pytest.mark.parametrize(("has_bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_precision_picks_bf16_exactly_where_the_cpu_computes_it_and_says_so(has_bf16, expected, monkeypatch,
                                                                                 caplog):
    monkeypatch.setattr(device_module, "cpu_computes_bf16", lambda: has_bf16)
    with caplog.at_level("INFO", logger="models.device"):
        assert training_precision("auto", "cpu") == expected
    assert f"train.precision auto: {expected}" in caplog.text
    assert training_precision("32-true", "cpu") == "32-true"  # an explicit choice stays as it is


def test_cpu_preference_scores_on_the_cpu():
    assert scoring_device("cpu") == torch.device("cpu")


def test_auto_scores_on_cuda_exactly_when_one_is_available():
    assert scoring_device("auto").type == ("cuda" if CUDA else "cpu")
    assert scoring_device() == scoring_device("auto")


@pytest.mark.skipif(CUDA, reason="a CUDA device is present")
def test_asking_for_cuda_without_one_fails_naming_the_setting():
    with pytest.raises(ValueError, match="accelerator 'cuda'"):
        scoring_device("cuda")


def test_an_unknown_accelerator_is_rejected_with_the_known_ones():
    with pytest.raises(ValueError, match="auto, cpu, gpu, cuda, mps"):
        scoring_device("tpu")


def test_training_pins_memory_only_for_cuda():
    assert not uses_cuda("cpu")
    assert uses_cuda("auto") == CUDA
    assert not pins_memory(torch.device("cpu"))
    assert pins_memory(torch.device("cuda"))


def test_on_device_leaves_non_module_models_as_they_are():
    popularity = build_model("popularity", 5, {})
    assert on_device(popularity, torch.device("cpu")) is popularity


# --- batches ---------------------------------------------------------------------------------------

def test_loaders_pin_memory_only_when_asked(tiny_data):
    assert not ranking_loader(tiny_data.history("test"), None, 4, 8).pin_memory
    assert ranking_loader(tiny_data.history("test"), None, 4, 8, pin_memory=True).pin_memory
    module = SequenceDataModule(tiny_data, 4, 8, 8, seed=0, pin_memory=True)
    assert module.train_dataloader().pin_memory and module.val_dataloader().pin_memory
    assert not SequenceDataModule(tiny_data, 4, 8, 8, seed=0).train_dataloader().pin_memory


@pytest.mark.parametrize("device", DEVICES)
def test_an_eval_batch_moves_every_field(tiny_data, device):
    batch = next(iter(ranking_loader(tiny_data.history("test"), tiny_data.targets("test"), 4, 8)))
    moved = batch.to(torch.device(device))
    for name in batch.__dataclass_fields__:
        assert getattr(moved, name).device.type == device
        assert torch.equal(getattr(moved, name).cpu(), getattr(batch, name))


@needs_cuda
def test_pinned_eval_batches_come_from_page_locked_memory(tiny_data):
    batch = next(iter(ranking_loader(tiny_data.history("test"), tiny_data.targets("test"), 4, 8, pin_memory=True)))
    assert all(getattr(batch, name).is_pinned() for name in batch.__dataclass_fields__)


# --- the same results through the device path ------------------------------------------------------

def reference_ndcg(model, data: SequenceData, max_len: int) -> np.ndarray:
    """NDCG@10 of every test user from one unbatched CPU pass, without the loaders or the device path."""
    users = data.users_with_targets("test")
    histories = data.history("test")
    scores = model.score_all(left_pad([histories[u] for u in users], max_len)).float()
    scores[:, 0] = float("-inf")
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    for row, user in enumerate(users):
        scores[row, torch.as_tensor(histories[user])] = float("-inf")
        relevant[row, torch.as_tensor(data.test[user])] = True
    return compute_metrics(scores, relevant, [10])[("ndcg", 10)].numpy()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["rnn", "sasrec"])
def test_score_users_on_a_device_matches_one_unbatched_cpu_pass(tiny_data, kind, device):
    model = small_model(kind, tiny_data.n_items)
    with torch.inference_mode():
        expected = reference_ndcg(model, tiny_data, max_len=8)
    cfg = EvaluationConfig(ks=[10], batch_size=7, group_attribute=None)
    users, per_user = score_users(model, tiny_data, "test", cfg, max_seq_len=8, device=torch.device(device))
    assert next(model.parameters()).device.type == device  # moved there, not scored on the CPU behind our back
    assert (users == tiny_data.users_with_targets("test")).all()
    np.testing.assert_allclose(per_user["ndcg_at_10"].to_numpy(), expected, atol=1e-6 if device == "cpu" else 1e-4)


@needs_cuda
def test_recommendations_on_cuda_match_the_cpu(tiny_data):
    model = small_model("rnn", tiny_data.n_items)
    on_cpu = recommend_top_k(model, tiny_data, top_k=5, max_seq_len=8, device=torch.device("cpu"))
    on_cuda = recommend_top_k(model, tiny_data, top_k=5, max_seq_len=8, device=torch.device("cuda"))
    assert (on_cpu[0] == on_cuda[0]).all()
    assert (on_cpu[1] == on_cuda[1]).mean() > 0.99  # near-ties may swap between kernels
    np.testing.assert_allclose(on_cpu[2], on_cuda[2], atol=1e-4)


@needs_cuda
def test_candidate_masks_on_cuda_match_the_cpu(tiny_data):
    batch = next(iter(ranking_loader(tiny_data.history("test"), tiny_data.targets("test"), 4, 16)))
    domains = torch.as_tensor(np.r_[-1, np.arange(tiny_data.n_items - 1) % 2])
    cfg = EvaluationConfig(ks=[1], candidates="target_domain", sampled_negatives=3)
    expected = candidate_mask(batch, tiny_data.n_items, domains, cfg)
    assert torch.equal(candidate_mask(batch.to(torch.device("cuda")), tiny_data.n_items, domains, cfg).cpu(), expected)


@needs_cuda
def test_metrics_on_cuda_run_under_deterministic_algorithms():
    # Lightning's deterministic=True turns these on for the whole process; a float cumsum on CUDA then raises.
    scores = torch.tensor([[float("-inf"), 0.9, 0.1, 0.8]]).cuda()
    relevant = torch.tensor([[False, False, True, True]]).cuda()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        values = compute_metrics(scores, relevant, [2])
    finally:
        torch.use_deterministic_algorithms(previous)
    assert values[("recall", 2)].item() == pytest.approx(0.5)


# --- training precision ----------------------------------------------------------------------------

def test_bf16_mixed_precision_trains_on_the_cpu(tiny_data, tmp_path):
    model = small_model("rnn", tiny_data.n_items).train()
    summary = model.fit(tiny_data, TrainConfig(max_epochs=1, accelerator="cpu", precision="bf16-mixed",
                                               progress_bar=False), seed=0, checkpoint_dir=tmp_path)
    assert summary.best_valid_ndcg is not None and 0 <= summary.best_valid_ndcg <= 1
    assert next(model.parameters()).dtype == torch.float32  # weights stay float32 under mixed precision
    with torch.inference_mode():
        batch = next(iter(ranking_loader(tiny_data.history("test"), None, 8, 4)))
        assert rankable_scores(model, batch, exclude_seen=True).dtype == torch.float32


# --- the GPU benchmark script ----------------------------------------------------------------------
