"""execution.task_runner=dask end to end: the tiny pipeline on a LocalCluster of 2 worker processes gives the
thread runner's metrics, its trainings run in the workers, and the run publishes its artifacts, plot and tags."""
import os

import distributed
import polars as pl
import pytest
import torch
from mlflow.tracking import MlflowClient
from polars.testing import assert_frame_equal
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from conf.schema import ExecutionConfig
from flows.pipeline import pipeline_flow
from flows.runners import PipelineDaskTaskRunner, task_runner_for, worker_api_settings
from tasks.ops.runs import data_fingerprint

# The tests of the two runs are slow: two tiny pipeline runs and a Dask cluster, ~80 s on 2 busy CPUs.
slow = pytest.mark.slow


class TaskRecorder(distributed.SchedulerPlugin):
    """Remembers the worker process (pid) that computed each finished task."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.pids: dict[str, int] = {}

    def transition(self, key, start, finish, *args, **kwargs):
        worker = kwargs.get("worker")
        if finish == "memory" and worker in self.scheduler.workers:
            self.pids[str(key)] = self.scheduler.workers[worker].pid


@pytest.fixture(scope="module")
def recorders(monkeypatch_module):
    """Every LocalCluster started during the module records where its tasks ran."""
    started = []

    class RecordingCluster(distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(TaskRecorder(self.scheduler))
            self.scheduler.add_plugin(started[-1])

    monkeypatch_module.setattr(distributed, "LocalCluster", RecordingCluster)
    return started


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def thread_and_dask_runs(tiny_config_factory, recorders):
    """The tiny run on the default thread runner, then on Dask (same seed, same torch threads per process)."""
    thread = pipeline_flow(tiny_config_factory())
    config = tiny_config_factory("execution.task_runner=dask", "execution.dask_workers=2",
                                 f"execution.dask_threads_per_worker={torch.get_num_threads()}")
    return thread, config, pipeline_flow(config)


def test_task_runner_follows_the_execution_config():
    assert task_runner_for(ExecutionConfig()).__class__.__name__ == "ThreadPoolTaskRunner"
    local = task_runner_for(ExecutionConfig(task_runner="dask", dask_workers=3, dask_threads_per_worker=2))
    assert isinstance(local, PipelineDaskTaskRunner) and local.address is None
    assert local.cluster_kwargs | {"env": None} == {"n_workers": 3, "threads_per_worker": 1, "processes": True,
                                                     "dashboard_address": None, "env": None}
    assert local.cluster_kwargs["env"]["OMP_NUM_THREADS"] == "2"
    remote = task_runner_for(ExecutionConfig(task_runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert remote.address == "tcp://10.0.0.5:8786" and not remote.cluster_kwargs



def test_worker_settings_carry_the_url_of_this_process_temporary_server():
    # Without PREFECT_API_URL the flow talks to a temporary server; Dask workers must be sent its URL,
    # or each worker process starts a server of its own.
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert get_current_settings().api.url is None
        with worker_api_settings():
            assert get_current_settings().api.url == SubprocessASGIServer().api_url
        assert get_current_settings().api.url is None
    with worker_api_settings():  # a configured API is left alone
        assert get_current_settings().api.url == PREFECT_API_URL.value()

@slow
def test_dask_run_gives_the_thread_runs_metrics(thread_and_dask_runs):
    thread, _, dask = thread_and_dask_runs
    assert_frame_equal(pl.read_csv(dask.metrics.path), pl.read_csv(thread.metrics.path), check_exact=False,
                       rtol=1e-6, atol=1e-6)
    assert dask.prepared.sequences.fingerprint == thread.prepared.sequences.fingerprint


@slow
def test_trainings_and_evaluations_ran_in_two_worker_processes(thread_and_dask_runs, recorders):
    _, config, _ = thread_and_dask_runs
    assert len(recorders) == 1, "training and evaluation should share one LocalCluster"
    pids = recorders[0].pids
    trainings = {key: pid for key, pid in pids.items() if key.startswith("train-")}
    evaluations = {key: pid for key, pid in pids.items() if key.startswith("evaluate-")}
    assert len(trainings) == len(evaluations) == len(config.model_plan()), pids
    assert os.getpid() not in pids.values()
    assert len(set(trainings.values())) == 2, trainings


@slow
def test_run_publishes_its_summary_and_metrics_table_as_prefect_artifacts(thread_and_dask_runs):
    _, config, dask = thread_and_dask_runs
    flow_run_id = MlflowClient(dask.tracking_uri).get_run(dask.mlflow_run_id).data.tags["prefect_flow_run_id"]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["itx-tiny", "itx-tiny-metrics"])))
    ours = {artifact.key: artifact for artifact in artifacts if str(artifact.flow_run_id) == flow_run_id}
    assert set(ours) == {"itx-tiny", "itx-tiny-metrics"}
    summary = ours["itx-tiny"]
    assert summary.type == "markdown"
    assert dask.mlflow_run_id in summary.data and str(dask.run_dir) in summary.data
    assert f"`{dask.recommendations.model}`: top-{config.export.top_k}" in summary.data
    assert "| model | NDCG | HR | MRR | P | R | F1 | NDCG F | NDCG M |" in summary.data
    assert ours["itx-tiny-metrics"].type == "table"


@slow
def test_mlflow_run_holds_the_metrics_plot_and_every_run_the_data_fingerprint(thread_and_dask_runs):
    _, config, dask = thread_and_dask_runs
    assert (dask.run_dir / "test_metrics.png").read_bytes().startswith(b"\x89PNG")
    client = MlflowClient(dask.tracking_uri)
    assert "test_metrics.png" in {a.path for a in client.list_artifacts(dask.mlflow_run_id)}
    parent = client.get_run(dask.mlflow_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{dask.mlflow_run_id}'")
    assert len(children) == len(config.model_plan())
    fingerprint = data_fingerprint(dask.prepared)
    assert [run.data.tags["data_fingerprint"] for run in [parent, *children]] == [fingerprint] * (1 + len(children))
    assert parent.data.tags["data_events_fingerprint"] == dask.prepared.events.fingerprint
