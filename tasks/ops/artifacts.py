"""Prefect artifacts of a finished run: a markdown summary (metrics, transfer gain, export, MLflow run) and a table.

Both are keyed by the config name, so the Prefect UI's Artifacts page keeps one entry per preset
with every run as a version, each linked to the flow run that made it.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from conf.schema import PipelineConfig
from tasks import schemas
from tasks.ops import tracking
from tasks.modelling.export import ExportedRecommendations
from tasks.io import TableRef, read_table
from tasks.ops.runs import TRANSFER_GAIN_FILE, RunContext
from tasks.modelling.transfer_report import TRANSFER_GAIN_SCHEMA, format_gain_table

MLFLOW_UI_URL = "http://127.0.0.1:5000"  # `make mlflow-ui`, serving sqlite:///<repository>/mlflow.db
ALL_USERS = "all"
# Column titles of the summary, in order: metrics.csv's metric names as the papers abbreviate them.
METRIC_TITLES = {"ndcg": "NDCG", "hit": "HR", "mrr": "MRR", "precision": "P", "recall": "R", "f1": "F1"}


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key from free text: lowercase letters, digits and single dashes."""
    key = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    return key or "run"


def metric_rows(metrics: pl.DataFrame, k: int | None = None, split: str = "test") -> list[dict]:
    """One row per model (and K, when k is None) of `split` metrics: model, [k,] NDCG, HR, MRR, P, R, F1,
    then NDCG of each user group ("NDCG <group>"); values rounded to 4 decimals, None where missing."""
    rows = metrics.filter((pl.col("split") == split) & ((pl.col("k") == k) if k is not None else pl.lit(True)))
    groups = sorted(set(rows["group"].to_list()) - {ALL_USERS})
    values = {(row["model"], row["k"], row["group"], row["metric"]): row["value"] for row in rows.to_dicts()}
    table = []
    for model in rows["model"].unique(maintain_order=True).to_list():
        for at in sorted(rows.filter(pl.col("model") == model)["k"].unique().to_list()):
            row: dict = {"model": model} | ({} if k is not None else {"k": at})
            row |= {title: _rounded(values.get((model, at, ALL_USERS, metric))) for metric, title in METRIC_TITLES.items()}
            row |= {f"NDCG {group}": _rounded(values.get((model, at, group, "ndcg"))) for group in groups}
            table.append(row)
    return table


def _rounded(value: float | None) -> float | None:
    """4-decimal value, None for missing or non-finite (JSON has no NaN)."""
    return None if value is None or not math.isfinite(value) else round(value, 4)


def markdown_table(rows: list[dict]) -> str:
    """A GitHub-flavoured markdown table of rows sharing their keys; numbers right-aligned, None as '-'."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    numeric = [all(isinstance(row[c], (int, float)) or row[c] is None for row in rows) for c in columns]

    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if right else "---" for right in numeric) + "|"]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


# MLflow 3's UI shows an experiment in its GenAI view (traces) unless the link asks for model training.
TRAINING_VIEW = "workflowType=machine_learning"


def mlflow_run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of a run, in the model-training view."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def mlflow_experiment_url(ui_url: str, experiment_id: str) -> str:
    """The MLflow UI's table of an experiment's training runs."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}"


