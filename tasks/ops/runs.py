"""A run's folder and MLflow runs: open them, record metrics, close them.

Output contract of a run folder (scripts and schedulers rely on it):
  config.yaml               the resolved config
  metrics.csv               scenario, model, split, group, metric, k, value
  recommendations.parquet   user_id, item_id, rank, score, reason_item_ids, reason_scores
                            (and .csv, reasons ';'-joined)
  run.json                  MLflow run id and tracking URI, paths, counts (only once the run has succeeded)
  failed.json               instead of run.json when the run failed, was interrupted or was killed:
                            status (failed | interrupted | killed), error, mlflow_run_id
  transfer_gain.csv         transfer runs: scenario, model, model_role, target_fraction, subset, metric, k,
                            value, baseline_model, baseline_role, baseline_value, rel_gain, ci_low, ci_high,
                            n_users (one row per baseline of transfer.compare_to)
  transfer_gain_<subset>.png  transfer runs: NDCG@10 gain vs target-data fraction, one line per model
  test_metrics.png          test NDCG@10 and HR@10 per model (bars)
  data/                     the preprocessed tables (events, sequences, users, items) as Parquet
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from conf.loading import dump_config
from conf.schema import PipelineConfig, PlannedModel, regime_of
from models.stopping import StopRequested, request_stop
from tasks import schemas
from tasks.ops import tracking
from tasks.modelling.evaluation import metric_key
from tasks.modelling.export import ExportedRecommendations
from tasks.io import (CacheDir, TableRef, file_lock, fingerprint_text, inside, open_cache_dir, read_table, write_csv,
                      write_json, write_text)
from tasks.ops.plots import plot_model_metrics
from tasks.ops.registry import RegistryChange, promote_model, withdraw
from tasks.data.preprocessing import PreparedData
from tasks.modelling.training import TrainedModel
from tasks.modelling.transfer_report import format_gain_tables, plot_gain, transfer_gain_table

log = logging.getLogger(__name__)
TRANSFER_GAIN_FILE = "transfer_gain.csv"
METRICS_PLOT_FILE = "test_metrics.png"
FAILED_FILE = "failed.json"


@dataclass(frozen=True)
class RunContext:
    """Where a run writes and which MLflow runs it owns (the pipeline's and one per model)."""

    name: str
    run_dir: Path
    cache: CacheDir
    tracking_uri: str
    mlflow_run_id: str
    model_run_ids: dict[str, str] = field(default_factory=dict)


def new_run_name(config_name: str) -> str:
    """`<config>-<UTC timestamp>-<random>`: unique even for runs started in the same second."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{config_name}-{stamp}-{secrets.token_hex(3)}"


def store_setup_lock(tracking_uri: str) -> AbstractContextManager:
    """A lock beside a local sqlite MLflow store, held while a run first touches it: two runs starting at once
    on a new store would otherwise both create its tables, and MLflow's migrations fail in one of them."""
    if not tracking_uri.startswith("sqlite:///"):
        return nullcontext()
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return file_lock(database.with_name(f"{database.name}.lock"), "MLflow store setup")


def run_description(config: PipelineConfig) -> str:
    """The MLflow description of a pipeline run: its preset, data, scenario, protocol and models, and the
    user's note (output.description; `itx run` writes its --set settings there)."""
    scenario = config.scenario
    transfer = f", {scenario.partition} transfer {scenario.source} -> {scenario.target}" if config.is_transfer() else ""
    models = ", ".join(model.name for model in config.models)
    text = (f"Preset {config.name}: {config.data.source} data{transfer}, split {config.split.protocol}; "
            f"models {models}.")
    return f"{text} {config.output.description}" if config.output.description else text


def model_description(planned: PlannedModel, run_name: str) -> str:
    """The MLflow description of a model's nested run."""
    fraction = (f", {planned.target_fraction:g} of the target's training data"
                if planned.target_fraction is not None else "")
    return f"{planned.model.kind} model {planned.model.name} (train_on {regime_of(planned.model)}{fraction}) in run {run_name}."


def name_after_run_folder() -> str:
    """The `flow_run_name` of the pipeline and retraining flows: the name their run folder will get
    (output.run_name, or `<config name>-<UTC time>-<random>`), so that the Prefect UI, the run folder and
    the MLflow run share one name; the flow passes it back to open_run_folder. Read from the raw
    parameters too (a deployment run's config arrives as a mapping)."""
    from prefect.runtime import flow_run

    config = flow_run.parameters["config"]
    if isinstance(config, PipelineConfig):
        return config.output.run_name or new_run_name(config.name)
    return (config.get("output") or {}).get("run_name") or new_run_name(config.get("name") or "run")


def open_run_folder(config: PipelineConfig, flow_run_id: str | None = None,
                    flow_run_name: str | None = None) -> RunContext:
    """Create the run folder with config.yaml, and the MLflow run with a nested run per model. The folder
    is named output.run_name, else the flow run's name (name_after_run_folder), else a new unique name."""
    root = Path(config.output.root).resolve()
    name = config.output.run_name or flow_run_name or new_run_name(config.name)
    # The folder name comes from parameters (output.run_name, or the config's name): one folder level
    # directly under the output root, never a way out of it.
    setting = "output.run_name" if config.output.run_name else "name"
    run_dir = inside(root, name, setting=setting)
    if run_dir.parent != root:
        raise ValueError(f"{setting}: {name!r} must be a single folder name (no path separators)")
    root.mkdir(parents=True, exist_ok=True)
    try:  # exclusive: of two runs given the same name at once, one gets the folder, the other this error
        run_dir.mkdir()
    except FileExistsError:
        raise FileExistsError(f"output.run_name: run folder {run_dir} already exists; choose another name") from None
    write_text(dump_config(config), run_dir / "config.yaml")

    uri = tracking.resolve_tracking_uri(config.tracking)
    tags = {
        "dataset": config.data.source,
        "scenario": config.scenario.name,
        "protocol": config.split.protocol,
        "config_name": config.name,
        "config_hash": fingerprint_text(config.model_dump(mode="json")),
        "git_commit": tracking.git_commit(),
        "run_dir": str(run_dir),
    } | ({"prefect_flow_run_id": flow_run_id} if flow_run_id else {})
    tags |= tracking.owner_tags()
    with store_setup_lock(uri):
        mark_killed_runs(uri, config.tracking.experiment)
        parent = tracking.start_run(uri, config.tracking.experiment, name,
                                    tracking.flatten(config.model_dump(mode="json")),
                                    tags | {tracking.DESCRIPTION_TAG: run_description(config)})
    tracking.log_files(uri, parent, [run_dir / "config.yaml"])
    children = {
        planned.label: tracking.start_run(
            uri, config.tracking.experiment, planned.label,  # nested under the run: the model says which
            tracking.flatten(planned.model.model_dump(mode="json"), "model.")
            | ({"target_fraction": str(planned.target_fraction)} if planned.target_fraction is not None else {}),
            tags | {"model": planned.label, "model_kind": planned.model.kind,
                    tracking.DESCRIPTION_TAG: model_description(planned, name)}, parent_run_id=parent)
        for planned in config.model_plan()
    }
    return RunContext(name, run_dir, open_cache_dir(root / "cache"), uri, parent, children)


def record_metrics(run: RunContext, trained: list[TrainedModel], tables: list[TableRef],
                   prepared: PreparedData) -> TableRef:
    """Write metrics.csv and log every value to the pipeline run and each model's nested run."""
    metrics = pl.concat([read_table(ref, schemas.METRICS, "metrics") for ref in tables])
    ref = write_csv(metrics, run.run_dir / "metrics.csv")
    parent_metrics = {}
    for model in trained:
        rows = metrics.filter(pl.col("model") == model.name).to_dicts()
        model_metrics = {metric_key(row): row["value"] for row in rows}
        model_metrics |= {"train/epochs": model.epochs, "train/seconds": model.seconds}
        run_id = run.model_run_ids[model.name]
        tracking.log_metrics(run.tracking_uri, run_id, model_metrics)
        if model.training_run_id and model.training_run_id != run_id:
            # Training came from the task cache: point to the run that holds its curves.
            tracking.set_tags(run.tracking_uri, run_id, {"trained_in_run_id": model.training_run_id})
        tracking.end_run(run.tracking_uri, run_id)
        parent_metrics |= {metric_key(row).replace("/", f"/{model.name}/", 1): row["value"] for row in rows}
    parent_metrics |= {"data/users": prepared.n_users, "data/items": prepared.n_items - 1,
                       "data/interactions": prepared.n_events}
    tracking.log_metrics(run.tracking_uri, run.mlflow_run_id, parent_metrics)
    return ref


def record_transfer_report(run: RunContext, per_user: list[pl.DataFrame], config: PipelineConfig) -> TableRef:
    """Write transfer_gain.csv and its plot into the run folder, log both to MLflow, and print the table."""
    table = transfer_gain_table(pl.concat([frame for frame in per_user if not frame.is_empty()], how="diagonal"),
                                config.scenario.name, config.transfer_baselines(),
                                n_samples=config.transfer.bootstrap_samples, seed=config.seed,
                                transfer_models=config.transfer_methods())
    ref = write_csv(table, run.run_dir / TRANSFER_GAIN_FILE)
    plots = [plot_gain(table, run.run_dir / f"transfer_gain_{subset}.png", subset=subset)
             for subset in table["subset"].unique().sort().to_list()]
    tracking.log_files(run.tracking_uri, run.mlflow_run_id, [Path(ref.path), *plots])
    tracking.log_table(run.tracking_uri, run.mlflow_run_id, table, "transfer_gain.json")
    print(f"Transfer gain, {config.scenario.name} (NDCG@10 relative to each baseline, paired bootstrap 95% CI):")
    print(format_gain_tables(table))
    return ref


def link_tables(prepared: PreparedData, data_dir: Path) -> None:
    """Put the preprocessed tables into the run folder: hard links to the cached files (copies across disks)."""
    data_dir.mkdir(exist_ok=True)
    for ref in (prepared.events, prepared.sequences, prepared.users, prepared.items):
        source, target = Path(ref.path), data_dir / Path(ref.path).name
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)


