"""Training losses (models/losses.py): sampled softmax tends to the full one, accidental hits never count as
negatives, gBCE's beta, candidate scores agree with full scores, and every loss trains a real fit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch.nn import functional as F

from conf.schema import TrainConfig
from models.data import SequenceData
from models.losses import FullSoftmax, GeneralisedBCE, NegativeSampler, SampledSoftmax, build_loss
from models.kinds import build_model

N_ITEMS = 30  # item_idx 1..29, 0 is padding


def gru(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("rnn", N_ITEMS, {"embedding_dim": 8, "hidden_dim": 16}).eval()


def positions(model, count: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(interest [M, H], targets [M]) of random positions, with large enough scores to matter."""
    generator = torch.Generator().manual_seed(seed)
    interest = 3 * torch.randn(count, model.output.in_features, generator=generator)
    targets = torch.randint(1, N_ITEMS, (count,), generator=generator)
    return interest, targets


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("in_batch", [False, True])
def test_sampled_softmax_tends_to_the_full_softmax_as_negatives_grow(alpha, in_batch):
    model = gru()
    interest, targets = positions(model)
    sequences = [np.random.default_rng(0).zipf(1.5, 200) % (N_ITEMS - 1) + 1]  # a skewed popularity
    train = TrainConfig(loss="sampled", negatives=400_000, negative_sampler="popularity",
                        popularity_alpha=alpha, in_batch_negatives=in_batch)
    loss = build_loss(train, sequences, N_ITEMS)
    torch.manual_seed(0)
    with torch.no_grad():
        sampled = loss(model, interest, targets).item()
        scores = model.item_scores(interest)
        scores[:, 0] = float("-inf")  # padding is never drawn; the full softmax's padding column does not count
        full = F.cross_entropy(scores, targets).item()
    assert sampled == pytest.approx(full, rel=0.005)


def test_sampled_softmax_with_few_negatives_is_far_from_exact_but_finite():
    model = gru()
    interest, targets = positions(model)
    loss = build_loss(TrainConfig(loss="sampled", negatives=2), [np.arange(1, N_ITEMS)], N_ITEMS)
    with torch.no_grad():
        value = loss(model, interest, targets)
    assert torch.isfinite(value) and value >= 0


def test_a_drawn_negative_equal_to_the_target_is_no_negative():
    model = gru()
    interest, _ = positions(model, count=1)
    target = torch.tensor([7])
    only_the_target = torch.zeros(N_ITEMS)
    only_the_target[7] = 1.0
    loss = SampledSoftmax(NegativeSampler(only_the_target, negatives=5), target_frequency=None)
    with torch.no_grad():
        assert loss(model, interest, target).item() == pytest.approx(0.0)  # the target alone: log 1
        bce = GeneralisedBCE(NegativeSampler(torch.ones(N_ITEMS), negatives=5), calibration=0.0)
        bce.sampler.draw = lambda device: torch.full((5,), 7)
        # Only the positive term is left: -log sigmoid(s_target).
        expected = -F.logsigmoid(model.target_scores(interest, target)).item()
        assert bce(model, interest, target).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("t", "beta"), [(0.0, 1.0), (1.0, 4 / 28), (0.5, 0.5 * (4 / 28) + 0.5)])
def test_gbce_beta_runs_from_plain_bce_at_t0_to_the_sampling_rate_at_t1(t, beta):
    loss = GeneralisedBCE(NegativeSampler(torch.ones(N_ITEMS), negatives=4), calibration=t)
    assert loss.beta == pytest.approx(beta)  # alpha = 4 negatives / 28 items other than the target


def test_gbce_matches_its_formula_on_fixed_negatives():
    model = gru()
    interest, targets = positions(model, count=3)
    negatives = torch.tensor([2, 9, 14, 20])
    loss = GeneralisedBCE(NegativeSampler(torch.ones(N_ITEMS), negatives=4), calibration=0.75)
    loss.sampler.draw = lambda device: negatives
    scores = model.item_scores(interest)
    hit = negatives.unsqueeze(0) == targets.unsqueeze(1)
    expected = -(loss.beta * F.logsigmoid(scores.gather(1, targets[:, None]).squeeze(1))
                 + (F.logsigmoid(-scores[:, negatives]) * ~hit).sum(1)).mean()
    with torch.no_grad():
        assert loss(model, interest, targets).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gbce_with_a_popularity_sampler_is_refused_at_load_time():
    with pytest.raises(ValidationError, match="negative_sampler: uniform"):
        TrainConfig(loss="gbce", negative_sampler="popularity")


@pytest.mark.parametrize("kind", ["rnn", "cnn", "sasrec", "bert_transfer"])
def test_candidate_and_target_scores_agree_with_the_full_scores(kind):
    options = {"bert_transfer": {"init": "scratch", "hidden_dim": 16, "text_dim": 8}}.get(kind, {"embedding_dim": 16})
    torch.manual_seed(0)
    model = build_model(kind, N_ITEMS, options).eval()
    if kind == "bert_transfer":
        model.attach_item_text(torch.randn(N_ITEMS, 8))
    interest = torch.randn(5, model.encode(torch.tensor([[1, 2]])).shape[-1])
    items = torch.tensor([3, 1, 29, 3])
    targets = torch.tensor([4, 4, 17, 2, 9])
    with torch.no_grad():
        full = model.item_scores(interest)
        assert torch.allclose(model.candidate_scores(interest, items), full[:, items], atol=1e-5)
        assert torch.allclose(model.target_scores(interest, targets), full[torch.arange(5), targets], atol=1e-5)


