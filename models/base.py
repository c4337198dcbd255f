"""The one interface every recommender answers, and the Lightning module neural models share.

Evaluation and export only ever call `score_all`, so they never ask which model they hold and
always rank the full catalogue.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import Logger
from torch import Tensor, nn

from conf.schema import TrainConfig
from models.data import EvalBatch, SequenceData, SequenceDataModule
from models.device import uses_cuda
from models.metrics import ndcg_at_k

# Training curves get their own namespace so they never mix with the final evaluation metrics.
VALID_METRIC = "curve/valid_ndcg_at_10"
TRAIN_LOSS = "curve/train_loss"


@dataclass(frozen=True)
class FitSummary:
    """What a fit reports: epochs run, best validation NDCG@10 (None without validation), seconds."""

    epochs: int
    best_valid_ndcg: float | None
    seconds: float


class Recommender(Protocol):
    """Every recommender: fit on sequences, score the whole catalogue, save itself."""

    kind: ClassVar[str]
    n_items: int  # counts the padding index 0

    def fit(self, data: SequenceData, train: TrainConfig, seed: int, loggers: Sequence[Logger] = (),
            checkpoint_dir: Path | None = None) -> FitSummary: ...

    def score_all(self, history: Tensor) -> Tensor:
        """Score every item for each user: history [B, T] item_idx -> scores [B, n_items]."""
        ...

    def save(self, path: Path) -> None: ...


def rankable_scores(model: Recommender, batch: EvalBatch, exclude_seen: bool) -> Tensor:
    """[B, n_items] scores with padding (and, if asked, the user's seen items) set to -inf."""
    scores = model.score_all(batch.history).float()
    scores[:, 0] = float("-inf")
    if exclude_seen:
        scores[batch.seen_rows, batch.seen_items] = float("-inf")
    return scores


def save_payload(path: Path, kind: str, hparams: dict[str, Any], state: dict[str, Tensor]) -> None:
    """Write a model file (tensors and plain values only, loadable with weights_only=True), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save({"kind": kind, "hparams": hparams, "state_dict": state}, temporary)
    temporary.replace(path)


class SequentialRecommender(pl.LightningModule):
    """Shared Lightning module: next-item full-softmax training, early stopping on valid NDCG@10.

    Subclasses define `encode(history [B, T]) -> [B, T, H]`, the user's interest after each position
    (causal: position t sees items up to t only), and call `super().__init__` with H.
    """

    kind: ClassVar[str] = ""

    def __init__(self, n_items: int, interest_dim: int, learning_rate: float = 1e-3, weight_decay: float = 0.0,
                 max_seq_len: int = 50, exclude_seen: bool = True):
        super().__init__()
        self.n_items = n_items
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.max_seq_len, self.exclude_seen = max_seq_len, exclude_seen
        self.output = nn.Linear(interest_dim, n_items)

    def encode(self, history: Tensor) -> Tensor:
        raise NotImplementedError

    def item_scores(self, interest: Tensor) -> Tensor:
        """Score every item for interest vectors: [..., H] -> [..., n_items]."""
        return self.output(interest)

    def score_all(self, history: Tensor) -> Tensor:
        """Score every item from the interest at the last position: [B, T] -> [B, n_items]."""
        history = history.to(self.device)
        interest = self.encode(history)[:, -1]  # [B, H]
        scores = self.item_scores(interest)  # [B, n_items]
        scores[:, 0] = float("-inf")  # padding is never recommended
        return scores

    def training_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> Tensor:
        inputs, targets = batch  # [B, T] each
        labelled = targets > 0
        interest = self.encode(inputs)[labelled]  # [M, H]: only positions with a next item
        loss = nn.functional.cross_entropy(self.item_scores(interest), targets[labelled])
        self.log(TRAIN_LOSS, loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=int(labelled.sum()))
        return loss

    def validation_step(self, batch: EvalBatch, batch_index: int) -> None:
        scores = rankable_scores(self, batch, self.exclude_seen)
        relevant = batch.mask(batch.target_rows, batch.target_items, self.n_items)
        ndcg = ndcg_at_k(scores, relevant, k=10)
        self.log(VALID_METRIC, ndcg.mean(), on_epoch=True, prog_bar=True, batch_size=len(ndcg))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, EvalBatch):
            # Asynchronous on CUDA, as Lightning moves tensor batches (the loaders pin memory there).
            return batch.to(device, non_blocking=device.type == "cuda")
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # Set by `fit` from TrainConfig: (factor, patience) of a plateau schedule, or None for a constant rate.
    lr_decay: tuple[float, int] | None = None

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = self.make_optimizer()
        if self.lr_decay is None:
            return optimizer
        factor, patience = self.lr_decay
        # Decay when validation NDCG@10 stalls: a lower rate after the plateau usually finds a
        # better optimum than stopping there (the early-stopping patience should exceed this one).
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=factor, patience=patience)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": VALID_METRIC}}

    def fit(self, data: SequenceData, train: TrainConfig, seed: int, loggers: Sequence[Logger] = (),
            checkpoint_dir: Path | None = None) -> FitSummary:
        """Train with Lightning, stop early on validation NDCG@10, and keep the best epoch's weights."""
        started = time.perf_counter()
        pl.seed_everything(seed, workers=True)
        checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, monitor=VALID_METRIC, mode="max", save_top_k=1,
                                     save_last=True, filename="best-{epoch}")
        trainer = pl.Trainer(
            max_epochs=train.max_epochs,
            max_time={"minutes": train.max_minutes} if train.max_minutes else None,
            accelerator=train.accelerator,
            devices=train.devices, strategy=train.strategy,
            precision=train.precision,
            deterministic=train.deterministic,
            logger=list(loggers) or False,
            callbacks=[EarlyStopping(monitor=VALID_METRIC, mode="max", patience=train.patience), checkpoint],
            enable_progress_bar=train.progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=10,
            default_root_dir=str(checkpoint_dir) if checkpoint_dir else None,
        )
        module = SequenceDataModule(data, self.max_seq_len, train.batch_size, eval_batch_size=512, seed=seed,
                                    pin_memory=uses_cuda(train.accelerator))
        self.lr_decay = (train.lr_decay_factor, train.lr_decay_patience) if train.lr_decay_factor else None
        # A second fit (fine-tuning) starts from the eval mode the first one ended in; Lightning keeps
        # module modes as it finds them, so switch dropout back on here. Frozen parts stay frozen.
        self.train()
        with warnings.catch_warnings():
            # We override transfer_batch_to_device on purpose (EvalBatch); Lightning warns about it.
            warnings.filterwarnings("ignore", message=".*transfer_batch_to_device.*")
            trainer.fit(self, datamodule=module)
        if checkpoint.best_model_path:
            best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
            self.load_state_dict(best["state_dict"])
        best_score = checkpoint.best_model_score
        self.eval()
        return FitSummary(
            epochs=trainer.current_epoch,
            best_valid_ndcg=float(best_score) if best_score is not None else None,
            seconds=time.perf_counter() - started,
        )

    def save(self, path: Path) -> None:
        """Write hyperparameters and weights to one file."""
        save_payload(path, self.kind, dict(self.hparams), {k: v.cpu() for k, v in self.state_dict().items()})
