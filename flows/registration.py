"""Registration stage, shared by the pipeline and the incremental update: the candidate meets the champion at
the gate; if it passes it is registered as a new version.

The alias is not moved here: the run moves it as its very last step (`TrackedRun.promote`), and withdraws
the version if anything fails before that, so a failed run leaves the registry unchanged.
"""
from dataclasses import dataclass

from prefect import flow

from conf.schema import PipelineConfig
from tasks.data.preprocessing import PreparedData
from tasks.modelling.training import TrainedModel
from tasks.ops.gate import GateDecision
from tasks.ops.promotion import promotion_gate, record_decision
from tasks.ops.registry import PackagedModel, RegistryChange, fetch_champion, register_model, registered_name, withdraw
from tasks.ops.runs import RunContext


@dataclass(frozen=True)
class Registration:
    """The gate's decision, and the version registered when the candidate passed (None: it did not)."""

    decision: GateDecision
    change: RegistryChange | None

    @property
    def version(self) -> str | None:
        return self.change.published.version if self.change is not None else None


@flow(name="registration", flow_run_name="registration-{config.name}")
def registration_flow(config: PipelineConfig, prepared: PreparedData, candidate: TrainedModel, run: RunContext,
                      champion: PackagedModel | None = None, tags: dict[str, str] | None = None
                      ) -> Registration:
    """Gate the candidate against models:/<name>@<alias> (`champion`, fetched when not given); register it
    when it passes, with `tags` on the version, and record the decision (gate.json)."""
    name = registered_name(config)
    if champion is None:
        champion = fetch_champion(run.tracking_uri, name, config.registry.alias,
                                  run.cache.path / f"champion-{run.name}")
    decision = promotion_gate(candidate, champion, prepared, config)
    change = None
    if decision.promoted:
        change = register_model(candidate, prepared, config.train.max_seq_len, run.run_dir / "model",
                                run.tracking_uri, run.mlflow_run_id, name, config.registry.alias,
                                {"run_name": run.name, "gate": decision.reason} | (tags or {}),
                                config.registry.max_request_bytes)
    try:
        record_decision(run, decision, change.published.version if change else None)
    except BaseException:
        if change is not None:  # the caller never learns of the version: withdraw it here
            withdraw(run.tracking_uri, change)
        raise
    return Registration(decision, change)
