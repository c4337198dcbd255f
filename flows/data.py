"""Data stage: ingest the configured dataset, then preprocess it into split sequences."""
from prefect import flow

from conf.schema import PipelineConfig
from tasks.ingestion import ingest
from tasks.io import CacheDir
from tasks.preprocessing import PreparedData, preprocess


@flow(name="data")
def data_flow(config: PipelineConfig, cache: CacheDir) -> PreparedData:
    """Ingest and preprocess; both steps are cached on their inputs."""
    raw = ingest(config.data, config.seed, cache)
    return preprocess(raw, config.preprocess, config.split, config.scenario, config.evaluation.group_attribute,
                      cache)
