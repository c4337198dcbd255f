"""Evaluation stage: rank for every user with every model; record the metrics; in a transfer run, the gain report."""
from prefect import flow

from conf.schema import ExecutionConfig, PipelineConfig
from flows.runners import task_runner_for
from tasks.modelling.evaluation import evaluate, score_transfer_users
from tasks.io import TableRef
from tasks.data.preprocessing import PreparedData
from tasks.ops.runs import RunContext, record_metrics_task, record_plots_task, record_transfer_report_task
from tasks.modelling.training import TrainedModel


# One thread by default; the pipeline passes the runner of config.execution (flows.runners).
@flow(name="evaluation", flow_run_name="evaluation-{config.name}", task_runner=task_runner_for(ExecutionConfig()))
def evaluation_flow(config: PipelineConfig, prepared: PreparedData, trained: list[TrainedModel],
                    run: RunContext) -> TableRef:
    """Evaluate each model on valid and test (in parallel on the flow's task runner), write metrics.csv and its
    bar chart, log them to MLflow; then transfer_gain.csv."""
    evaluations = [
        evaluate.submit(prepared, model, config.evaluation, config.scenario.name, config.train.max_seq_len, run.cache)
        for model in trained
    ]
    scorings = ([score_transfer_users.submit(prepared, model, config.scenario, config.transfer, config.evaluation,
                                             config.train.max_seq_len, config.seed) for model in trained]
                if config.is_transfer() else [])
    metrics = record_metrics_task(run, trained, [future.result() for future in evaluations], prepared)
    record_plots_task(run, metrics)
    if scorings:
        record_transfer_report_task(run, [future.result() for future in scorings], config)
    return metrics
