"""The one interface every recommender answers, and the Lightning module neural models share.

Evaluation and export only ever call `score_all`, so they never ask which model they hold and
always rank the full catalogue.
"""
from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import Logger
from torch import Tensor, nn

from conf.schema import TrainConfig
from models.checkpoints import (LAST_CHECKPOINT, PLATEAU_PENDING, UNREADABLE, ResumableDataModule, clear_checkpoints,
                                fit_signature, read_fit_state, resumable_checkpoint, write_fit_state)
from models.data import EvalBatch, SequenceData
from models.device import training_precision, uses_cuda
from models.explain import Evidence, InterestEvidence
from models.losses import FullSoftmax, NextItemLoss, build_loss
from models.metrics import ndcg_at_k
from models.stopping import check_stop

log = logging.getLogger(__name__)

# Training curves get their own namespace so they never mix with the final evaluation metrics.
VALID_METRIC = "curve/valid_ndcg_at_10"
TRAIN_LOSS = "curve/train_loss"  # per epoch; per step under TRAIN_LOSS_STEP
TRAIN_LOSS_STEP = "curve/train_loss_step"


# Settings a model section may set for itself (NeuralModelSection): they go to its TrainConfig, not its constructor.
OWN_TRAINING_SETTINGS = ("max_minutes", "l2sp", "augment_copies")
NOT_CONSTRUCTOR_OPTIONS = frozenset({"kind", "name", "train_on", *OWN_TRAINING_SETTINGS})


def section_options(section: Any, keep_kind: bool = False) -> dict[str, Any]:
    """A model section's own constructor options (a nested extractor keeps its kind)."""
    return section.model_dump(exclude=NOT_CONSTRUCTOR_OPTIONS - ({"kind"} if keep_kind else set()))


def neural_options(train: TrainConfig, exclude_seen: bool) -> dict[str, Any]:
    """The training settings a neural model's constructor takes."""
    return {"learning_rate": train.learning_rate, "weight_decay": train.weight_decay,
            "max_seq_len": train.max_seq_len, "exclude_seen": exclude_seen}


@dataclass(frozen=True)
class FitSummary:
    """What a fit reports: epochs run, best validation NDCG@10 (None without validation), seconds, and what
    ended it: early_stopping (validation stopped improving), time_budget (train.max_minutes) or max_epochs."""

    epochs: int
    best_valid_ndcg: float | None
    seconds: float
    stopped_by: str = ""


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


class StopOnRequest(pl.Callback):
    """Ends a fit at the next training or validation batch once a stop was requested."""

    def __init__(self, label: str = "training"):
        self.label = label

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch, batch_idx: int) -> None:
        check_stop(f"{self.label}, epoch {trainer.current_epoch + 1}")

    def on_validation_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        check_stop(f"{self.label}, validation of epoch {trainer.current_epoch + 1}")


