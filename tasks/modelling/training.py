"""Training: fit one configured model on the prepared sequences (or a transfer scenario's views) and save it."""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.context import TaskRunContext
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE
from pytorch_lightning.loggers import Logger, MLFlowLogger

from conf.schema import (FINETUNE_REGIMES, ExecutionConfig, ExportConfig, OutputConfig, PipelineConfig,
                         PlannedModel, RegistryConfig, TrackingConfig, TrainConfig, reads_item_text, regime_of)
from models.augmentation import augmented_copies
from models.base import FitSummary, Recommender
from models.data import SequenceData
from models.kinds import OWN_TRAINING_SETTINGS, build_model, constructor_options
from models.stopping import check_stop
from models.transfer_data import TransferViews, reads_of, with_extra_sequences
from tasks.io import (CacheDir, TableRef, atomic_path, file_lock, fingerprint_file, fingerprint_text, inside,
                      write_json)
from tasks.data.preprocessing import PreparedData, load_sequence_data  # noqa: F401 (re-exported)
from tasks.modelling.transfer import item_roles, item_text_tensor, load_views

log = logging.getLogger(__name__)
TRAINED_RECORD = "trained.json"  # beside model.pt: how its training went; written last, so it marks a finished model


@dataclass(frozen=True)
class TrainedModel:
    """A saved model and how its training went."""

    name: str  # the run label: the configured name, or name:fraction when a run sweeps target fractions
    kind: str
    model_file: TableRef
    epochs: int
    best_valid_ndcg: float | None
    seconds: float
    training_run_id: str | None  # the MLflow run holding its training curves
    config_name: str = ""  # the model's name in the config
    train_on: str = "pooled"  # its training regime
    reads: str = "all"  # which items of a history it reads: all, target or source
    target_fraction: float | None = None  # share of the target's training data it saw (transfer runs)
    stopped_by: str = ""  # early_stopping, time_budget or max_epochs (FitSummary); empty for models without epochs


def training_settings(config: PipelineConfig) -> PipelineConfig:
    """The config with the sections training never reads reset, so that they stay out of its cache key
    (a new run name or export setting must not retrain the models)."""
    return config.model_copy(update={"name": "run", "output": OutputConfig(), "export": ExportConfig(),
                                     "tracking": TrackingConfig(), "registry": RegistryConfig(),
                                     "execution": ExecutionConfig()})


# A model's own settings that only its target stage reads: models differing only in them share a pre-training.
TARGET_STAGE_SETTINGS = ("l2sp", "augment_copies")


def model_options(planned: PlannedModel, config: PipelineConfig, text_dim: int | None) -> dict:
    """Constructor options of the planned model (its kind says how: models.kinds.constructor_options)."""
    return constructor_options(planned.model, config.train, config.evaluation.exclude_seen, text_dim,
                               config.text.model_path)


def model_training(planned: PlannedModel, config: PipelineConfig) -> TrainConfig:
    """The training settings of the planned model: train, with the model's own budget and L2-SP where it sets them."""
    own = {key: value for key in OWN_TRAINING_SETTINGS if (value := getattr(planned.model, key, None)) is not None}
    return config.train.model_copy(update=own) if own else config.train


def pretrain(model: Recommender, data: SequenceData, train: TrainConfig, seed: int, loggers: list[Logger],
             pretrain_dir: Path) -> FitSummary:
    """Fit on the pre-training view (the source, or the pooled data), or load the weights a previous fit left in
    pretrain_dir.

    The source view does not depend on the target fraction, so a sweep over fractions pre-trains on it
    once and fine-tunes from the same weights for every fraction (the pooled view does, so its folder
    is per fraction). One process at a time pre-trains into a folder; another one asking for it waits,
    then reuses the weights.
    """
    weights, summary_file = pretrain_dir / "pretrained.pt", pretrain_dir / "summary.json"
    with file_lock(lock_file(pretrain_dir), "pre-training"):
        if weights.exists() and summary_file.exists():
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            log.info("pre-trained weights reused from %s", weights)
            return FitSummary(**json.loads(summary_file.read_text()))
        summary = model.fit(data, train, seed, loggers=loggers, checkpoint_dir=pretrain_dir / "checkpoints")
        with atomic_path(weights) as temporary:
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, temporary)
        write_json(asdict(summary), summary_file)  # last: marks the pre-training finished
    return summary


