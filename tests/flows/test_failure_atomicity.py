"""A failed run changes nothing: a failure injected into each stage of a pipeline run, in turn, leaves
the registry's versions, the champion alias and the champion's exported recommendations as they were,
the run's MLflow runs FAILED and its folder marked failed (failed.json, no run.json).

The failures are injected by replacing one stage of the real flow with a function that raises; every
other part (Prefect flow runs, the MLflow store and registry, the files) is the real one. The stages
after registration are the ones that matter most: there the run has already registered a version.
"""
from __future__ import annotations

import errno
import hashlib
import json

import pytest
from mlflow.tracking import MlflowClient
from prefect import flow

import flows.pipeline
import flows.registration
import flows.retrain
import tasks.ops.runs
from flows.pipeline import pipeline_flow
from flows.retrain import retrain_flow
from tasks.ops.registry import champion_version, registered_name

pytestmark = pytest.mark.slow

# (module, name): every stage the pipeline flow calls after its run folder exists, in order.
STAGES = [
    (flows.pipeline, "training_flow"),
    (flows.pipeline, "evaluation_flow"),
    (flows.pipeline, "export_flow"),
    (flows.registration, "promotion_gate"),
    (flows.registration, "record_decision"),  # after the version is registered
    (flows.pipeline, "close_run"),
    (flows.pipeline, "publish_artifacts"),
    (tasks.ops.runs, "promote_model"),  # the alias move itself (TrackedRun.promote)
]
REGISTERED_BEFORE_FAILING = {"record_decision", "close_run", "publish_artifacts", "promote_model"}  # gate.json
# is written by record_decision, so it tells the version registered for the last three


@pytest.fixture(scope="module")
def champion(tiny_config_factory):
    """A first run that registers the champion; later runs of the same config pass the gate (same data, same
    cached models, so the same score)."""
    config = tiny_config_factory("train.max_epochs=1")
    return config, pipeline_flow(config)


def registry_state(tracking_uri: str, name: str) -> tuple[list[str], str | None]:
    """(every version of the registered model, the version the champion alias names)."""
    versions = sorted(str(v.version) for v in MlflowClient(tracking_uri).search_model_versions(f"name = '{name}'"))
    alias = champion_version(tracking_uri, name, "champion")
    return versions, None if alias is None else str(alias.version)


def digest(run_dir) -> dict[str, str]:
    return {name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest()
            for name in ("recommendations.parquet", "recommendations.csv", "run.json")}


def with_run_name(config, run_name: str):
    return config.model_copy(update={"output": config.output.model_copy(update={"run_name": run_name})})


@pytest.mark.parametrize("module, stage", STAGES, ids=[stage for _, stage in STAGES])
def test_a_failure_in_any_stage_leaves_the_registry_and_the_champions_exports_as_they_were(champion, module, stage,
                                                                                          monkeypatch):
    config, first = champion
    name = registered_name(config)
    before, exports_before = registry_state(first.tracking_uri, name), digest(first.run_dir)
    assert before == (["1"], "1")

    def fail(*args, **kwargs):
        raise RuntimeError(f"injected failure in {stage}")

    # A Prefect flow, so that it stands in for a stage flow (with_options) as well as for a task.
    monkeypatch.setattr(module, stage, flow(fail, name=f"broken-{stage.replace('_', '-')}"))
    run_name = f"fails-in-{stage.replace('_', '-')}"
    with pytest.raises(RuntimeError, match="injected failure"):
        pipeline_flow(with_run_name(config, run_name))

    assert registry_state(first.tracking_uri, name) == before
    assert digest(first.run_dir) == exports_before
    run_dir = first.run_dir.parent / run_name
    marker = json.loads((run_dir / "failed.json").read_text())
    assert marker["status"] == "failed" and "injected failure" in marker["error"]
    assert not (run_dir / "run.json").exists()
    client = MlflowClient(first.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(config.tracking.experiment).experiment_id],
                              f"tags.run_dir = '{run_dir}'")
    assert runs and {run.info.status for run in runs} == {"FAILED"}
    if stage in REGISTERED_BEFORE_FAILING - {"record_decision"}:  # it had registered a version: withdrawn
        assert json.loads((run_dir / "gate.json").read_text())["registered_version"] not in (None, "1")


def test_a_run_after_the_failures_still_promotes_and_moves_the_alias(champion):
    config, first = champion
    result = pipeline_flow(with_run_name(config, "succeeds-after-failures"))
    versions, alias = registry_state(result.tracking_uri, registered_name(config))
    assert alias == versions[-1] != "1" and (result.run_dir / "run.json").exists()
    assert not (result.run_dir / "failed.json").exists()


def test_a_full_disk_leaves_the_registry_unchanged_and_the_mlflow_runs_failed(champion, monkeypatch):
    """No space left while exporting, and not even for failed.json: the run still closes its MLflow runs."""
    config, first = champion
    name = registered_name(config)
    before = registry_state(first.tracking_uri, name)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(flows.pipeline, "export_flow", flow(disk_full, name="export-disk-full"))
    monkeypatch.setattr(tasks.ops.runs, "write_json", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        pipeline_flow(with_run_name(config, "disk-full"))
    assert registry_state(first.tracking_uri, name) == before
    run_dir = first.run_dir.parent / "disk-full"
    assert not (run_dir / "run.json").exists() and not (run_dir / "failed.json").exists()
    client = MlflowClient(first.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(config.tracking.experiment).experiment_id],
                              f"tags.run_dir = '{run_dir}'")
    assert runs and {run.info.status for run in runs} == {"FAILED"}


def test_a_failure_after_an_incremental_update_registered_leaves_the_registry_unchanged(champion, monkeypatch):
    """The same for `itx retrain`: its candidate passes the gate (tolerance 1), registers, then closing fails."""
    config, first = champion
    config = config.model_copy(update={"registry": config.registry.model_copy(update={"tolerance": 1.0})})
    name = registered_name(config)
    before = registry_state(first.tracking_uri, name)

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure in close_retrain")

    monkeypatch.setattr(flows.retrain, "close_retrain", fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        retrain_flow(config, None, finetune_epochs=1, force=True)
    assert registry_state(first.tracking_uri, name) == before
    (failed,) = [path.parent for path in first.run_dir.parent.glob("*/failed.json")
                 if "close_retrain" in (path.parent / "failed.json").read_text()]
    assert json.loads((failed / "gate.json").read_text())["registered_version"] not in (None, "1")