class SequentialRecommender(pl.LightningModule):
    """Shared Lightning module: next-item training (`train.loss`), early stopping on valid NDCG@10.

    Subclasses define `encode(history [B, T]) -> [B, T, H]`, the user's interest after each position
    (causal: position t sees items up to t only), and call `super().__init__` with H.
    """

    kind: ClassVar[str] = ""
    # False where an item's interest does not depend on how much padding precedes it in the window
    # (attention that masks padding, convolutions that pad with zeros anyway, a GRU run from the first
    # item); such models may train on length-sorted batches with the padding columns cut
    # (`train.batching: by_length`).
    reads_padding: ClassVar[bool] = True
    # Its weights can be carried over to a grown catalogue (models/warm_start.py) and trained further:
    # an incremental update fine-tunes it instead of refitting it.
    fine_tunes: ClassVar[bool] = True

    def __init__(self, n_items: int, interest_dim: int, learning_rate: float = 1e-3, weight_decay: float = 0.0,
                 max_seq_len: int = 50, exclude_seen: bool = True):
        super().__init__()
        self.n_items = n_items
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.max_seq_len, self.exclude_seen = max_seq_len, exclude_seen
        self.output = nn.Linear(interest_dim, n_items)

    @classmethod
    def options_from(cls, section: Any, train: TrainConfig, exclude_seen: bool, text_dim: int | None = None,
                     text_model_path: str | None = None) -> dict[str, Any]:
        """Constructor options from its config section and the run's training settings."""
        return section_options(section) | neural_options(train, exclude_seen)

    def encode(self, history: Tensor) -> Tensor:
        raise NotImplementedError

    def item_scores(self, interest: Tensor) -> Tensor:
        """Score every item for interest vectors: [..., H] -> [..., n_items]."""
        return self.output(interest)

    def output_rows(self, items: Tensor) -> tuple[Tensor, Tensor]:
        """(vectors [..., H], bias [...]) of the given items: an item's score is interest · vector + bias."""
        return self.output.weight[items], self.output.bias[items]

    def candidate_scores(self, interest: Tensor, items: Tensor) -> Tensor:
        """Scores of some items only (a sampled loss's candidates): interest [M, H], items [C] -> [M, C]."""
        vectors, bias = self.output_rows(items)
        return torch.addmm(bias.to(interest.dtype), interest, vectors.to(interest.dtype).T)

    def target_scores(self, interest: Tensor, items: Tensor) -> Tensor:
        """Each position's score for its own item: interest [M, H], items [M] -> [M]."""
        vectors, bias = self.output_rows(items)
        return (interest * vectors.to(interest.dtype)).sum(dim=-1) + bias.to(interest.dtype)

    def score_all(self, history: Tensor) -> Tensor:
        """Score every item from the interest at the last position: [B, T] -> [B, n_items]."""
        history = history.to(self.device)
        interest = self.encode(history)[:, -1]  # [B, H]
        scores = self.item_scores(interest)  # [B, n_items]
        scores[:, 0] = float("-inf")  # padding is never recommended
        return scores

    def evidence(self) -> Evidence:
        """A linear head over the last position's interest: evidence(h, r) = (q_h - q_0)·c_r (models/explain.py)."""
        return InterestEvidence(self.n_items, lambda history: self.encode(history)[:, -1], lambda: self.output.weight)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_index: int) -> Tensor:
        loss, positions = self.next_item_training_loss(batch)
        # Two calls, not on_step=on_epoch=True: Lightning would rename both to ..._step/..._epoch and
        # the documented name would not exist.
        self.log(TRAIN_LOSS_STEP, loss, on_step=True, on_epoch=False, batch_size=max(positions, 1))
        self.log(TRAIN_LOSS, loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=max(positions, 1))
        if self.anchor is not None:
            loss = loss + self.anchor_penalty()
        return loss

    def next_item_training_loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, int]:
        """(mean next-item loss of a batch of windows, positions it averages over)."""
        inputs, targets = batch  # [B, T] each
        labelled = targets > 0
        interest = self.encode(inputs)[labelled]  # [M, H]: only positions with a next item
        return self.next_item_loss(self, interest, targets[labelled]), int(labelled.sum())

    # L2-SP (Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
    # Networks", ICML 2018): set by `anchor_weights` before a fine-tuning stage.
    anchor: tuple[float, dict[str, Tensor]] | None = None

    def anchor_weights(self, strength: float) -> None:
        """From now on, add strength/2 · ||w - w_now||² over the trainable weights to the training loss: the
        fine-tuning stage is pulled towards the pre-trained weights instead of towards zero."""
        self.anchor = (strength, {name: weight.detach().clone() for name, weight in self.named_parameters()
                                  if weight.requires_grad})

    def anchor_penalty(self) -> Tensor:
        """strength/2 · squared distance of the trainable weights from their anchored values."""
        strength, anchored = self.anchor
        weights = dict(self.named_parameters())
        distance = sum(((weights[name] - value.to(weights[name].device)) ** 2).sum() for name, value in anchored.items())
        return 0.5 * strength * distance

    def validation_ranking(self, scores: Tensor, batch: EvalBatch) -> Tensor:
        """`scores` narrowed to the candidates validation ranks among: every item here; a model whose scores
        are only comparable within a part of the catalogue narrows them (a hybrid over it asks it too)."""
        return scores

    def validation_scores(self, batch: EvalBatch) -> Tensor:
        """[B, n_items] the scores validation ranks: every item but padding (and seen items, if removed)."""
        return self.validation_ranking(rankable_scores(self, batch, self.exclude_seen), batch)

    def validation_step(self, batch: EvalBatch, batch_index: int) -> None:
        scores = self.validation_scores(batch)
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
    # Set by `fit` from train.loss (models/losses.py); full softmax until then.
    next_item_loss: NextItemLoss = FullSoftmax()

    # Lightning saves a checkpoint at validation end and steps a plateau schedule only afterwards, at the
    # end of the epoch; on resume it skips that step (the metric it needs is not in the checkpoint). The
    # checkpoint carries the metric, and the resumed fit takes the step before it trains on.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        value = self.trainer.callback_metrics.get(VALID_METRIC)
        if self.lr_decay is not None and value is not None:
            checkpoint[PLATEAU_PENDING] = float(value)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._plateau_pending = checkpoint.get(PLATEAU_PENDING)

    def on_train_start(self) -> None:
        pending, self._plateau_pending = getattr(self, "_plateau_pending", None), None
        if pending is not None:
            for config in self.trainer.lr_scheduler_configs:
                if config.reduce_on_plateau:
                    config.scheduler.step(pending)

    def configure_loss(self, train: TrainConfig, sequences: list) -> None:
        """Set the next-item loss that `train.loss` names, fitted to the training sequences (called by `fit`)."""
        self.next_item_loss = build_loss(train, sequences, self.n_items)

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
        """Train with Lightning, stop early on validation NDCG@10, and keep the best epoch's weights.

        With a checkpoint_dir the fit survives being killed: called again for the same fit (same
        model, starting weights, data, settings and seed), it resumes from the `last.ckpt` of the
        interrupted one, or returns the finished one's result without training again. Without one the
        checkpoints go to a temporary folder, removed after the fit (never the working directory).
        """
        if checkpoint_dir is None:
            with tempfile.TemporaryDirectory(prefix="itx-fit-") as folder:
                return self.fit(data, train, seed, loggers, Path(folder))
        started = time.perf_counter()
        pl.seed_everything(seed, workers=True)
        self.lr_decay = (train.lr_decay_factor, train.lr_decay_patience) if train.lr_decay_factor else None
        self.configure_loss(train, data.train)
        resume_from = None
        if checkpoint_dir is not None:
            signature = fit_signature(self, data, train, seed)
            state = read_fit_state(checkpoint_dir)
            if state.get("signature") == signature and "summary" in state:
                finished = self._restore_finished_fit(checkpoint_dir, state)
                if finished is not None:
                    return finished
            elif state.get("signature") == signature:
                resume_from = resumable_checkpoint(checkpoint_dir)
            if resume_from is None:  # a new fit, another fit's leftovers, or unreadable files: start clean
                clear_checkpoints(checkpoint_dir)
                write_fit_state(checkpoint_dir, {"signature": signature})
        checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, monitor=VALID_METRIC, mode="max", save_top_k=1,
                                     save_last=True, filename="best-{epoch}")
        trainer = pl.Trainer(
            max_epochs=train.max_epochs,
            max_time={"minutes": train.max_minutes} if train.max_minutes else None,
            accelerator=train.accelerator,
            devices=train.devices, strategy=train.strategy,
            precision=training_precision(train.precision, train.accelerator),
            deterministic=train.deterministic,
            logger=list(loggers) or False,
            callbacks=[EarlyStopping(monitor=VALID_METRIC, mode="max", patience=train.patience), checkpoint,
                       StopOnRequest(f"training {self.kind}")],
            enable_progress_bar=train.progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=10,
            default_root_dir=str(checkpoint_dir) if checkpoint_dir else None,
        )
        by_length = train.batching == "by_length" and not self.reads_padding
        if train.batching == "by_length" and not by_length:
            log.info("%s reads its padding: trained on random batches (train.batching: by_length does not apply)",
                     self.kind)
        module = ResumableDataModule(data, self.max_seq_len, train.batch_size, eval_batch_size=512, seed=seed,
                                     pin_memory=uses_cuda(train.accelerator), by_length=by_length)
        # A second fit (fine-tuning) starts from the eval mode the first one ended in; Lightning keeps
        # module modes as it finds them, so switch dropout back on here. Frozen parts stay frozen.
        self.train()
        if resume_from is not None:
            log.info("%s: resumed from %s (%d epochs done)", self.kind, resume_from[0], resume_from[1])
        with warnings.catch_warnings():
            # We override transfer_batch_to_device on purpose (EvalBatch); Lightning warns about it.
            warnings.filterwarnings("ignore", message=".*transfer_batch_to_device.*")
            # The folder holds our fit state (and, on resume, the checkpoints resumed from).
            warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
            # weights_only: the checkpoint is read without running code from it (tensors and plain values only).
            trainer.fit(self, datamodule=module, ckpt_path=resume_from[0] if resume_from else None,
                        weights_only=True)
        if checkpoint.best_model_path:
            best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
            self.load_state_dict(best["state_dict"])
        best_score = checkpoint.best_model_score
        self.eval()
        early = trainer.early_stopping_callback
        summary = FitSummary(
            epochs=trainer.current_epoch,
            best_valid_ndcg=float(best_score) if best_score is not None else None,
            seconds=time.perf_counter() - started,
            stopped_by="early_stopping" if early is not None and early.stopped_epoch > 0
            else "max_epochs" if trainer.current_epoch >= train.max_epochs else "time_budget",
        )
        if checkpoint_dir is not None:
            # Last: only a fit that ran to its end is marked finished.
            write_fit_state(checkpoint_dir, {"signature": signature, "summary": asdict(summary),
                                             "best": Path(checkpoint.best_model_path).name or None})
        return summary

    def _restore_finished_fit(self, checkpoint_dir: Path, state: dict[str, Any]) -> FitSummary | None:
        """Load the weights a finished fit left in checkpoint_dir (its best epoch, else its last) and return its
        summary; None (and a warning) when they cannot be read."""
        weights = checkpoint_dir / Path(state.get("best") or LAST_CHECKPOINT).name
        try:
            self.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True)["state_dict"])
        except UNREADABLE as err:
            log.warning("%s cannot be read (%s); training again", weights, err)
            return None
        self.eval()
        log.info("%s: fit already finished in %s; its weights reused", self.kind, checkpoint_dir)
        return FitSummary(**state["summary"])

    def save(self, path: Path) -> None:
        """Write hyperparameters and weights to one file."""
        save_payload(path, self.kind, dict(self.hparams), {k: v.cpu() for k, v in self.state_dict().items()})
