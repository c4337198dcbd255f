"""Next-item training losses (`train.loss`): full softmax over the catalogue, or losses over sampled negatives.

full: cross-entropy over every item at every labelled position (Klenitskiy & Vasilev, RecSys 2023).
  Exact, and the best choice while the catalogue is small; its cost grows with positions × items
  (a step's logits at 36k items are 50× those at 3.4k), so large catalogues train few epochs.
sampled: sampled softmax. One set of `train.negatives` items is drawn per step and shared by every
  position of the batch (one [M, H] × [H, N] product instead of [M, H] × [H, n_items]), uniformly or
  in proportion to (training count + 1)^alpha. Every negative's logit is reduced by the log of its
  expected count in the draw (the logQ correction: Bengio & Senécal 2008; Blanc & Rendle, ICML 2018;
  Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations", RecSys
  2019); the target's logit is left as it is. A drawn negative equal to the position's own target is
  masked out ("accidental hit"). The negatives' corrected exponentials then sum, in expectation, to
  the full softmax's normaliser over the other items, whatever the proposal: the loss tends to the
  full one as negatives grow (tests/unit/test_losses.py). With `train.in_batch_negatives` the batch's
  targets join the candidates (mixed negative sampling, Yang et al., WWW 2020), each corrected by its
  expected count among all candidates (drawn plus its chance of being one of a batch's targets).
  Negatives are drawn with replacement; a duplicate stays (its expected count counts it twice).
gbce: gSASRec's generalised binary cross-entropy (Petrov & Macdonald, RecSys 2023): the positive's
  sigmoid raised to beta = alpha·(t·(1 − 1/alpha) + 1/alpha), alpha = negatives / (items − 1), against
  uniformly drawn negatives shared by the batch (the paper draws them per user; shared is cheaper).
  t = `train.gbce_t`. Measured, it does not earn a place in the presets: on Food–Kitchen SASRec
  reached validation NDCG@10 0.004 with it against 0.06 with sampled softmax, and on a planted rule it
  learns several times slower (benchmarks/README.md); it stays for comparison.
Evaluation never sees these: it always ranks the full catalogue (or the configured sampled protocol).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from conf.schema import TrainConfig


class ScoresItems(Protocol):
    """What a loss asks of a model: scores against every item, some items, or each position's own target."""

    def item_scores(self, interest: Tensor) -> Tensor: ...  # [M, H] -> [M, n_items]

    def candidate_scores(self, interest: Tensor, items: Tensor) -> Tensor: ...  # [M, H], [C] -> [M, C]

    def target_scores(self, interest: Tensor, items: Tensor) -> Tensor: ...  # [M, H], [M] -> [M]


class FullSoftmax:
    """Cross-entropy over the whole catalogue, or over the items of `candidates` ([n_items] bool) only."""

    def __init__(self, candidates: Tensor | None = None):
        self.candidates = candidates

    def __call__(self, model: ScoresItems, interest: Tensor, targets: Tensor) -> Tensor:
        """Mean loss over positions: interest [M, H], targets [M] item_idx."""
        scores = model.item_scores(interest)
        if self.candidates is not None:
            scores = scores.masked_fill(~self.candidates.to(scores.device), float("-inf"))
        return F.cross_entropy(scores, targets)


