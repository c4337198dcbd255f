"""Promotion: score a candidate against the registered champion, record the decision, and say who serves.

Shared by the pipeline (its exported model is the candidate) and the incremental flow (the
fine-tuned champion is the candidate). The registry calls themselves live in tasks/ops/registry.py.
"""
from __future__ import annotations

import logging
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from conf.schema import ModelConfig, PipelineConfig
from models.kinds import load_model
from tasks.ops import tracking
from tasks.ops.gate import GateDecision, run_gate
from tasks.io import write_json
from tasks.data.preprocessing import PreparedData
from tasks.ops.registry import PackagedModel
from tasks.ops.runs import RunContext
from tasks.modelling.training import TrainedModel

log = logging.getLogger(__name__)
GATE_FILE = "gate.json"


def gate_against_champion(candidate: TrainedModel, champion: PackagedModel | None, prepared: PreparedData,
                          config: PipelineConfig) -> GateDecision:
    """The gate's decision for the candidate, on the current data's test split."""
    champion_model = load_model(champion.model_file) if champion is not None else None
    champion_ids = champion.items["item_id"].to_list() if champion is not None else []
    champion_reads = champion.meta.get("reads", "all") if champion is not None else "all"
    decision = run_gate(load_model(Path(candidate.model_file.path)), candidate.reads, champion_model, champion_ids,
                        champion_reads, prepared, config)
    log.info("promotion gate (%s): %s -> %s", decision.metric, decision.reason,
             "promote" if decision.promoted else "keep the champion")
    return decision


def record_gate(run: RunContext, decision: GateDecision, version: str | None = None) -> Path:
    """Write gate.json into the run folder and log the decision to the run's MLflow run."""
    path = write_json(decision.as_dict() | {"registered_version": version}, run.run_dir / GATE_FILE)
    values = {"gate/candidate": decision.candidate, "gate/promoted": float(decision.promoted)}
    if decision.champion is not None:
        values["gate/champion"] = decision.champion
    tracking.log_metrics(run.tracking_uri, run.mlflow_run_id, values)
    tags = {"gate.decision": "promoted" if decision.promoted else "rejected", "gate.reason": decision.reason,
            "gate.metric": decision.metric}
    if version is not None:
        tags["registered_version"] = version
    tracking.set_tags(run.tracking_uri, run.mlflow_run_id, tags)
    tracking.log_files(run.tracking_uri, run.mlflow_run_id, [path])
    return path


def champion_model_config(champion: PackagedModel, config: PipelineConfig) -> ModelConfig:
    """The configured model the champion was trained as (its name must still be in config.models)."""
    name = champion.meta.get("name", "")
    base_name = name.split(":")[0]  # a transfer sweep's label is name:fraction
    for model in config.models:
        if model.name == base_name:
            return model
    raise ValueError(f"models: the champion was trained as '{name}', which is not one of the configured models "
                     f"{config.model_names()}; keep its model section in the config to update it")


promotion_gate = task(gate_against_champion, name="promotion-gate", cache_policy=NO_CACHE)
record_decision = task(record_gate, name="record-gate", cache_policy=NO_CACHE)
