"""Evaluation stage: rank for every user with every model; record the metrics; in a transfer run, the gain report."""
from prefect import flow

from conf.schema import PipelineConfig
from tasks.evaluation import evaluate, score_transfer_users
from tasks.io import TableRef
from tasks.preprocessing import PreparedData
from tasks.runs import RunContext, log_metrics, transfer_report
from tasks.training import TrainedModel


@flow(name="evaluation")
def evaluation_flow(config: PipelineConfig, prepared: PreparedData, trained: list[TrainedModel],
                    run: RunContext) -> TableRef:
    """Evaluate each model on valid and test, write metrics.csv and log to MLflow; then transfer_gain.csv."""
    tables = [
        evaluate(prepared, model, config.evaluation, config.scenario.name, config.train.max_seq_len, run.cache)
        for model in trained
    ]
    metrics = log_metrics(run, trained, tables, prepared)
    if config.is_transfer():
        per_user = [score_transfer_users(prepared, model, config.scenario, config.transfer, config.evaluation,
                                         config.train.max_seq_len, config.seed) for model in trained]
        transfer_report(run, per_user, config)
    return metrics
