"""Training stage: fit every configured model, each logging its curves to its own nested MLflow run."""
from prefect import flow

from conf.schema import PipelineConfig
from tasks.preprocessing import PreparedData
from tasks.runs import RunContext
from tasks.training import TrainedModel, train


@flow(name="training")
def training_flow(config: PipelineConfig, prepared: PreparedData, run: RunContext) -> list[TrainedModel]:
    """Train the configured models in order (each cached on data, config and seed)."""
    return [
        train(prepared, model, config.train, config.seed, config.evaluation.exclude_seen, run.cache,
              run.tracking_uri, run.model_run_ids[model.name])
        for model in config.models
    ]