def fit_regime(model: Recommender, regime: str, data: SequenceData, views: TransferViews | None,
               train: TrainConfig, seed: int, loggers: list[Logger], checkpoint_dir: Path,
               pretrain_dir: Path | None = None) -> FitSummary:
    """Fit the model under its regime: on one view, pre-trained then fine-tuned on the target (source_then_target,
    pooled_then_target), or through a mapping."""
    if views is None:
        return model.fit(data, train, seed, loggers=loggers, checkpoint_dir=checkpoint_dir)
    if regime == "mapping":
        return model.fit_views(views, train, seed, loggers=loggers, checkpoint_dir=checkpoint_dir)
    if regime not in FINETUNE_REGIMES:
        return model.fit(augmented(views.training_data(regime), views, train, seed), train, seed, loggers=loggers,
                         checkpoint_dir=checkpoint_dir)
    first_stage = views.source if regime == "source_then_target" else augmented(views.pooled, views, train, seed)
    # The first stage runs the same whatever the target stage's own settings are (its augmented copies, if
    # any, are already in first_stage): its fit, checkpoints and resumption do not depend on them.
    first_stage_train = train.model_copy(update={name: TrainConfig.model_fields[name].default
                                                  for name in TARGET_STAGE_SETTINGS})
    pretrained = pretrain(model, first_stage, first_stage_train, seed, loggers,
                          pretrain_dir or checkpoint_dir / "pretrain")
    if hasattr(model, "prepare_finetune"):
        model.prepare_finetune()
    if train.l2sp > 0:
        model.anchor_weights(train.l2sp)
    # The fine-tune starts from the weights the first stage ended with (its best epoch).
    finetuned = model.fit(augmented(views.target, views, train, seed), train, seed, loggers=loggers,
                          checkpoint_dir=checkpoint_dir / "target")
    return FitSummary(pretrained.epochs + finetuned.epochs, finetuned.best_valid_ndcg,
                      pretrained.seconds + finetuned.seconds, finetuned.stopped_by)


def augmented(view: SequenceData, views: TransferViews, train: TrainConfig, seed: int) -> SequenceData:
    """The view plus train.augment_copies altered copies of each sampled target user's training sequence in it
    (none for the source view: it holds no target data)."""
    if train.augment_copies == 0 or view is views.source:
        return view
    sequences = [view.train[u] for u in views.sampled_target_users if len(view.train[u]) > 1]
    return with_extra_sequences(view, augmented_copies(sequences, train.augment_copies, seed))


def lock_file(folder: Path) -> Path:
    """The lock file guarding a cache folder: a sibling, so that it outlives the folder's contents."""
    return folder.with_name(f"{folder.name}.lock")


def discard_once(folder: Path) -> None:
    """Delete a cache folder's contents (a refresh), at most once per process: the later target fractions
    of a sweep reuse the pre-training that this process's first fraction just redid."""
    if folder not in _discarded:
        _discarded.add(folder)
        shutil.rmtree(folder, ignore_errors=True)


_discarded: set[Path] = set()


