"""Two `itx run` processes started at the same moment on one output root, MLflow store and Prefect home.

Both start their own temporary Prefect server on the same Prefect database, create their MLflow runs
in the same (new) sqlite store, and share the cache folder: one trains each model while the other
waits for it, then reuses it.

The Prefect home is new, so both runs also set up its database at the same moment: `itx run` does
that one process at a time under a file lock (two temporary servers migrating a new database at
once fail with "duplicate column name").
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from conf.loading import load_config, preset_path

ITX = str(Path(sys.executable).with_name("itx"))
RUN_FILES = {"config.yaml", "metrics.csv", "recommendations.parquet", "recommendations.csv", "run.json"}


def run_env(root: Path) -> dict[str, str]:
    """The environment of the runs: the shared Prefect home, one thread, no server or tracking URI inherited."""
    env = {key: value for key, value in os.environ.items() if key not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    return env | {"PREFECT_HOME": str(root / "prefect"), "OMP_NUM_THREADS": "1"}


def start_itx_run(root: Path, log: Path) -> subprocess.Popen:
    """`itx run` of the tiny preset writing under root/out, tracking into root/mlflow.db."""
    command = [ITX, "run", str(preset_path("experiments/tiny.yaml")), "--output-dir", str(root / "out"),
               "--set", f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}"]
    with open(log, "w") as handle:
        return subprocess.Popen(command, env=run_env(root), cwd=root, stdout=handle, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def two_runs_at_once(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    processes = [start_itx_run(root, root / f"run{index}.log") for index in range(2)]
    try:
        codes = [process.wait(timeout=900) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    logs = [(root / f"run{index}.log").read_text() for index in range(2)]
    for code, log in zip(codes, logs):
        assert code == 0, log[-4000:]
    folders = sorted(path.parent for path in (root / "out").glob("*/run.json"))
    return root, folders, logs


@pytest.mark.slow
def test_both_runs_complete_in_separate_full_run_folders(two_runs_at_once):
    root, folders, _ = two_runs_at_once
    assert len(folders) == 2 and folders[0] != folders[1]
    for folder in folders:
        assert RUN_FILES <= {path.name for path in folder.iterdir()}
        summary = json.loads((folder / "run.json").read_text())
        assert summary["run_dir"] == str(folder) and Path(summary["metrics"]).parent == folder
        assert load_config(folder / "config.yaml").output.root == str(root / "out")
        recommendations = pl.read_parquet(folder / "recommendations.parquet")
        assert recommendations.height == summary["recommendations"]["rows"]
    leftovers = [path for path in (root / "out").rglob("*") if path.name.endswith(".tmp")]
    assert not leftovers, leftovers


@pytest.mark.slow
def test_both_runs_produce_the_same_metrics_and_recommendations(two_runs_at_once):
    _, (first, second), _ = two_runs_at_once
    assert (first / "metrics.csv").read_bytes() == (second / "metrics.csv").read_bytes()
    assert (first / "recommendations.csv").read_bytes() == (second / "recommendations.csv").read_bytes()
    assert pl.read_csv(first / "metrics.csv").height > 0


@pytest.mark.slow
def test_each_model_trains_once_and_the_other_run_reuses_it(two_runs_at_once):
    root, _, logs = two_runs_at_once
    for label in ("popularity", "gru", "caser"):
        # The other run waited for it (tasks.io: waiting ...), then reused it, or found Prefect's cached result.
        fits = [line for log in logs for line in log.splitlines() if f"tasks.modelling.training - trained {label} (" in line]
        assert len(fits) == 1, fits
        assert len(list((root / "out" / "cache").glob(f"train-{label}-*/model.pt"))) == 1


@pytest.mark.slow
def test_mlflow_holds_both_runs_finished_with_all_their_model_runs(two_runs_at_once):
    root, folders, _ = two_runs_at_once
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    for folder in folders:
        summary = json.loads((folder / "run.json").read_text())
        run = client.get_run(summary["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.info.run_name == folder.name
        children = client.search_runs([run.info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        assert {child.info.run_id for child in children} == set(summary["model_run_ids"].values())
        assert {child.info.status for child in children} == {"FINISHED"}
        assert {child.data.tags["model"] for child in children} == {"popularity", "gru", "caser"}
