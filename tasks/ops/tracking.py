"""MLflow run helpers: one run per pipeline run, a nested run per model, all through MlflowClient.

The client API (explicit run ids, no "active run" global) is used because Prefect runs tasks in
worker threads, where MLflow's fluent active-run stack would not be shared.
"""
from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient

from conf.schema import TrackingConfig

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
BATCH_LIMIT = 100  # MLflow's limit on params per log_batch call
OWNER_HOST_TAG, OWNER_PID_TAG = "itx.host", "itx.pid"  # the process that opened a run (owner_tags)


# The user's MLFLOW_TRACKING_URI, read once at import: MLflow's own `set_tracking_uri` (which Lightning's
# MLFlowLogger calls during a fit) writes the variable into os.environ, and reading it later would send
# every following run of a long-lived process (itx serve, itx demo, tests) to the first run's store.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """MLFLOW_TRACKING_URI as set when the process started, else the configured URI, else sqlite:///<cwd>/mlflow.db."""
    return USER_TRACKING_URI or cfg.tracking_uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


# Marks the experiment as model training, which MLflow 3's UI reads to pick its view where its global
# GenAI / Model-training switch is off; with the switch on, links ask for the view (tasks/ops/artifacts.py).
DESCRIPTION_TAG = "mlflow.note.content"  # what the MLflow UI shows as a run's description
KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """Id of the named experiment, created if missing with artifacts next to a local database and marked as
    model training (KIND_TAG; an older experiment of ours is marked the first time it is used)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, KIND_TAG, TRAINING_KIND)
        return experiment.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):
        # Without this, MLflow puts artifacts under the *current* directory of whichever process
        # creates the experiment (see STACK_NOTES); keep them beside the database instead.
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        artifact_location = (database.parent / "mlruns").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags={KIND_TAG: TRAINING_KIND})
    except Exception:  # another process created it between our lookup and create
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping (lists included) as {'a.b.0.c': 'value'} strings, for MLflow params."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
            flat |= flatten({str(i): v for i, v in enumerate(value)}, f"{name}.")
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def git_commit() -> str:
    """Commit of the code being run, or 'unknown' outside a git checkout."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent)
        return result.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_run(tracking_uri: str, experiment: str, run_name: str, params: Mapping[str, str],
              tags: Mapping[str, str], parent_run_id: str | None = None) -> str:
    """Create an MLflow run (nested when parent_run_id is given) with params and tags; its id."""
    client = MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(client, experiment, tracking_uri)
    all_tags = dict(tags) | {"mlflow.runName": run_name}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    items = [Param(key, value) for key, value in params.items()]
    for start in range(0, len(items), BATCH_LIMIT):
        client.log_batch(run.info.run_id, params=items[start:start + BATCH_LIMIT])
    return run.info.run_id


def log_metrics(tracking_uri: str, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log metric values to a run in batches."""
    client = MlflowClient(tracking_uri)
    items = [Metric(key, float(value), 0, step) for key, value in metrics.items()]
    for start in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[start:start + 1000])


def set_tags(tracking_uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    """Set tags on a run."""
    MlflowClient(tracking_uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_files(tracking_uri: str, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    """Upload files as artifacts of a run."""
    client = MlflowClient(tracking_uri)
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run FINISHED or FAILED."""
    MlflowClient(tracking_uri).set_terminated(run_id, status)


def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns a run, so a later run can tell when it died without closing it."""
    return {OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(os.getpid())}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def mark_dead_runs_killed(tracking_uri: str, experiment: str) -> list[Run]:
    """End as KILLED the RUNNING runs of `experiment` whose owner process on this host is gone (a run
    killed by SIGKILL or a power cut never closes its runs); those runs. Runs owned by other hosts, or
    by a live process, are left alone: they may still be working."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    host = socket.gethostname().replace("'", "")
    stale = [run for run in client.search_runs([found.experiment_id],
                                               f"attributes.status = 'RUNNING' and tags.`{OWNER_HOST_TAG}` = '{host}'",
                                               max_results=1000)
             if run.data.tags.get(OWNER_PID_TAG, "").isdigit()
             and not process_alive(int(run.data.tags[OWNER_PID_TAG]))]
    for run in stale:
        client.set_terminated(run.info.run_id, "KILLED")
    return stale


def log_table(tracking_uri: str, run_id: str, table, artifact_file: str) -> None:
    """Log a Polars table as an MLflow table artifact (shown in the UI's artifact and evaluation views)."""
    MlflowClient(tracking_uri).log_table(run_id, data=table.to_pandas(), artifact_file=artifact_file)


def experiment_of(tracking_uri: str, run_id: str) -> tuple[str, str]:
    """(id, name) of the experiment holding a run."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    return experiment_id, client.get_experiment(experiment_id).name