def successor_data() -> SequenceData:
    """Users walking the catalogue in steps of one (item i is always followed by i + 1): a planted rule
    that any working loss learns, where popularity (every item equally frequent) cannot."""
    rng = np.random.default_rng(0)
    walks = [(start + np.arange(12)) % (N_ITEMS - 1) + 1 for start in rng.integers(0, N_ITEMS - 1, 60)]
    return SequenceData(N_ITEMS, [w[:-2] for w in walks], [w[-2:-1] for w in walks], [w[-1:] for w in walks])


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_softmax_losses_learn_a_planted_successor_rule(loss, tmp_path):
    data = successor_data()
    model = build_model("rnn", N_ITEMS, {"embedding_dim": 16, "hidden_dim": 32, "max_seq_len": 10})
    train = TrainConfig(max_epochs=15, patience=15, progress_bar=False, batch_size=16, accelerator="cpu",
                        learning_rate=0.01, loss=loss, negatives=8)
    summary = model.fit(data, train, seed=0, checkpoint_dir=tmp_path)
    assert summary.best_valid_ndcg > 0.8  # popularity: about 1/29 of the users hit at rank 1..10 by chance


def test_the_same_seed_draws_the_same_negatives_so_fits_repeat(tiny_data, tmp_path):
    train = TrainConfig(max_epochs=2, progress_bar=False, batch_size=16, accelerator="cpu", loss="sampled",
                        negatives=8, negative_sampler="popularity", in_batch_negatives=True)
    weights = []
    for attempt in range(2):
        torch.manual_seed(0)
        model = build_model("rnn", tiny_data.n_items, {"embedding_dim": 8, "hidden_dim": 16, "max_seq_len": 10})
        torch.manual_seed(100 + attempt)  # whatever ran before the fit must not change its draws
        model.fit(tiny_data, train, seed=3, checkpoint_dir=tmp_path / str(attempt))
        weights.append(model.output.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_gbce_loss_falls_when_overfitting_one_batch():
    model = build_model("rnn", N_ITEMS, {"embedding_dim": 16, "hidden_dim": 32, "dropout": 0.0})
    model.next_item_loss = build_loss(TrainConfig(loss="gbce", negatives=8), [np.arange(1, N_ITEMS)], N_ITEMS)
    sequences = torch.as_tensor(np.stack([np.random.default_rng(row).integers(1, N_ITEMS, 9) for row in range(8)]))
    inputs, targets = sequences[:, :-1], sequences[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    torch.manual_seed(0)
    for _ in range(60):
        optimizer.zero_grad()
        loss = model.next_item_loss(model, model.encode(inputs).flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


DOMAIN = np.arange(N_ITEMS) % 2 == 1  # odd items: one domain's candidates (padding never)


@pytest.mark.parametrize("in_batch", [False, True])
def test_a_loss_restricted_to_candidates_tends_to_the_softmax_over_them_only(in_batch):
    model = gru()
    interest, _ = positions(model)
    targets = torch.tensor([1, 3, 5, 7, 9, 11])  # all among the candidates
    train = TrainConfig(loss="sampled", negatives=400_000, negative_sampler="popularity", in_batch_negatives=in_batch)
    sampled = build_loss(train, [np.arange(1, N_ITEMS)], N_ITEMS, candidates=DOMAIN)
    full = build_loss(TrainConfig(loss="full"), [np.arange(1, N_ITEMS)], N_ITEMS, candidates=DOMAIN)
    torch.manual_seed(0)
    with torch.no_grad():
        scores = model.item_scores(interest)
        expected = F.cross_entropy(scores[:, DOMAIN], torch.as_tensor(np.searchsorted(np.flatnonzero(DOMAIN), targets)))
        assert full(model, interest, targets).item() == pytest.approx(expected.item(), rel=1e-5)
        assert sampled(model, interest, targets).item() == pytest.approx(expected.item(), rel=0.005)


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_negatives_are_drawn_from_the_candidates_only(sampler):
    loss = build_loss(TrainConfig(loss="sampled", negatives=5000, negative_sampler=sampler),
                      [np.arange(1, N_ITEMS)], N_ITEMS, candidates=DOMAIN)
    drawn = loss.sampler.draw(torch.device("cpu"))
    assert DOMAIN[drawn.numpy()].all()
    assert set(drawn.tolist()) == set(np.flatnonzero(DOMAIN).tolist())  # and every candidate can be drawn


def test_a_loss_without_any_candidate_is_refused():
    with pytest.raises(ValueError, match="candidate items are empty"):
        build_loss(TrainConfig(loss="sampled"), [np.arange(1, N_ITEMS)], N_ITEMS, candidates=np.zeros(N_ITEMS, bool))
