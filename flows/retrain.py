"""Incremental update: append new events, fine-tune the champion from its weights, gate, promote.

The "real-time update" of the product, done as frequent small runs (the nightly-retrain deployment).
"""
from dataclasses import dataclass
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from conf.schema import EventLogConfig, PipelineConfig
from tasks.data.event_store import new_batches, store_dir, update_event_store
from tasks.modelling.evaluation import evaluate
from tasks.modelling.export import export
from tasks.ops.gate import GateDecision
from tasks.data.ingestion import ingest, source_fingerprint
from tasks.io import open_cache_dir
from tasks.data.prepare import preprocess
from tasks.data.preprocessing import check_catalogue_size
from tasks.ops.preflight import check_references
from tasks.data.pseudonyms import pseudonym_key_id
from tasks.ops.promotion import champion_model_config, promotion_gate, record_decision
from tasks.ops.registry import fetch_champion, promote_model, register_model, registered_name, withdraw
from tasks.ops.retraining import close_retrain, finetune
from tasks.ops.runs import fail_run, name_after_run_folder, open_run, record_metrics_task
from tasks.ops.tracking import resolve_tracking_uri


@dataclass(frozen=True)
class RetrainResult:
    """What an incremental run did."""

    appended: int  # new events added to the store
    run_dir: Path | None  # None when there was nothing new to train on
    decision: GateDecision | None
    version: str | None  # the registry version promoted, if any


@flow(name="retrain", flow_run_name=name_after_run_folder, log_prints=True)
def retrain_flow(config: PipelineConfig, new_events: EventLogConfig | None = None, finetune_epochs: int = 3,
                 force: bool = False) -> RetrainResult:
    """Append new events (a file, or each new file of a folder) to the event store, fine-tune the registered
    champion on the grown log for at most `finetune_epochs`, and promote the result only if it is not worse
    than the champion on held-out data. Without new events nothing is trained unless `force` is set."""
    check_references(config)  # before anything is created
    root = Path(config.output.root).resolve()
    cache = open_cache_dir(root / "cache")
    name = registered_name(config)
    champion = fetch_champion(resolve_tracking_uri(config.tracking), name, config.registry.alias,
                              cache.path / f"champion-{flow_run.get_id() or 'local'}")
    if champion is None:
        raise ValueError(f"registry: no version of '{name}' holds the alias '{config.registry.alias}'; "
                         "run the pipeline first (itx run) so that a champion is registered")
    config = config.model_copy(update={"models": [champion_model_config(champion, config)], "export":
                                       config.export.model_copy(update={"model": None})})
    store = store_dir(config.output.root, config.name)
    base = ingest(config.data, config.seed, cache, source_fingerprint(config.data), config.privacy,
                  pseudonym_key_id(config.privacy))
    update = update_event_store(store, base, new_batches(store, new_events), config.privacy)
    print(f"event store {store}: {update.added} new events appended ({update.duplicates} duplicates skipped), "
          f"{update.total} in all")
    if update.added == 0 and not force:
        print("nothing new since the last update: the champion stays as it is")
        return RetrainResult(0, None, None, None)

    run = open_run(config, flow_run.get_id(), flow_run.get_name())
    change = None  # what this run registered: withdrawn if anything fails before the run's end
    try:
        prepared = preprocess(update.raw, config.preprocess, config.split, config.scenario,
                              config.evaluation.group_attribute, run.cache, config.seed)
        check_catalogue_size(prepared, config.evaluation.ks, config.export.top_k)
        label = config.models[0].name
        candidate = finetune(champion.model_file, champion.items["item_id"].to_list(), label, prepared, config,
                             finetune_epochs, run.cache.path / f"finetune-{run.name}", run.tracking_uri,
                             run.model_run_ids[label])
        table = evaluate(prepared, candidate, config.evaluation, config.scenario.name, config.train.max_seq_len,
                         run.cache)
        metrics = record_metrics_task(run, [candidate], [table], prepared)
        decision = promotion_gate(candidate, champion, prepared, config)
        version, exported = None, None
        if decision.promoted:
            change = register_model(candidate, prepared, config.train.max_seq_len, run.run_dir / "model",
                                    run.tracking_uri, run.mlflow_run_id, name, config.registry.alias,
                                    {"run_name": run.name, "gate": decision.reason, "update": "incremental"},
                                    config.registry.max_request_bytes)
            version = change.published.version
            exported = export(prepared, [candidate], metrics, config.export, config.train.max_seq_len, run.run_dir)
        record_decision(run, decision, version)
        close_retrain(run, metrics, exported, prepared, update)
        if change is not None:  # last: the champion changes only once everything else has succeeded
            promote_model(run.tracking_uri, change)
    except BaseException as error:
        if change is not None:
            withdraw(run.tracking_uri, change)  # a plain call: no task machinery while failing
        fail_run(run, error)
        raise
    print(f"gate ({decision.metric}): {decision.reason} -> "
          f"{'promoted as version ' + version if version else 'champion kept'}")
    return RetrainResult(update.added, run.run_dir, decision, version)
