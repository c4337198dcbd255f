"""The whole pipeline: data -> training -> evaluation -> export -> registration, one MLflow run per pipeline run."""
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from conf.schema import PipelineConfig
from flows.data import data_flow
from flows.evaluation import evaluation_flow
from flows.export import export_flow
from flows.registration import registration_flow
from flows.runners import shared_task_runner
from flows.training import training_flow
from models.stopping import check_stop
from tasks.modelling.export import ExportedRecommendations
from tasks.ops.artifacts import publish_artifacts
from tasks.io import TableRef, open_cache_dir
from tasks.ops.preflight import check_references
from tasks.data.preprocessing import PreparedData
from tasks.ops.runs import close_run, name_after_run_folder, tracked_run


@dataclass(frozen=True)
class PipelineResult:
    """Where a finished run put its outputs."""

    run_dir: Path
    mlflow_run_id: str
    tracking_uri: str
    metrics: TableRef
    recommendations: ExportedRecommendations
    prepared: PreparedData


@flow(name="interest-transfer", flow_run_name=name_after_run_folder, log_prints=True)
def pipeline_flow(config: PipelineConfig) -> PipelineResult:
    """Run every stage on the configured data; outputs go to <output.root>/<run name>/."""
    check_references(config)  # a missing pseudonym key, text model or output folder: before anything is created
    # Data first: bad input fails here, before a run folder or an MLflow run exists.
    prepared = data_flow(config, open_cache_dir(Path(config.output.root).resolve() / "cache"))
    check_stop("the data stage")
    with tracked_run(config, flow_run.get_id(), flow_run.get_name()) as tracked:
        run = tracked.run
        with shared_task_runner(config.execution) as runner:  # one Dask cluster (or thread) for both stages
            trained = training_flow.with_options(task_runner=runner)(config, prepared, run)
            metrics = evaluation_flow.with_options(task_runner=runner)(config, prepared, trained, run)
        exported = export_flow(config, prepared, trained, metrics, run)
        check_stop("the export")
        if config.registry.enabled:
            candidate = next(model for model in trained if model.name == exported.model)
            tracked.change = registration_flow(config, prepared, candidate, run).change
        check_stop("the registration")  # a stop until the alias moves withdraws what was registered
        close_run(run, metrics, exported, prepared)
        summary = publish_artifacts(run, config, metrics, exported)  # it reads the finished run folder
        check_stop("closing the run")
        tracked.promote()  # last: the champion changes only once everything else has succeeded
        get_run_logger().info(summary)  # the flow run's log ends with its summary
    return PipelineResult(run.run_dir, run.mlflow_run_id, run.tracking_uri, metrics, exported, prepared)
