"""Checkpoints of a fit: which fit a checkpoint folder belongs to, resuming from its last epoch, and the data
module whose checkpoints carry the random state the next epoch draws from (docs/guarantees.md, "Crash and
resume"). Used by SequentialRecommender.fit (models/base.py)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from conf.schema import TrainConfig
from models.data import SequenceData, SequenceDataModule

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
PLATEAU_PENDING = "itx_plateau_pending"  # checkpoint key: validation metric of the epoch whose plateau step is due
FIT_STATE = "fit.json"  # in a checkpoint folder: which fit it belongs to, and its summary once finished
# What torch.load(weights_only=True) raises for a truncated, foreign or booby-trapped file (no code runs).
UNREADABLE = (OSError, RuntimeError, KeyError, TypeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError)


def fit_signature(model: nn.Module, data: SequenceData, train: TrainConfig, seed: int) -> str:
    """SHA-256 of everything a fit's outcome depends on: model class and hyperparameters, starting
    weights (and which are frozen), training data and validation targets, training settings, seed."""
    digest = hashlib.sha256()
    hparams = dict(getattr(model, "hparams", {}))
    digest.update(json.dumps([type(model).__qualname__, hparams, train.model_dump(mode="json"), seed],
                             sort_keys=True, default=str).encode())
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(sorted(n for n, p in model.named_parameters() if not p.requires_grad)).encode())
    for split in (data.train, data.valid, data.context):
        digest.update(json.dumps([len(items) for items in split]).encode())
        for items in split:
            digest.update(items.astype("int64", copy=False).tobytes())
    return digest.hexdigest()


def read_fit_state(checkpoint_dir: Path) -> dict[str, Any]:
    """The fit state in checkpoint_dir ({} when missing or unreadable)."""
    try:
        return json.loads((checkpoint_dir / FIT_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_fit_state(checkpoint_dir: Path, state: dict[str, Any]) -> None:
    """Replace the fit state atomically (a kill leaves the old one or the new one, never half of one)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    temporary = checkpoint_dir / f".{FIT_STATE}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    temporary.replace(checkpoint_dir / FIT_STATE)


def clear_checkpoints(checkpoint_dir: Path) -> None:
    """Remove the checkpoints and fit state of an earlier, different fit from checkpoint_dir."""
    if checkpoint_dir.is_dir():
        for path in [*checkpoint_dir.glob("*.ckpt"), checkpoint_dir / FIT_STATE]:
            path.unlink(missing_ok=True)


def resumable_checkpoint(checkpoint_dir: Path) -> tuple[Path, int] | None:
    """(last.ckpt, epochs it completed) if it exists and loads with weights_only; None (and a warning) otherwise."""
    last = checkpoint_dir / LAST_CHECKPOINT
    if not last.is_file():
        return None
    try:
        payload = torch.load(last, map_location="cpu", weights_only=True)
        epochs = int(payload["epoch"]) + 1
        kept = {last.name} | {Path(state["best_model_path"]).name for name, state in payload["callbacks"].items()
                              if name.startswith("ModelCheckpoint") and state.get("best_model_path")}
    except UNREADABLE as err:
        log.warning("%s cannot be resumed from (%s); training from the start", last, err)
        return None
    # Lightning writes last.ckpt only in epochs that improved; a kill between a new best checkpoint and
    # last.ckpt leaves a best file the resumed fit does not know of. Resumed, it would save beside it.
    for path in checkpoint_dir.glob("*.ckpt"):
        if path.name not in kept:
            path.unlink(missing_ok=True)
    return last, epochs


class ResumableDataModule(SequenceDataModule):
    """SequenceDataModule whose checkpoints also hold the random state that the next epoch draws from:
    the training shuffle's generator and torch's global generator (dropout), so that a fit resumed from
    an epoch's checkpoint continues exactly as the uninterrupted fit would have."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.restored: dict[str, Any] | None = None

    def train_dataloader(self) -> Any:
        loader = super().train_dataloader()
        if self.restored is not None:  # Lightning restores us before it asks for the loader
            self.generator.set_state(self.restored["train_generator"])
            torch.set_rng_state(self.restored["torch"])
            if "cuda" in self.restored and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self.restored["cuda"])
            self.restored = None
        return loader

    def state_dict(self) -> dict[str, Any]:
        if self.generator is None:
            return {}
        state = {"train_generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = dict(state_dict) if state_dict else None