def close_run_folder(run: RunContext, metrics: TableRef, exported: ExportedRecommendations,
                     prepared: PreparedData) -> Path:
    """Write run.json, upload the run's files to MLflow, and mark the MLflow run finished."""
    summary = {
        "run_name": run.name,
        "run_dir": str(run.run_dir),
        "mlflow_run_id": run.mlflow_run_id,
        "mlflow_tracking_uri": run.tracking_uri,
        "model_run_ids": run.model_run_ids,
        "metrics": metrics.path,
        "recommendations": {"parquet": exported.parquet.path, "csv": exported.csv.path,
                            "model": exported.model, "rows": exported.rows},
        "data": {"users": prepared.n_users, "items": prepared.n_items - 1, "interactions": prepared.n_events,
                 "dropped_interactions": prepared.dropped_events, "tables": str(run.run_dir / "data")},
    }
    link_tables(prepared, run.run_dir / "data")
    run_json = write_json(summary, run.run_dir / "run.json")
    tracking.log_files(run.tracking_uri, run.mlflow_run_id,
                       [Path(metrics.path), Path(exported.parquet.path), Path(exported.csv.path), run_json])
    tracking.set_tags(run.tracking_uri, run.mlflow_run_id, {"exported_model": exported.model})
    tracking.end_run(run.tracking_uri, run.mlflow_run_id)
    return run_json


