"""Tracking URI resolution: a store MLflow itself set during an earlier run never captures the next run; runs
left RUNNING by a process that died are found and marked KILLED."""
import json
import os
import subprocess
import sys

import mlflow
from mlflow.tracking import MlflowClient

from conf.loading import load_config, preset_path
from conf.schema import TrackingConfig
from tasks.ops import tracking
from tasks.ops.runs import open_run_folder


def test_a_uri_set_by_mlflow_during_a_run_does_not_leak_into_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "USER_TRACKING_URI", None)  # the user set nothing when the process started
    previous = mlflow.get_tracking_uri()
    try:
        # What Lightning's MLFlowLogger does during a fit: MLflow writes MLFLOW_TRACKING_URI into os.environ.
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'first.db'}")
        assert os.environ.get("MLFLOW_TRACKING_URI", "").endswith("first.db")
        second = f"sqlite:///{tmp_path / 'second.db'}"
        assert tracking.resolve_tracking_uri(TrackingConfig(tracking_uri=second)) == second
    finally:
        mlflow.set_tracking_uri(previous)
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_the_users_variable_still_wins_over_the_config(monkeypatch):
    monkeypatch.setattr(tracking, "USER_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.resolve_tracking_uri(TrackingConfig(tracking_uri="sqlite:///x.db")) == "http://tracking.example:5000"


def test_runs_left_running_by_a_dead_process_on_this_host_are_marked_killed(tmp_path):
    uri, experiment = f"sqlite:///{tmp_path / 'mlflow.db'}", "stale-runs"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no process
    owners = {
        "dead": tracking.owner_tags() | {tracking.OWNER_PID_TAG: str(dead.pid)},
        "alive": tracking.owner_tags(),  # this process: still working
        "elsewhere": {tracking.OWNER_HOST_TAG: "another-host", tracking.OWNER_PID_TAG: str(dead.pid)},
        "untagged": {},  # a run opened by something else
    }
    ids = {name: tracking.start_run(uri, experiment, name, {}, tags) for name, tags in owners.items()}
    killed = tracking.mark_dead_runs_killed(uri, experiment)
    assert [run.info.run_id for run in killed] == [ids["dead"]]
    client = MlflowClient(uri)
    assert {name: client.get_run(run_id).info.status for name, run_id in ids.items()} == {
        "dead": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING", "untagged": "RUNNING"}
    assert tracking.mark_dead_runs_killed(uri, experiment) == []  # nothing left to mark
    assert tracking.mark_dead_runs_killed(uri, "no-such-experiment") == []


def test_the_next_run_marks_a_killed_runs_folder(tmp_path):
    config = load_config(preset_path("experiments/tiny.yaml"), [f"output.root={tmp_path / 'out'}",
                                                               f"tracking.tracking_uri=sqlite:///{tmp_path / 'm.db'}"])
    first = open_run_folder(config.model_copy(update={"output": config.output.model_copy(update={"run_name": "a"})}))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for run_id in [first.mlflow_run_id, *first.model_run_ids.values()]:  # as if `dead` had opened the run
        tracking.set_tags(first.tracking_uri, run_id, {tracking.OWNER_PID_TAG: str(dead.pid)})
    open_run_folder(config.model_copy(update={"output": config.output.model_copy(update={"run_name": "b"})}))
    marker = json.loads((first.run_dir / "failed.json").read_text())
    assert marker["status"] == "killed" and marker["mlflow_run_id"] == first.mlflow_run_id
    client = MlflowClient(first.tracking_uri)
    assert {client.get_run(run_id).info.status
            for run_id in [first.mlflow_run_id, *first.model_run_ids.values()]} == {"KILLED"}
