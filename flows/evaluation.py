"""Evaluation stage: rank the full catalogue for every user with every model; record the metrics."""
from prefect import flow

from conf.schema import PipelineConfig
from tasks.evaluation import evaluate
from tasks.io import TableRef
from tasks.preprocessing import PreparedData
from tasks.runs import RunContext, log_metrics
from tasks.training import TrainedModel


@flow(name="evaluation")
def evaluation_flow(config: PipelineConfig, prepared: PreparedData, trained: list[TrainedModel],
                    run: RunContext) -> TableRef:
    """Evaluate each model on valid and test, then write metrics.csv and log to MLflow."""
    tables = [
        evaluate(prepared, model, config.evaluation, config.scenario.name, config.train.max_seq_len, run.cache)
        for model in trained
    ]
    return log_metrics(run, trained, tables, prepared)
