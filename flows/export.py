"""Export stage: top-K recommendations of the chosen model for every user."""
from prefect import flow

from conf.schema import PipelineConfig
from tasks.modelling.export import ExportedRecommendations, export
from tasks.io import TableRef
from tasks.data.preprocessing import PreparedData
from tasks.ops.runs import RunContext
from tasks.modelling.training import TrainedModel


@flow(name="export", flow_run_name="export-{config.name}")
def export_flow(config: PipelineConfig, prepared: PreparedData, trained: list[TrainedModel], metrics: TableRef,
                run: RunContext) -> ExportedRecommendations:
    """Write recommendations.parquet and .csv into the run folder."""
    return export(prepared, trained, metrics, config.export, config.train.max_seq_len, run.run_dir)
