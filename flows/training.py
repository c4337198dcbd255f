"""Training stage: fit every planned model, each logging its curves to its own nested MLflow run."""
from prefect import flow

from conf.schema import PipelineConfig
from tasks.preprocessing import PreparedData
from tasks.runs import RunContext
from tasks.training import TrainedModel, train, training_settings
from tasks.transfer import embed_items


@flow(name="training")
def training_flow(config: PipelineConfig, prepared: PreparedData, run: RunContext) -> list[TrainedModel]:
    """Embed item texts if a text model needs them, then train the planned models in order (each cached)."""
    item_text = (embed_items(prepared, config.text, run.cache)
                 if any(model.kind == "bert_transfer" for model in config.models) else None)
    settings = training_settings(config)
    return [
        train(prepared, planned, settings, run.cache, item_text, run.tracking_uri, run.model_run_ids[planned.label])
        for planned in config.model_plan()
    ]
