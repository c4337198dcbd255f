"""Cold-start mapping models: a user with no target-domain history is scored in the target domain
from their source-domain history.

EMCDR: Man et al., "Cross-Domain Recommendation: An Embedding and Mapping Approach", IJCAI 2017.
PTUPCDR: Zhu et al., "Personalized Transfer of User Preferences for Cross-domain Recommendation",
WSDM 2022.
Both learn user interests in each domain separately, then a mapping from source to target
interests on the users with training data in both domains (overlap users). Departures, shared:
- Interests come from a sequential extractor per domain (GRU, Caser or SASRec: its state after the
  user's last item) instead of matrix-factorisation user factors, so a cold user needs no user id.
- Overlap users are whatever the scenario's views let train: cold-start users have empty training
  lists there, so they can never reach the mapping.
PTUPCDR only:
- The personalised bridge is low rank (A_u B_u, rank BRIDGE_RANK) instead of a full H_s×H_t matrix,
  keeping the meta network's output at r·(H_s + H_t) values per user.
- The task-oriented loss is full-softmax cross-entropy of the user's target training items over the
  target-domain catalogue (implicit feedback), where the paper regresses ratings.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping
from pytorch_lightning.loggers import Logger
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from conf.schema import TrainConfig
from models.attention import SASRecRecommender
from models.base import (FitSummary, SequentialRecommender, StopOnRequest, neural_options, save_payload,
                         section_options)
from models.data import SequenceData, left_pad
from models.device import training_precision
from models.explain import InterestEvidence
from models.extractors import CaserRecommender, GRURecommender
from models.transfer_data import SOURCE, TARGET, TransferViews

EXTRACTORS: dict[str, type[SequentialRecommender]] = {
    "rnn": GRURecommender, "cnn": CaserRecommender, "sasrec": SASRecRecommender,
}
HOLDOUT_FRACTION = 0.1  # of the overlap users, held out for early stopping
BRIDGE_RANK = 8
TRAIN_LOSS = "curve/mapping_train_loss"
VALID_LOSS = "curve/mapping_valid_loss"

# One mapping training batch: (source history [B, T], target history [B, T], all target items [B, L]),
# histories left-padded to the extractors' max_seq_len, target items left-padded to the batch's longest.
MappingBatch = tuple[Tensor, Tensor, Tensor]


def overlap_users(views: TransferViews) -> np.ndarray:
    """Positions with both source- and target-domain training items. Only real users count: the
    target view may append training-only copies after them."""
    source, target = views.source.train, views.target.train
    return np.array([u for u in range(len(source)) if len(source[u]) and len(target[u])], dtype=np.int64)


class MappingRecommender(nn.Module):
    """Two frozen extractors (source, target) and a learnt mapping from source to target interest.

    Subclasses define `map_interest` and `mapping_loss`.
    """

    kind: ClassVar[str] = ""

    @classmethod
    def options_from(cls, section: Any, train: TrainConfig, exclude_seen: bool, text_dim: int | None = None,
                     text_model_path: str | None = None) -> dict[str, Any]:
        """The extractors' options (with their kind), the mapping's size, and its own training loop's settings."""
        return {"extractor": section_options(section.extractor, keep_kind=True) | neural_options(train, exclude_seen),
                "mapping_hidden": section.mapping_hidden, "learning_rate": train.learning_rate,
                "max_epochs": train.max_epochs, "patience": train.patience}

    def __init__(self, n_items: int, extractor: dict[str, Any], mapping_hidden: int = 128,
                 learning_rate: float = 1e-3, max_epochs: int = 50, patience: int = 5):
        """extractor: {"kind": "rnn" | "cnn" | "sasrec", **that extractor's constructor options}."""
        super().__init__()
        options = dict(extractor)
        kind = options.pop("kind", None)
        if kind not in EXTRACTORS:
            raise ValueError(f"mapping extractor kind '{kind}' is unknown; known kinds: {sorted(EXTRACTORS)}")
        self.n_items, self.extractor_options = n_items, dict(extractor)
        self.mapping_hidden, self.learning_rate = mapping_hidden, learning_rate
        self.max_epochs, self.patience = max_epochs, patience
        self.source_extractor = EXTRACTORS[kind](n_items=n_items, **options)
        self.target_extractor = EXTRACTORS[kind](n_items=n_items, **options)
        self.max_seq_len = self.source_extractor.max_seq_len
        self.source_dim = self.source_extractor.output.in_features  # H_s
        self.target_dim = self.target_extractor.output.in_features  # H_t
        self.register_buffer("item_role", torch.zeros(n_items, dtype=torch.int8))  # set by fit_views
        self.fitted_users = np.empty(0, np.int64)  # overlap users the mapping learnt from (and stopped on)

    def map_interest(self, source_history: Tensor, source_interest: Tensor) -> Tensor:
        """Target-domain interest of each user: ([B, T], [B, H_s]) -> [B, H_t]."""
        raise NotImplementedError

    def mapping_loss(self, source_history: Tensor, target_history: Tensor, target_items: Tensor) -> Tensor:
        """The mapping's training loss on one MappingBatch."""
        raise NotImplementedError

    def source_interest(self, source_history: Tensor) -> Tensor:
        """The source extractor's interest after the last item: [B, T] -> [B, H_s]."""
        return self.source_extractor.encode(source_history)[:, -1]

    def mapped_interest(self, source_history: Tensor) -> Tensor:
        """[B, T] source-domain history -> [B, H_t] mapped target interest."""
        return self.map_interest(source_history, self.source_interest(source_history))

    def source_history(self, history: Tensor) -> Tensor:
        """The source-domain items of each history, re-left-aligned, last max_seq_len: [B, T] -> [B, max_seq_len]."""
        kept = self.item_role[history] == SOURCE  # [B, T]
        # Stable sort on the kept flag moves dropped positions left and kept items right, in time order.
        order = torch.argsort(kept.int(), dim=1, stable=True)  # [B, T]
        aligned = (history * kept).gather(1, order)  # [B, T]
        # Always exactly max_seq_len wide, as in training: leading padding changes a GRU's state.
        aligned = F.pad(aligned, (max(0, self.max_seq_len - aligned.shape[1]), 0))
        return aligned[:, -self.max_seq_len:]

    def score_all(self, history: Tensor) -> Tensor:
        """Target-domain scores from the source-domain part of each history: [B, T] -> [B, n_items]."""
        history = history.to(self.item_role.device)
        scores = self.target_extractor.item_scores(self.mapped_interest(self.source_history(history)))
        scores[:, 0] = float("-inf")  # padding is never recommended
        return scores

    def evidence(self) -> InterestEvidence:
        """The target head over the mapped interest of the one-source-item history; only source items are read."""
        return InterestEvidence(self.n_items, lambda history: self.mapped_interest(self.source_history(history)),
                                lambda: self.target_extractor.output.weight, lambda: self.item_role == SOURCE)

    def fit(self, data: SequenceData, train: TrainConfig | None = None, seed: int = 0,
            loggers: Sequence[Logger] = (), checkpoint_dir: Path | None = None) -> FitSummary:
        """Refuse: a mapping needs both domains' views and the item roles, which plain sequences lack."""
        raise TypeError(f"{self.kind}: mapping models train on a transfer scenario's views "
                        "(scenario.partition: item_domain); use fit_views")

    def fit_views(self, views: TransferViews, train: TrainConfig, seed: int, loggers: Sequence[Logger] = (),
                  checkpoint_dir: Path | None = None) -> FitSummary:
        """Fit the source and target extractors on their views, freeze them, then fit the mapping on the
        overlap users. Returns the epochs of all three stages together, best_valid_ndcg None (the
        mapping stops on its held-out loss, not a ranking metric)."""
        started = time.perf_counter()
        if len(views.item_role) != self.n_items:
            raise ValueError(f"views.item_role has {len(views.item_role)} entries; this model has {self.n_items} items")
        self.item_role.copy_(torch.as_tensor(views.item_role, dtype=torch.int8))
        epochs = 0
        for name, extractor, data in (("source", self.source_extractor, views.source),
                                      ("target", self.target_extractor, views.target)):
            pl.seed_everything(seed, workers=True)
            summary = extractor.fit(data, train, seed, loggers, checkpoint_dir / name if checkpoint_dir else None)
            extractor.requires_grad_(False).eval()
            epochs += summary.epochs

        users = overlap_users(views)
        if len(users) < 2:
            raise ValueError(f"{self.kind}: {len(users)} users have training items in both domains; "
                             "the mapping needs at least 2 (one to learn from, one to stop on)")
        self.fitted_users = users
        held_out = np.random.default_rng(seed).permutation(users)[:max(1, round(HOLDOUT_FRACTION * len(users)))]
        learn_from = np.setdiff1d(users, held_out)

        def loader(positions: np.ndarray, shuffle: bool) -> DataLoader:
            return DataLoader(positions.tolist(), batch_size=train.batch_size, shuffle=shuffle,
                              generator=torch.Generator().manual_seed(seed), collate_fn=collate)

        def collate(batch_users: list[int]) -> MappingBatch:
            source = [views.source.train[u] for u in batch_users]
            target = [views.target.train[u] for u in batch_users]
            return (left_pad(source, self.max_seq_len), left_pad(target, self.max_seq_len),
                    left_pad(target, max(len(t) for t in target)))

        pl.seed_everything(seed, workers=True)
        best = _KeepBest()
        trainer = pl.Trainer(
            max_epochs=self.max_epochs,
            max_time={"minutes": train.max_minutes} if train.max_minutes else None,
            accelerator=train.accelerator, devices=train.devices, strategy=train.strategy,
            precision=training_precision(train.precision, train.accelerator),
            deterministic=train.deterministic, logger=list(loggers) or False,
            callbacks=[EarlyStopping(monitor=VALID_LOSS, mode="min", patience=self.patience), best,
                       StopOnRequest(f"training the {self.kind} mapping")],
            enable_checkpointing=False, enable_progress_bar=train.progress_bar, enable_model_summary=False,
            num_sanity_val_steps=0, log_every_n_steps=10,
            default_root_dir=str(checkpoint_dir / "mapping") if checkpoint_dir else None,
        )
        with warnings.catch_warnings():
            # The frozen extractors are in eval mode on purpose; Lightning warns about it.
            warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
            trainer.fit(_MappingTraining(self), loader(learn_from, shuffle=True), loader(held_out, shuffle=False))
        if best.state is not None:
            self.load_state_dict(best.state, strict=False)
        self.eval()
        return FitSummary(epochs=epochs + trainer.current_epoch, best_valid_ndcg=None,
                          seconds=time.perf_counter() - started)

    def save(self, path: Path) -> None:
        """Write hyperparameters, extractors, item roles and mapping weights to one file."""
        hparams = {"n_items": self.n_items, "extractor": dict(self.extractor_options),
                   "mapping_hidden": self.mapping_hidden, "learning_rate": self.learning_rate,
                   "max_epochs": self.max_epochs, "patience": self.patience}
        save_payload(path, self.kind, hparams, {k: v.cpu() for k, v in self.state_dict().items()})


