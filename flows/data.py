"""Data stage: ingest the configured dataset, then preprocess it into split sequences."""
from prefect import flow

from conf.schema import PipelineConfig
from tasks.data.ingestion import ingest, source_fingerprint
from tasks.io import CacheDir
from tasks.data.prepare import preprocess
from tasks.data.preprocessing import PreparedData, check_catalogue_size
from tasks.data.pseudonyms import pseudonym_key_id


@flow(name="data", flow_run_name="data-{config.name}")
def data_flow(config: PipelineConfig, cache: CacheDir) -> PreparedData:
    """Ingest (user ids pseudonymised when config.privacy says so) and preprocess; both steps are cached on
    their inputs."""
    raw = ingest(config.data, config.seed, cache, source_fingerprint(config.data), config.privacy,
                 pseudonym_key_id(config.privacy))
    prepared = preprocess(raw, config.preprocess, config.split, config.scenario, config.evaluation.group_attribute,
                          cache, config.seed)
    check_catalogue_size(prepared, config.evaluation.ks, config.export.top_k)  # before any training
    return prepared
