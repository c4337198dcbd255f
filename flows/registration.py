"""Registration stage: the exported model meets the champion at the gate; if it passes it is registered.

The alias is not moved here: the pipeline moves it as its very last step (`promote_model`) and withdraws
the version if anything fails before that, so a failed run leaves the registry unchanged.
"""
from prefect import flow

from conf.schema import PipelineConfig
from tasks.modelling.export import ExportedRecommendations
from tasks.data.preprocessing import PreparedData
from tasks.ops.promotion import promotion_gate, record_decision
from tasks.ops.registry import RegistryChange, fetch_champion, register_model, registered_name, withdraw
from tasks.ops.runs import RunContext
from tasks.modelling.training import TrainedModel


@flow(name="registration", flow_run_name="registration-{config.name}")
def registration_flow(config: PipelineConfig, prepared: PreparedData, trained: list[TrainedModel],
                      exported: ExportedRecommendations, run: RunContext) -> RegistryChange | None:
    """Gate the exported model against models:/<name>@<alias>; register it when it passes (None: it did not)."""
    name = registered_name(config)
    candidate = next(model for model in trained if model.name == exported.model)
    champion = fetch_champion(run.tracking_uri, name, config.registry.alias, run.cache.path / f"champion-{run.name}")
    decision = promotion_gate(candidate, champion, prepared, config)
    change = None
    if decision.promoted:
        change = register_model(candidate, prepared, config.train.max_seq_len, run.run_dir / "model",
                                run.tracking_uri, run.mlflow_run_id, name, config.registry.alias,
                                {"run_name": run.name, "gate": decision.reason}, config.registry.max_request_bytes)
    try:
        record_decision(run, decision, change.published.version if change else None)
    except BaseException:
        if change is not None:  # the pipeline never learns of the version: withdraw it here
            withdraw(run.tracking_uri, change)
        raise
    return change
