"""Domain-aware SASRec: one causal Transformer over the mixed-domain sequence that knows each item's
domain and predicts the next item of a requested domain.

The cross-domain sequential line (C2DSR: Cao et al., "Contrastive Cross-Domain Sequential
Recommendation", CIKM 2022; Tri-CDR: Ma et al., "Triple Sequence Learning for Cross-domain
Recommendation", TOIS 2024; LLMCDSR) trains on users' merged sequences and asks, at every position,
what the user will take next *in each domain*: a food-only stretch of a history still teaches the
model which kitchen item comes next. A pooled SASRec only learns the kitchen ranking at the
positions whose very next item is a kitchen item, and nothing in it knows which domain an item
belongs to or which domain a recommendation is asked for.

What this model adds to SASRec (models/attention.py), and nothing else:
- Each position's input adds a learned embedding of its item's domain (role code: other, source,
  target; `attach_item_domains`).
- A shared interest h (the Transformer's output) and a per-domain interest h + W_d·h (W_d starts at
  zero, so every domain starts from the shared interest). Items of domain d are scored with the
  domain-d interest; `score_all` scores each item with its own domain's interest, so a ranking
  restricted to one domain (the cross-domain protocols' candidates) is that domain's ranking.
- Training: at every position and for every domain d, the target is the next item of domain d in the
  rest of the window (when there is one), ranked among domain d's items only (`train.loss` per
  domain: full softmax restricted to the domain, or sampled negatives drawn from it). Losses are
  averaged over all (position, domain) targets. With `lookahead: false` the only target of a
  position is its very next item (as SASRec), still ranked within that item's domain.
- A user with source-domain items only (a cold-start user) is scored from them alone: the target
  interest after a source-only history is exactly what the per-domain targets train.
Departures from C2DSR: one shared encoder instead of its graph encoder plus three sequence encoders
(mixed, X-only, Y-only), and no contrastive infomax term (not measured yet).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from conf.schema import DomainSASRecConfig, TrainConfig
from models.attention import SASREC, TRAIN, SASRecRecommender
from models.data import EvalBatch
from models.explain import ScoreEvidence
from models.losses import NextItemLoss, build_loss

N_DOMAINS = 3  # role codes of models.transfer_data: OTHER (and padding), SOURCE, TARGET


def next_in_domain(targets: Tensor, in_domain: Tensor) -> Tensor:
    """[B, T] the first item at or after each position of `targets` whose `in_domain` flag is set (0: none).

    targets[b, t] is the item that follows input position t, so the result is the next item of the
    domain after position t within the window.
    """
    length = targets.shape[1]
    index = torch.arange(length, device=targets.device).expand_as(targets)
    found_at = torch.where(in_domain, index, length)  # [B, T]; length: not here
    first_from = found_at.flip(1).cummin(dim=1).values.flip(1)  # [B, T] first flagged index >= t
    return nn.functional.pad(targets, (0, 1)).gather(1, first_from)


def within_target_domain(scores: Tensor, batch: EvalBatch, item_domain: Tensor) -> Tensor:
    """`scores` with the items outside the domain of each row's target item set to -inf (rows without one kept)."""
    row_domain = torch.full((scores.shape[0],), -1, dtype=torch.long, device=scores.device)
    row_domain[batch.target_rows] = item_domain[batch.target_items]
    outside = (item_domain.unsqueeze(0) != row_domain.unsqueeze(1)) & (row_domain >= 0).unsqueeze(1)
    return scores.masked_fill(outside, float("-inf"))


