"""Training stage: fit every planned model, each logging its curves to its own nested MLflow run."""
from prefect import flow

from conf.schema import ExecutionConfig, PipelineConfig, reads_item_text
from flows.runners import pretraining_leaders, task_runner_for
from tasks.data.preprocessing import PreparedData
from tasks.ops.runs import RunContext, data_tags
from tasks.modelling.training import TrainedModel, train, training_settings
from tasks.modelling.transfer import embed_items


# One thread by default; the pipeline passes the runner of config.execution (flows.runners).
@flow(name="training", flow_run_name="training-{config.name}", task_runner=task_runner_for(ExecutionConfig()))
def training_flow(config: PipelineConfig, prepared: PreparedData, run: RunContext) -> list[TrainedModel]:
    """Embed item texts if a text model needs them, then train the planned models (each cached), in parallel
    on the flow's task runner; a model's later target fractions wait for the first to pre-train on the source.
    The MLflow runs are tagged with the fingerprint of the data they train on."""
    data_tags(run, prepared)
    item_text = (embed_items(prepared, config.text, run.cache)
                 if any(reads_item_text(model) for model in config.models) else None)
    settings = training_settings(config)
    plan = config.model_plan()
    leaders = pretraining_leaders(plan)
    futures = {}
    for planned in plan:  # in plan order, so that a leader is submitted before the trainings waiting for it
        futures[planned.label] = train.submit(
            prepared, planned, settings, run.cache, item_text, run.tracking_uri, run.model_run_ids[planned.label],
            wait_for=[futures[leaders[planned.label]]] if planned.label in leaders else None)
    return [future.result() for future in futures.values()]
