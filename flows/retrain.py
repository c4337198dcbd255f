"""Incremental update: append new events, fine-tune the champion from its weights, gate, promote.

The "real-time update" of the product, done as frequent small runs (the nightly-retrain deployment).
"""
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from conf.schema import EventLogConfig, PipelineConfig
from flows.registration import registration_flow
from models.stopping import check_stop
from tasks.data.event_store import new_batches, store_dir, update_event_store
from tasks.data.ingestion import ingest, source_fingerprint
from tasks.data.prepare import preprocess
from tasks.data.preprocessing import check_catalogue_size
from tasks.data.pseudonyms import pseudonym_key_id
from tasks.io import open_cache_dir
from tasks.modelling.evaluation import evaluate
from tasks.modelling.export import export
from tasks.ops.gate import GateDecision
from tasks.ops.preflight import check_references
from tasks.ops.promotion import champion_model_config
from tasks.ops.registry import fetch_champion, registered_name
from tasks.ops.retraining import close_retrain, finetune
from tasks.ops.runs import name_after_run_folder, record_metrics_task, tracked_run
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
    logger = get_run_logger()
    logger.info("event store %s: %d new events appended (%d duplicates skipped), %d in all", store, update.added,
                update.duplicates, update.total)
    if update.added == 0 and not force:
        logger.info("nothing new since the last update: the champion stays as it is")
        return RetrainResult(0, None, None, None)

    with tracked_run(config, flow_run.get_id(), flow_run.get_name()) as tracked:
        run = tracked.run
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
        registration = registration_flow(config, prepared, candidate, run, champion, {"update": "incremental"})
        tracked.change = registration.change
        exported = (export(prepared, [candidate], metrics, config.export, config.train.max_seq_len, run.run_dir)
                    if registration.change is not None else None)
        close_retrain(run, metrics, exported, prepared, update)
        check_stop("closing the update")  # a stop until the alias moves withdraws what was registered
        tracked.promote()  # last: the champion changes only once everything else has succeeded
    decision = registration.decision
    logger.info("gate (%s): %s -> %s", decision.metric, decision.reason,
                f"promoted as version {registration.version}" if registration.version else "champion kept")
    return RetrainResult(update.added, run.run_dir, decision, registration.version)
