"""Where a flow's tasks run: `execution.task_runner` picks threads in this process or a Dask cluster.

The training and evaluation flows submit one task per model; under the Dask runner those tasks run
in parallel, one per worker process. Each worker process runs one task at a time: a training seeds
torch's global generator (`seed_everything`) and owns the process's torch threads, so two tasks in
one process would draw from each other's random streams, and metrics would depend on timing.
"""
import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import distributed
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from conf.schema import ExecutionConfig, PlannedModel, regime_of


def worker_api_settings() -> AbstractContextManager:
    """Settings that point task runs in other processes at this process's Prefect API.

    Dask ships the submitting context's settings to the worker. Without PREFECT_API_URL (Prefect's
    temporary server, as in `itx run` with no server) they carry no URL, and every worker process
    would start a temporary server of its own (see STACK_NOTES); give them the URL of ours instead.
    """
    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return nullcontext()
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the process-wide temporary server the flow run already talks to
    server.start()  # a no-op when running
    return temporary_settings(updates={PREFECT_API_URL: server.api_url})


class PipelineDaskTaskRunner(DaskTaskRunner):
    """DaskTaskRunner whose task runs report to the submitting process's Prefect API, temporary or not."""

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        with worker_api_settings():  # the context is serialised for the worker inside submit
            return super().submit(task, parameters, wait_for, dependencies)


def local_cluster_kwargs(execution: ExecutionConfig) -> dict[str, Any]:
    """LocalCluster options: dask_workers processes, each running one task with dask_threads_per_worker
    torch threads (set through the OpenMP/MKL variables, read when torch is imported in the worker)."""
    threads = str(execution.dask_threads_per_worker)
    # Dask's INFO lines (worker banners, connections) would outnumber the run's own log lines.
    return {"n_workers": execution.dask_workers, "threads_per_worker": 1, "processes": True,
            "dashboard_address": None,
            "env": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "DASK_LOGGING__DISTRIBUTED": "warning"}}


def task_runner_for(execution: ExecutionConfig) -> TaskRunner:
    """The task runner of a fanning-out flow: one thread (tasks in turn, as a plain loop would run them),
    the Dask cluster at dask_address, or a LocalCluster started and stopped by the flow run."""
    if execution.task_runner == "thread":
        return ThreadPoolTaskRunner(max_workers=1)
    if execution.dask_address:
        return PipelineDaskTaskRunner(address=execution.dask_address)
    return PipelineDaskTaskRunner(cluster_kwargs=local_cluster_kwargs(execution))


@contextmanager
def shared_task_runner(execution: ExecutionConfig) -> Iterator[TaskRunner]:
    """task_runner_for, with one LocalCluster for the whole block instead of one per flow run.

    A worker process pays its start and imports (torch, Lightning, MLflow: ~25 s on 2 busy CPUs) once,
    so the training and evaluation flows of a pipeline run share the cluster.
    """
    if execution.task_runner != "dask" or execution.dask_address:
        yield task_runner_for(execution)
        return
    logging.getLogger("distributed").setLevel(logging.WARNING)  # the scheduler runs in this process
    with distributed.LocalCluster(**local_cluster_kwargs(execution)) as cluster:
        yield task_runner_for(execution.model_copy(update={"dask_address": cluster.scheduler_address}))


def pretraining_leaders(plan: Sequence[PlannedModel]) -> dict[str, str]:
    """For each planned source-then-target training after the first of its model, the label of that first one.

    The trainings of one model at several target fractions pre-train on the same source data into
    the same folder (tasks.modelling.training.pretrain). Waiting for the first makes the others
    reuse its weights instead of pre-training again at the same time into the same checkpoint folder.
    """
    first: dict[str, str] = {}
    leaders: dict[str, str] = {}
    for planned in plan:
        if regime_of(planned.model) != "source_then_target":
            continue
        leader = first.setdefault(planned.model.name, planned.label)
        if leader != planned.label:
            leaders[planned.label] = leader
    return leaders
