"""Registration stage: the exported model meets the champion at the gate; if it passes it is registered and aliased."""
from prefect import flow

from conf.schema import PipelineConfig
from tasks.export import ExportedRecommendations
from tasks.gate import GateDecision
from tasks.preprocessing import PreparedData
from tasks.promotion import gate, record_decision
from tasks.registry import fetch_champion, promote_model, register_model, registered_name
from tasks.runs import RunContext
from tasks.training import TrainedModel


@flow(name="registration", flow_run_name="registration-{config.name}")
def registration_flow(config: PipelineConfig, prepared: PreparedData, trained: list[TrainedModel],
                      exported: ExportedRecommendations, run: RunContext) -> GateDecision:
    """Gate the exported model against models:/<name>@<alias>; register and alias it when it passes."""
    name = registered_name(config)
    candidate = next(model for model in trained if model.name == exported.model)
    champion = fetch_champion(run.tracking_uri, name, config.registry.alias, run.cache.path / f"champion-{run.name}")
    decision = gate(candidate, champion, prepared, config)
    version = None
    if decision.promoted:
        published = register_model(candidate, prepared, config.train.max_seq_len, run.run_dir / "model",
                                   run.tracking_uri, run.mlflow_run_id, name,
                                   {"run_name": run.name, "gate": decision.reason})
        promote_model(run.tracking_uri, published, config.registry.alias)
        version = published.version
    record_decision(run, decision, version)
    return decision