class NegativeSampler:
    """Draws negatives shared by a batch, from a fixed proposal over item_idx 1..n_items-1 (never padding)."""

    def __init__(self, proposal: Tensor, negatives: int):
        proposal = proposal.clone()
        proposal[0] = 0  # padding is never a negative
        self.proposal = proposal / proposal.sum()  # [n_items], 0 at padding and at items never to be drawn
        self.support = self.proposal.nonzero().flatten()  # the items that can be drawn
        self.uniform = bool((self.proposal[self.support] == self.proposal[self.support[0]]).all())
        self.negatives = negatives
        self._on: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(proposal, log of each item's expected count in one draw) on `device`, moved once."""
        if device not in self._on:
            proposal = self.proposal.to(device)
            self._on[device] = proposal, torch.log(proposal * self.negatives)
        return self._on[device]

    def draw(self, device: torch.device) -> Tensor:
        """[N] item_idx, drawn with replacement from the torch generator of `device` (seeded, and saved in
        checkpoints, so a resumed fit draws what the uninterrupted one would have)."""
        proposal, _ = self.on(device)
        if self.uniform:  # randint is far cheaper than multinomial over a million items
            if len(self.support) == len(proposal) - 1:  # every item but padding: no index table needed
                return torch.randint(1, len(proposal), (self.negatives,), device=device)
            support = self.support.to(device)
            return support[torch.randint(0, len(support), (self.negatives,), device=device)]
        return torch.multinomial(proposal, self.negatives, replacement=True)


class SampledSoftmax:
    """Softmax over each position's target and the shared negatives, logQ-corrected (see the module docstring)."""

    def __init__(self, sampler: NegativeSampler, target_frequency: Tensor | None):
        """target_frequency: [n_items] share of training labels per item; given, the batch's targets are
        negatives too (in-batch), each corrected by its chance of being among a batch's targets."""
        self.sampler, self.target_frequency = sampler, target_frequency

    def __call__(self, model: ScoresItems, interest: Tensor, targets: Tensor) -> Tensor:
        device = interest.device
        negatives = self.sampler.draw(device)  # [N]
        _, log_expected = self.sampler.on(device)
        candidates, correction = negatives, log_expected[negatives]  # [C], [C]
        if self.target_frequency is not None:
            in_batch = targets.unique()  # [U]
            expected = log_expected.exp() + self.in_batch_chance(len(targets), device)  # [n_items]
            candidates = torch.cat([negatives, in_batch])
            correction = expected[candidates].log()
        positive = model.target_scores(interest, targets).float()  # [M]
        logits = model.candidate_scores(interest, candidates).float() - correction  # [M, C]
        logits = logits.masked_fill(candidates.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        return (torch.logsumexp(torch.cat([positive.unsqueeze(1), logits], dim=1), dim=1) - positive).mean()

    def in_batch_chance(self, positions: int, device: torch.device) -> Tensor:
        """[n_items] chance that an item is among `positions` labels drawn by training frequency."""
        frequency = self.target_frequency.to(device)
        return -torch.expm1(positions * torch.log1p(-frequency.clamp(max=1 - 1e-12)))


class GeneralisedBCE:
    """gSASRec's gBCE against uniform negatives shared by the batch."""

    def __init__(self, sampler: NegativeSampler, calibration: float):
        if not sampler.uniform:
            raise ValueError("train.loss gbce draws its negatives uniformly (train.negative_sampler: uniform)")
        self.sampler = sampler
        alpha = min(1.0, sampler.negatives / max(1, len(sampler.support) - 1))  # negatives per other item
        self.beta = alpha * (calibration * (1 - 1 / alpha) + 1 / alpha)

    def __call__(self, model: ScoresItems, interest: Tensor, targets: Tensor) -> Tensor:
        negatives = self.sampler.draw(interest.device)  # [N]
        positive = model.target_scores(interest, targets).float()  # [M]
        logits = model.candidate_scores(interest, negatives).float()  # [M, N]
        # An accidental hit is no negative: a logit of -inf adds log(1 - sigmoid(-inf)) = 0.
        logits = logits.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        return -(self.beta * F.logsigmoid(positive) + F.logsigmoid(-logits).sum(dim=1)).mean()


NextItemLoss = FullSoftmax | SampledSoftmax | GeneralisedBCE


def item_counts(train: list[np.ndarray], n_items: int) -> Tensor:
    """[n_items] training interactions per item_idx (padding 0 counts none)."""
    items = np.concatenate(train) if train else np.empty(0, np.int64)
    counts = torch.as_tensor(np.bincount(items.astype(np.int64, copy=False), minlength=n_items), dtype=torch.float64)
    counts[0] = 0
    return counts


def build_loss(train: TrainConfig, sequences: list[np.ndarray], n_items: int,
               candidates: np.ndarray | None = None) -> NextItemLoss:
    """The loss `train.loss` names, with its sampler fitted to the training sequences.

    candidates: [n_items] bool, the only items the loss ranks a target among (its targets must be
    among them); None: the whole catalogue. A domain-aware model trains one such loss per domain.
    """
    allowed = None if candidates is None else torch.as_tensor(np.asarray(candidates, dtype=bool))
    if train.loss == "full":
        return FullSoftmax(allowed)
    counts = item_counts(sequences, n_items)
    if allowed is not None:
        counts = counts * allowed
    if train.negative_sampler == "uniform":
        proposal = torch.ones(n_items, dtype=torch.float64)
    else:  # add-one smoothing: an item without training interactions can still be drawn
        proposal = (counts + 1) ** train.popularity_alpha
    proposal[0] = 0
    if allowed is not None:
        proposal = proposal * allowed
        if not proposal.any():
            raise ValueError("the loss's candidate items are empty: there is no item to draw negatives from")
    sampler = NegativeSampler(proposal.float(), train.negatives)
    if train.loss == "gbce":
        return GeneralisedBCE(sampler, train.gbce_t)
    frequency = (counts / counts.sum().clamp(min=1)).float() if train.in_batch_negatives else None
    return SampledSoftmax(sampler, frequency)