def mark_run_folder(run_dir: Path, status: str, error: str, mlflow_run_id: str) -> Path:
    """Mark a run folder as not finished: failed.json in place of run.json (which only a success leaves)."""
    (run_dir / "run.json").unlink(missing_ok=True)
    return write_json({"status": status, "error": error, "mlflow_run_id": mlflow_run_id,
                       "resume": "run the same command again: finished stages come from the cache"},
                      run_dir / FAILED_FILE)


def fail_run(run: RunContext, error: BaseException | None = None) -> None:
    """Mark the run's MLflow runs FAILED (KILLED when interrupted) and its folder failed (or interrupted);
    the folder keeps what was written, all of it complete files."""
    # A stop request, Ctrl-C, or a termination signal Prefect turned into an exception (not an Exception).
    interrupted = isinstance(error, StopRequested) or (error is not None and not isinstance(error, Exception))
    try:
        mark_run_folder(run.run_dir, "interrupted" if interrupted else "failed",
                        f"{type(error).__name__}: {error}" if error is not None else "", run.mlflow_run_id)
    except OSError as problem:  # e.g. the disk is full: the MLflow runs are still closed
        log.warning("could not mark run folder %s as failed: %s", run.run_dir, problem)
    for run_id in [*run.model_run_ids.values(), run.mlflow_run_id]:
        tracking.end_run(run.tracking_uri, run_id, "KILLED" if interrupted else "FAILED")