class DomainSASRecRecommender(SASRecRecommender):
    """SASRec over the mixed-domain sequence with domain embeddings and a per-domain interest."""

    kind = "domain_sasrec"

    def __init__(self, n_items: int, embedding_dim: int = SASREC.embedding_dim, num_blocks: int = SASREC.num_blocks,
                 num_heads: int = SASREC.num_heads, dropout: float = SASREC.dropout,
                 tie_output: bool = SASREC.tie_output, learning_rate: float = TRAIN.learning_rate,
                 weight_decay: float = TRAIN.weight_decay, max_seq_len: int = TRAIN.max_seq_len,
                 exclude_seen: bool = True, lookahead: bool = DomainSASRecConfig().lookahead,
                 item_text: bool = SASREC.item_text, text_dim: int | None = None):
        super().__init__(n_items, embedding_dim, num_blocks, num_heads, dropout, tie_output, learning_rate,
                         weight_decay, max_seq_len, exclude_seen, item_text, text_dim)
        self.save_hyperparameters()
        self.lookahead = lookahead
        # Domain (role code) of every item_idx, padding 0; a buffer, so a loaded model scores without the data.
        self.register_buffer("item_domain", torch.zeros(n_items, dtype=torch.long))
        self.domain_embedding = nn.Embedding(N_DOMAINS, embedding_dim)
        nn.init.normal_(self.domain_embedding.weight, std=0.02)
        self.domain_interest_maps = nn.ModuleList(nn.Linear(embedding_dim, embedding_dim) for _ in range(N_DOMAINS))
        for layer in self.domain_interest_maps:  # each domain starts from the shared interest
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.domain_losses: dict[int, NextItemLoss] = {}

    def attach_item_domains(self, domains: Tensor | np.ndarray) -> None:
        """Set the domain (role code 0..2) of every item: [n_items], index 0 for padding."""
        domains = torch.as_tensor(np.asarray(domains), dtype=torch.long)
        if domains.shape != self.item_domain.shape:
            raise ValueError(f"item domains have shape {tuple(domains.shape)}, expected {tuple(self.item_domain.shape)}")
        if len(domains) and (domains.min() < 0 or domains.max() >= N_DOMAINS):
            raise ValueError(f"item domains must be role codes 0..{N_DOMAINS - 1}, got {domains.unique().tolist()}")
        self.item_domain.copy_(domains)

    def embed_inputs(self, history: Tensor) -> Tensor:
        present = (history > 0).unsqueeze(-1)
        return super().embed_inputs(history) + self.domain_embedding(self.item_domain[history]) * present

    def domain_interest(self, interest: Tensor, domain: int) -> Tensor:
        """[..., D] shared interest -> the interest that scores domain `domain`'s items."""
        return interest + self.domain_interest_maps[domain](interest)

    def domain_items(self, domain: int) -> Tensor:
        """item_idx of the items of `domain` (never padding)."""
        items = (self.item_domain == domain).nonzero().flatten()
        return items[items > 0]

    def score_all(self, history: Tensor) -> Tensor:
        """Every item scored with its own domain's interest at the last position: [B, T] -> [B, n_items]."""
        history = history.to(self.device)
        interest = self.encode(history)[:, -1]  # [B, D]
        scores = torch.full((history.shape[0], self.n_items), float("-inf"), device=self.device,
                            dtype=interest.dtype)
        for domain in range(N_DOMAINS):
            items = self.domain_items(domain)
            if len(items):
                scores[:, items] = self.candidate_scores(self.domain_interest(interest, domain), items).to(scores.dtype)
        return scores

    def evidence(self) -> ScoreEvidence:
        """Each domain has its own interest, so there is no single linear head: the definition, from score_all."""
        return ScoreEvidence(self)

    def validation_ranking(self, scores: Tensor, batch: EvalBatch) -> Tensor:
        """Scores ranked within the domain of each user's target item.

        Each domain's items are scored with that domain's own interest, so scores of different domains are
        on separate scales and a ranking across domains measures nothing the cross-domain protocols ask
        (they rank among the target's domain): early stopping and the hybrid's blend look at that ranking.
        """
        return within_target_domain(scores, batch, self.item_domain)

    def configure_loss(self, train: TrainConfig, sequences: list) -> None:
        """One loss per domain with items, each ranking among its own domain's items only."""
        domains = self.item_domain.cpu().numpy()
        self.domain_losses = {
            domain: build_loss(train, sequences, self.n_items, candidates=(domains == domain) & (np.arange(self.n_items) > 0))
            for domain in range(N_DOMAINS) if ((domains == domain)[1:]).any()
        }

    def next_item_training_loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
        """The mean over every (position, domain) pair with a next item of that domain in the window."""
        inputs, targets = batch  # [B, T] each; target 0: no next item
        interest = self.encode(inputs)  # [B, T, D]
        target_domains = self.item_domain[targets]  # [B, T]
        total, count = interest.new_zeros((), dtype=torch.float32), 0
        for domain, loss in self.domain_losses.items():
            in_domain = (targets > 0) & (target_domains == domain)
            upcoming = next_in_domain(targets, in_domain) if self.lookahead else targets * in_domain
            labelled = (upcoming > 0) & (inputs > 0)
            positions = int(labelled.sum())
            if positions == 0:
                continue
            domain_loss = loss(self, self.domain_interest(interest[labelled], domain), upcoming[labelled])
            total, count = total + domain_loss.float() * positions, count + positions
        return total / max(count, 1), count
