"""Tracking URI resolution: a store MLflow itself set during an earlier run never captures the next run."""
import os

import mlflow

from conf.schema import TrackingConfig
from tasks import tracking


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