def mlflow_ui_for(tracking_uri: str, ui_url: str | None = MLFLOW_UI_URL) -> str | None:
    """The UI showing runs of this tracking URI: a tracking server serves its own; else `ui_url` (make mlflow-ui)."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return ui_url


def render_run_summary(run_name: str, run_dir: Path, config: PipelineConfig, metrics: pl.DataFrame,
                       exported: ExportedRecommendations | None, mlflow_run_id: str, tracking_uri: str,
                       experiment: tuple[str, str], gain: pl.DataFrame | None = None,
                       ui_url: str | None = MLFLOW_UI_URL) -> str:
    """The run's markdown summary: where it is, test metrics at K=10 (else the largest K) per model,
    the transfer gain when there is one, the exported model, and the MLflow run with a UI link.

    `experiment` is the MLflow experiment's (id, name).
    """
    ks = sorted(set(metrics["k"].to_list())) or [10]
    k = 10 if 10 in ks else ks[-1]
    experiment_id, experiment_name = experiment
    ui = mlflow_ui_for(tracking_uri, ui_url)
    facts = [
        ("Config", f"`{config.name}`: dataset `{config.data.source}`, scenario `{config.scenario.name}`, "
                   f"protocol `{config.split.protocol}`, seed {config.seed}"),
        ("Run folder", f"`{run_dir}`"),
        ("Exported", f"`{exported.model}`: top-{config.export.top_k} recommendations, {exported.rows} rows, "
                     f"`{Path(exported.parquet.path).name}`" if exported is not None else "nothing"),
        ("MLflow run", f"`{mlflow_run_id}` in experiment `{experiment_name}` (id {experiment_id})"),
        ("Tracking URI", f"`{tracking_uri}`"),
    ]
    if ui is not None:
        served = ("" if tracking_uri.startswith(("http://", "https://"))
                  else " (while `make mlflow-ui` runs)" if tracking_uri == f"sqlite:///{Path.cwd() / 'mlflow.db'}"
                  else f" (while `mlflow ui --backend-store-uri {tracking_uri}` runs)")
        facts.append(("MLflow UI", f"[{experiment_name} / {run_name}]({mlflow_run_url(ui, experiment_id, mlflow_run_id)})"
                                   + served))
    lines = [f"# Run `{run_name}`", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in facts]
    lines += ["", f"## Test metrics at K={k}", "",
              "All users, then NDCG per user group. Every K and the valid split: `metrics.csv`.", "",
              markdown_table(metric_rows(metrics, k))]
    if gain is not None and not gain.is_empty():
        lines += ["", "## Transfer gain", "",
                  "Relative to the baseline, paired bootstrap 95% CI; `*`: the CI excludes 0. All rows: "
                  "`transfer_gain.csv`.", "", "```text", format_gain_table(gain), "```"]
    return "\n".join(lines) + "\n"


def publish_run_artifacts(run: RunContext, config: PipelineConfig, metrics: TableRef,
                          exported: ExportedRecommendations | None = None,
                          mlflow_ui_url: str | None = MLFLOW_UI_URL) -> str:
    """Create the run's Prefect artifacts: the markdown summary `itx-<config>` and the test metrics table
    `itx-<config>-metrics` (every K); the transfer gain is read from the run folder when present.
    Returns the summary's gist in one line, which the pipeline flow writes to its log."""
    frame = read_table(metrics, schemas.METRICS, "metrics")
    gain_file = run.run_dir / TRANSFER_GAIN_FILE
    gain = pl.read_csv(gain_file, schema_overrides=TRANSFER_GAIN_SCHEMA) if gain_file.is_file() else None
    summary = render_run_summary(run.name, run.run_dir, config, frame, exported, run.mlflow_run_id, run.tracking_uri,
                                 tracking.experiment_of(run.tracking_uri, run.mlflow_run_id), gain, mlflow_ui_url)
    summary_key, table_key = artifact_key("itx", config.name), artifact_key("itx", config.name, "metrics")
    create_markdown_artifact(markdown=summary, key=summary_key,
                             description=f"Run {run.name}: metrics, export and MLflow run")
    create_table_artifact(table=metric_rows(frame), key=table_key,
                          description=f"Run {run.name}: test metrics per model and K")
    return summary_line(run, frame, exported, summary_key)


def summary_line(run: RunContext, metrics: pl.DataFrame, exported: ExportedRecommendations | None,
                 summary_key: str) -> str:
    """`run <name> finished: ...` with the test NDCG@10 of every model, the export and where the rest is."""
    ks = metrics["k"].to_list()
    k = 10 if 10 in ks else max(ks, default=10)
    ndcg = {row["model"]: row["NDCG"] for row in metric_rows(metrics, k)}
    models = ", ".join(f"{model} {value:.4f}" if value is not None else f"{model} -" for model, value in ndcg.items())
    export = f"exported {exported.model}" if exported is not None else "nothing exported"
    return (f"run {run.name} finished: test NDCG@{k} {models}; {export}; folder {run.run_dir}; "
            f"MLflow run {run.mlflow_run_id}; summary: artifact {summary_key}")


publish_artifacts = task(publish_run_artifacts, name="publish-artifacts", cache_policy=NO_CACHE)