class _MappingTraining(pl.LightningModule):
    """Lightning runs the mapping's loop (batches, devices, early stopping, logging); this module only
    says what one step computes. The extractors stay frozen and in eval mode (no dropout) throughout."""

    def __init__(self, model: MappingRecommender):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> _MappingTraining:
        super().train(mode)
        self.model.source_extractor.eval()
        self.model.target_extractor.eval()
        return self

    def training_step(self, batch: MappingBatch, batch_index: int) -> Tensor:
        loss = self.model.mapping_loss(*batch)
        self.log(TRAIN_LOSS, loss, on_step=False, on_epoch=True, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch: MappingBatch, batch_index: int) -> None:
        self.log(VALID_LOSS, self.model.mapping_loss(*batch), on_epoch=True, batch_size=batch[0].shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(trainable, lr=self.model.learning_rate)


class _KeepBest(Callback):
    """Keeps the trainable weights of the epoch with the lowest held-out loss (in memory: they are small)."""

    def __init__(self):
        self.loss, self.state = math.inf, None

    def on_validation_end(self, trainer: pl.Trainer, module: _MappingTraining) -> None:
        loss = float(trainer.callback_metrics[VALID_LOSS])
        if loss < self.loss:
            self.loss = loss
            self.state = {n: p.detach().cpu().clone() for n, p in module.model.named_parameters() if p.requires_grad}


class EMCDRRecommender(MappingRecommender):
    """EMCDR: one MLP, shared by all users, regresses the target interest on the source interest."""

    kind = "emcdr"

    def __init__(self, n_items: int, extractor: dict[str, Any], mapping_hidden: int = 128,
                 learning_rate: float = 1e-3, max_epochs: int = 50, patience: int = 5):
        super().__init__(n_items, extractor, mapping_hidden, learning_rate, max_epochs, patience)
        self.mapping = nn.Sequential(nn.Linear(self.source_dim, mapping_hidden), nn.Tanh(),
                                     nn.Linear(mapping_hidden, self.target_dim))

    def map_interest(self, source_history: Tensor, source_interest: Tensor) -> Tensor:
        return self.mapping(source_interest)  # [B, H_t]

    def mapping_loss(self, source_history: Tensor, target_history: Tensor, target_items: Tensor) -> Tensor:
        """Mean squared error to the target extractor's interest after the user's last target item."""
        target_interest = self.target_extractor.encode(target_history)[:, -1]  # [B, H_t]
        return F.mse_loss(self.mapped_interest(source_history), target_interest)


class PTUPCDRRecommender(MappingRecommender):
    """PTUPCDR: a meta network turns the user's source items into a personal bridge W_u = A_u B_u."""

    kind = "ptupcdr"

    def __init__(self, n_items: int, extractor: dict[str, Any], mapping_hidden: int = 128,
                 learning_rate: float = 1e-3, max_epochs: int = 50, patience: int = 5):
        super().__init__(n_items, extractor, mapping_hidden, learning_rate, max_epochs, patience)
        embedding_dim = self.source_extractor.item_embedding.embedding_dim  # E
        # Characteristic encoder: attention pooling of the source items' (frozen) embeddings.
        self.item_attention = nn.Sequential(nn.Linear(embedding_dim, mapping_hidden), nn.Tanh(),
                                            nn.Linear(mapping_hidden, 1))
        self.meta = nn.Sequential(nn.Linear(embedding_dim, mapping_hidden), nn.ReLU(),
                                  nn.Linear(mapping_hidden, BRIDGE_RANK * (self.source_dim + self.target_dim)))

    def map_interest(self, source_history: Tensor, source_interest: Tensor) -> Tensor:
        embedded = self.source_extractor.item_embedding(source_history)  # [B, T, E]
        present = (source_history > 0).unsqueeze(-1)  # [B, T, 1]
        # A finite fill (not -inf) keeps an all-padding row defined: its weights are then zeroed by `present`.
        logits = self.item_attention(embedded).masked_fill(~present, torch.finfo(embedded.dtype).min)
        characteristic = (logits.softmax(dim=1) * present * embedded).sum(dim=1)  # [B, E]
        bridge = self.meta(characteristic)  # [B, r·(H_s + H_t)]
        split = BRIDGE_RANK * self.source_dim
        a = bridge[:, :split].view(-1, self.source_dim, BRIDGE_RANK)  # [B, H_s, r]
        b = bridge[:, split:].view(-1, BRIDGE_RANK, self.target_dim)  # [B, r, H_t]
        return (source_interest.unsqueeze(1) @ a @ b).squeeze(1)  # [B, H_t]

    def mapping_loss(self, source_history: Tensor, target_history: Tensor, target_items: Tensor) -> Tensor:
        """Cross-entropy of every target training item of the user, over the target-domain items only."""
        scores = self.target_extractor.item_scores(self.mapped_interest(source_history))  # [B, n_items]
        scores = scores.masked_fill(self.item_role != TARGET, float("-inf"))
        log_probs = scores.log_softmax(dim=1)  # [B, n_items]
        labelled = target_items > 0  # [B, L]
        return -log_probs.gather(1, target_items)[labelled].mean()
