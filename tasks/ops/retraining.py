"""Incremental update: fine-tune the champion on the grown event log instead of training from scratch.

The champion's weights are carried into a model built for the current item index (`warm_start`:
known items keep their learnt rows, new items start fresh), then Lightning fits a few epochs on the
current training split, with the usual early stopping on validation NDCG@10 and best-epoch weights.
Models without gradient training (popularity, ItemKNN) are refitted on the current data, which is
their cheap and exact update.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from pytorch_lightning.loggers import MLFlowLogger

from conf.schema import TEXT_KINDS, PipelineConfig
from models.kinds import build_model
from models.warm_start import new_to_old_index, warm_start
from tasks.ops import tracking
from tasks.data.event_store import StoreUpdate
from tasks.modelling.export import ExportedRecommendations
from tasks.ops.gate import item_ids
from tasks.io import TableRef, fingerprint_file, write_json
from tasks.data.preprocessing import PreparedData, load_sequence_data
from tasks.ops.runs import RunContext
from tasks.modelling.training import TrainedModel
from tasks.modelling.transfer import embed_item_texts, item_roles, item_text_tensor

log = logging.getLogger(__name__)


def finetune_model(champion_file: Path, champion_item_ids: list[str], name: str, prepared: PreparedData,
                   config: PipelineConfig, epochs: int, out_dir: Path, tracking_uri: str | None = None,
                   mlflow_run_id: str | None = None) -> TrainedModel:
    """Carry the champion (a saved model file) over to the current catalogue, fine-tune it for at most
    `epochs`, and save it under out_dir."""
    payload = torch.load(champion_file, map_location="cpu", weights_only=True)  # no code runs from the file
    kind, hparams = payload["kind"], dict(payload["hparams"])
    old_n_items = hparams.pop("n_items")
    # The architecture is the champion's; the optimiser settings are this run's (a fine-tune often wants less).
    hparams |= {key: getattr(config.train, key) for key in ("learning_rate", "weight_decay") if key in hparams}
    pl.seed_everything(config.seed, workers=True)
    candidate = build_model(kind, prepared.n_items, hparams)
    data = load_sequence_data(prepared)
    loggers = [MLFlowLogger(tracking_uri=tracking_uri, run_id=mlflow_run_id)] if mlflow_run_id else []
    if getattr(candidate, "fine_tunes", False):
        carried = warm_start(candidate, payload["state_dict"], old_n_items,
                             new_to_old_index(champion_item_ids, item_ids(prepared)))
        log.info("fine-tuning %s from the champion: %d of %d items carried over, at most %d epochs",
                 name, carried, prepared.n_items - 1, epochs)
        train = config.train.model_copy(update={"max_epochs": epochs})
    else:
        log.info("refitting %s (%s) on the current data: it has no weights to fine-tune", name, kind)
        train = config.train
    if hasattr(candidate, "attach_item_domains"):  # the current catalogue's domains, new items included
        candidate.attach_item_domains(item_roles(prepared))
    if kind in TEXT_KINDS or hparams.get("item_text"):
        # The current catalogue's title embeddings: the warm start carried only the old items' rows, and a new
        # item would otherwise enter with none.
        cache_dir = Path(config.text.cache_dir) if config.text.cache_dir else out_dir.parent / "text"
        candidate.attach_item_text(item_text_tensor(embed_item_texts(prepared, config.text, cache_dir)))
    summary = candidate.fit(data, train, config.seed, loggers=loggers, checkpoint_dir=out_dir / "checkpoints")
    model_path = out_dir / "model.pt"
    candidate.save(model_path)
    return TrainedModel(name, kind, TableRef(str(model_path), fingerprint_file(model_path)),
                        summary.epochs, summary.best_valid_ndcg, summary.seconds, mlflow_run_id,
                        config_name=name, train_on="pooled", reads="all")


def close_retrain_folder(run: RunContext, metrics: TableRef, exported: ExportedRecommendations | None,
                         prepared: PreparedData, update: StoreUpdate) -> Path:
    """Write run.json (what was appended, where the outputs are), upload the files, finish the MLflow run.

    A rejected candidate exports nothing: the champion's last recommendations stay the current ones.
    """
    summary = {
        "run_name": run.name, "run_dir": str(run.run_dir), "mlflow_run_id": run.mlflow_run_id,
        "mlflow_tracking_uri": run.tracking_uri, "model_run_ids": run.model_run_ids, "metrics": metrics.path,
        "recommendations": None if exported is None else {"parquet": exported.parquet.path, "csv": exported.csv.path,
                                                          "model": exported.model, "rows": exported.rows},
        "event_store": {"appended": update.added, "duplicates": update.duplicates, "total": update.total,
                        "new_items": update.new_items, "new_users": update.new_users,
                        "interactions": update.raw.interactions.path},
        "data": {"users": prepared.n_users, "items": prepared.n_items - 1, "interactions": prepared.n_events},
    }
    run_json = write_json(summary, run.run_dir / "run.json")
    files = [Path(metrics.path), run_json]
    if exported is not None:
        files += [Path(exported.parquet.path), Path(exported.csv.path)]
    tracking.log_files(run.tracking_uri, run.mlflow_run_id, files)
    tracking.log_metrics(run.tracking_uri, run.mlflow_run_id, {"update/appended_events": update.added,
                                                               "update/total_events": update.total})
    tracking.end_run(run.tracking_uri, run.mlflow_run_id)
    return run_json


finetune = task(finetune_model, name="finetune-champion", cache_policy=NO_CACHE)
close_retrain = task(close_retrain_folder, name="close-retrain-run", cache_policy=NO_CACHE)