def train_recommender(prepared: PreparedData, planned: PlannedModel, config: PipelineConfig, cache_root: Path,
                      item_text: TableRef | None = None, tracking_uri: str | None = None,
                      mlflow_run_id: str | None = None, refresh: bool = False) -> TrainedModel:
    """Fit the planned model (curves to the given MLflow run) and save it under cache_root.

    Safe to run again after a crash and from several processes at once: one process at a time trains
    into the model's cache folder (the others wait), a finished model found there is returned as is,
    and an interrupted fit resumes from its last checkpoint. refresh: train from scratch instead.
    """
    check_stop(f"training {planned.label}")  # a stop asked while this model waited for its turn
    model_cfg, seed = planned.model, config.seed
    regime = regime_of(model_cfg)
    reads_text = reads_item_text(model_cfg)
    # A model that reads no item text keys as it did before `item_text` existed (its trained models stay
    # reusable), and the embeddings a run computed for other models do not change its key.
    section = model_cfg.model_dump(mode="json", exclude=None if reads_text else {"item_text"})

    def fit_key(model_section: dict) -> str:
        return fingerprint_text(prepared.sequences.fingerprint, model_section,
                                config.train.model_dump(), seed, config.evaluation.exclude_seen,
                                config.scenario.model_dump(), config.transfer.cold_start_fraction,
                                config.text.model_dump(), item_text.fingerprint if item_text and reads_text else None)

    # The trained model's key: everything, and the target fraction.
    key = fingerprint_text(fit_key(section), planned.target_fraction)
    # The source stage's: everything it depends on, so a fraction sweep pre-trains on the source once, and
    # so do models that differ only in what their target stage does (a model's own l2sp, augment_copies).
    # (Set to None, as a model that leaves them unset has them: its keys stay what they were.)
    pretrain_key = fit_key(section | {name: None for name in TARGET_STAGE_SETTINGS if name in section})
    if regime == "pooled_then_target":  # the pooled view holds the fraction's target users: pre-trained per fraction
        pretrain_key = key
    # Folder names carry the model's configured name: it must not lead out of the cache.
    out_dir = inside(cache_root, f"train-{model_cfg.name}-{key}", setting=f"models: name {model_cfg.name!r}")
    pretrain_dir = inside(cache_root, f"pretrain-{model_cfg.name}-{pretrain_key}",
                          setting=f"models: name {model_cfg.name!r}")
    model_path, record_path = out_dir / "model.pt", out_dir / TRAINED_RECORD
    with file_lock(lock_file(out_dir), f"training {planned.label}"):
        if refresh:
            with file_lock(lock_file(pretrain_dir), "pre-training"):
                discard_once(pretrain_dir)
            discard_once(out_dir)
        if model_path.is_file() and record_path.is_file():
            # Trained before (by a run killed before Prefect stored its result, or by a concurrent run).
            record = json.loads(record_path.read_text(encoding="utf-8"))
            log.info("trained %s reused from %s (trained in MLflow run %s)", planned.label, out_dir,
                     record["training_run_id"])
            summary = FitSummary(record["epochs"], record["best_valid_ndcg"], record["seconds"],
                                 record.get("stopped_by", ""))
            return trained_model(planned, regime, config, model_path, summary, record["training_run_id"])
        views = (load_views(prepared, config.scenario, config.transfer, planned.target_fraction, seed)
                 if config.is_transfer() else None)
        data = load_sequence_data(prepared) if views is None else None
        vectors = item_text_tensor(item_text) if item_text is not None and reads_item_text(model_cfg) else None
        # Seed before the model is built: weight initialisation draws from the global generator too.
        pl.seed_everything(seed, workers=True)
        model = build_model(model_cfg.kind, prepared.n_items,
                            model_options(planned, config, vectors.shape[1] if vectors is not None else None))
        if vectors is not None:
            model.attach_item_text(vectors)
        if hasattr(model, "attach_item_domains"):
            model.attach_item_domains(item_roles(prepared))
        loggers = [MLFlowLogger(tracking_uri=tracking_uri, run_id=mlflow_run_id)] if mlflow_run_id else []
        summary = fit_regime(model, regime, data, views, model_training(planned, config), seed, loggers,
                             out_dir / "checkpoints", pretrain_dir)
        model.save(model_path)
        write_json(asdict(summary) | {"training_run_id": mlflow_run_id}, record_path)  # last: marks it finished
    log.info("trained %s (%s, %s): %d epochs, best valid NDCG@10 %s, %.1f s, stopped by %s", planned.label,
             model_cfg.kind, regime, summary.epochs, summary.best_valid_ndcg, summary.seconds,
             summary.stopped_by or "its own rule")
    return trained_model(planned, regime, config, model_path, summary, mlflow_run_id)


def trained_model(planned: PlannedModel, regime: str, config: PipelineConfig, model_path: Path, summary: FitSummary,
                  training_run_id: str | None) -> TrainedModel:
    """The TrainedModel record of a saved model file."""
    return TrainedModel(planned.label, planned.model.kind, TableRef(str(model_path), fingerprint_file(model_path)),
                        summary.epochs, summary.best_valid_ndcg, summary.seconds, training_run_id,
                        config_name=planned.model.name, train_on=regime, stopped_by=summary.stopped_by,
                        reads="source" if regime == "mapping" else reads_of(regime, config.scenario.partition),
                        target_fraction=planned.target_fraction)


# The MLflow run id is left out of the cache key: the same data and config give the same model
# whichever run asks, and a cache hit points back to the run that holds the curves.
@task(name="train", task_run_name="train-{planned.label}", cache_policy=(INPUTS + TASK_SOURCE) - "mlflow_run_id" - "tracking_uri", persist_result=True)
def train(prepared: PreparedData, planned: PlannedModel, config: PipelineConfig, cache: CacheDir,
          item_text: TableRef | None = None, tracking_uri: str | None = None,
          mlflow_run_id: str | None = None) -> TrainedModel:
    """Prefect task: train one model."""
    return train_recommender(prepared, planned, config, cache.path, item_text, tracking_uri, mlflow_run_id,
                             refresh=refresh_requested())


def refresh_requested() -> bool:
    """Whether this task run was asked to recompute instead of reusing cached results (`itx run --refresh-cache`)."""
    context = TaskRunContext.get()
    if context is not None and context.task.refresh_cache is not None:
        return context.task.refresh_cache
    return bool(PREFECT_TASKS_REFRESH_CACHE.value())