@dataclass
class TrackedRun:
    """An open run, and what it registered (withdrawn by `tracked_run` if the run fails before its end)."""

    run: RunContext
    change: RegistryChange | None = None

    def promote(self) -> None:
        """Move the alias to the registered version: the run's last step, once everything else succeeded."""
        if self.change is not None:
            promote_model(self.run.tracking_uri, self.change)


@contextmanager
def tracked_run(config: PipelineConfig, flow_run_id: str | None, flow_run_name: str | None) -> Iterator[TrackedRun]:
    """Open the run folder and MLflow runs; on any failure inside, withdraw what the run registered, mark the
    folder and the MLflow runs failed (docs/guarantees.md), and re-raise."""
    tracked = TrackedRun(open_run(config, flow_run_id, flow_run_name))
    try:
        yield tracked
    except BaseException as error:
        if not isinstance(error, Exception):  # Ctrl-C, or a cancel or SIGTERM Prefect raised in this thread:
            request_stop()  # the training threads stop at their next batch instead of finishing their epoch
        if tracked.change is not None:
            withdraw(tracked.run.tracking_uri, tracked.change)  # a plain call: no task machinery while failing
        fail_run(tracked.run, error)
        raise


def mark_killed_runs(tracking_uri: str, experiment: str) -> None:
    """Close the runs whose process died without closing them (tracking.mark_dead_runs_killed) and mark
    their folders killed."""
    for dead in tracking.mark_dead_runs_killed(tracking_uri, experiment):
        run_dir = Path(dead.data.tags.get("run_dir", ""))
        is_pipeline_run = "mlflow.parentRunId" not in dead.data.tags
        if is_pipeline_run and run_dir.is_dir() and not (run_dir / FAILED_FILE).exists():
            mark_run_folder(run_dir, "killed", "the process ended without closing the run (killed)", dead.info.run_id)


def record_plots(run: RunContext, metrics: TableRef) -> Path:
    """Write the bar chart of test NDCG and HR at K=10 (else the largest K) per model into the run folder and log it."""
    frame = read_table(metrics, schemas.METRICS, "metrics")
    ks = frame["k"].unique().to_list()
    plot = plot_model_metrics(frame, run.run_dir / METRICS_PLOT_FILE, k=10 if 10 in ks else max(ks))
    tracking.log_files(run.tracking_uri, run.mlflow_run_id, [plot])
    return plot


def data_fingerprint(prepared: PreparedData) -> str:
    """One fingerprint of the preprocessed tables (events, sequences, users, items): same value, same data."""
    return fingerprint_text(prepared.events.fingerprint, prepared.sequences.fingerprint,
                            prepared.users.fingerprint, prepared.items.fingerprint)


def tag_data(run: RunContext, prepared: PreparedData) -> str:
    """Tag the pipeline's MLflow run and every model run with the data fingerprint (and the tables' own); return it."""
    fingerprint = data_fingerprint(prepared)
    tags = {"data_fingerprint": fingerprint, "data_events_fingerprint": prepared.events.fingerprint,
            "data_sequences_fingerprint": prepared.sequences.fingerprint}
    for run_id in [run.mlflow_run_id, *run.model_run_ids.values()]:
        tracking.set_tags(run.tracking_uri, run_id, tags)
    return fingerprint


open_run = task(open_run_folder, name="open-run", cache_policy=NO_CACHE)
record_metrics_task = task(record_metrics, name="record-metrics", cache_policy=NO_CACHE)
close_run = task(close_run_folder, name="close-run", cache_policy=NO_CACHE)
record_transfer_report_task = task(record_transfer_report, name="transfer-report", cache_policy=NO_CACHE)
record_plots_task = task(record_plots, name="plots", cache_policy=NO_CACHE)
data_tags = task(tag_data, name="tag-data", cache_policy=NO_CACHE)
