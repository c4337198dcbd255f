"""Training: fit one configured model on the prepared sequences and save it."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from pytorch_lightning.loggers import MLFlowLogger

from conf.schema import ModelConfig, TrainConfig
from models.base import SequentialRecommender
from models.data import SequenceData
from models.registry import MODEL_CLASSES, build_model
from tasks import schemas
from tasks.io import CacheDir, TableRef, fingerprint_file, fingerprint_text, read_table
from tasks.preprocessing import PreparedData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedModel:
    """A saved model and how its training went."""

    name: str
    kind: str
    model_file: TableRef
    epochs: int
    best_valid_ndcg: float | None
    seconds: float
    training_run_id: str | None  # the MLflow run holding its training curves


def load_sequence_data(prepared: PreparedData) -> SequenceData:
    """Per-user item_idx arrays of each split, indexed by user_idx - 1."""
    sequences = read_table(prepared.sequences, schemas.SEQUENCES, "sequences").sort("user_idx")

    def arrays(column: str) -> list[np.ndarray]:
        return [np.asarray(items, dtype=np.int64) for items in sequences[column].to_list()]

    return SequenceData(prepared.n_items, arrays("train"), arrays("valid"), arrays("test"), arrays("context"))


def model_options(model_cfg: ModelConfig, train: TrainConfig, exclude_seen: bool) -> dict:
    """Constructor options of the configured model: its own section, plus training settings for neural ones."""
    options = model_cfg.model_dump(exclude={"kind", "name"})
    if issubclass(MODEL_CLASSES[model_cfg.kind], SequentialRecommender):
        options |= {"learning_rate": train.learning_rate, "weight_decay": train.weight_decay,
                    "max_seq_len": train.max_seq_len, "exclude_seen": exclude_seen}
    return options


def train_recommender(prepared: PreparedData, model_cfg: ModelConfig, train: TrainConfig, seed: int,
                      exclude_seen: bool, cache_root: Path, tracking_uri: str | None = None,
                      mlflow_run_id: str | None = None) -> TrainedModel:
    """Fit the configured model (curves to the given MLflow run) and save it under cache_root."""
    data = load_sequence_data(prepared)
    # Seed before the model is built: weight initialisation draws from the global generator too.
    pl.seed_everything(seed, workers=True)
    model = build_model(model_cfg.kind, prepared.n_items, model_options(model_cfg, train, exclude_seen))
    key = fingerprint_text(prepared.sequences.fingerprint, model_cfg.model_dump(), train.model_dump(), seed,
                           exclude_seen)
    out_dir = cache_root / f"train-{model_cfg.name}-{key}"
    loggers = [MLFlowLogger(tracking_uri=tracking_uri, run_id=mlflow_run_id)] if mlflow_run_id else []
    summary = model.fit(data, train, seed, loggers=loggers, checkpoint_dir=out_dir / "checkpoints")
    model_path = out_dir / "model.pt"
    model.save(model_path)
    log.info("trained %s (%s): %d epochs, best valid NDCG@10 %s, %.1f s", model_cfg.name, model_cfg.kind,
             summary.epochs, summary.best_valid_ndcg, summary.seconds)
    return TrainedModel(model_cfg.name, model_cfg.kind, TableRef(str(model_path), fingerprint_file(model_path)),
                        summary.epochs, summary.best_valid_ndcg, summary.seconds, mlflow_run_id)


# The MLflow run id is left out of the cache key: the same data and config give the same model
# whichever run asks, and a cache hit points back to the run that holds the curves.
@task(name="train", cache_policy=(INPUTS + TASK_SOURCE) - "mlflow_run_id" - "tracking_uri", persist_result=True)
def train(prepared: PreparedData, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int, exclude_seen: bool,
          cache: CacheDir, tracking_uri: str | None = None, mlflow_run_id: str | None = None) -> TrainedModel:
    """Prefect task: train one model."""
    return train_recommender(prepared, model_cfg, train_cfg, seed, exclude_seen, cache.path, tracking_uri,
                             mlflow_run_id)
