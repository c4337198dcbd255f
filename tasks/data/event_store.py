"""The event store of incremental runs: the configured dataset plus every batch of new events appended since.

Layout of `<output.root>/event_store/<config name>/`:
  interactions.parquet, items.parquet, users.parquet   the raw tables (ingestion's contract)
  manifest.json                                        appended batches: file, fingerprint, rows added;
                                                       the id of the pseudonym key (null: raw user ids)

The store starts as a copy of the configured dataset's ingested tables. Each new batch (a generic
event log, validated by the events adapter) is deduplicated within itself and against the store on
(user_id, item_id, timestamp), then appended; new items and users get rows of their own. Rows keep
their arrival order (the dataset's, then each batch's in file order, batches in the order appended):
under `preprocess.tie_order: file` that order ranks a user's events with equal timestamps. Every file
is replaced atomically, the manifest last, so an interrupted append leaves the previous store intact.
With `privacy.pseudonymize_users` each batch's user ids are pseudonymised with the store's key before
anything else, so they match the stored ones; a store never mixes two keys, or pseudonyms and raw ids.
One writer at a time: scheduled retraining runs one after another.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from conf.schema import EventLogConfig, PrivacyConfig
from tasks import schemas
from tasks.data.adapters import events as event_log
from tasks.data.ingestion import RawTables, validate_raw
from tasks.io import TableRef, atomic_path, fingerprint_file, inside, write_json, write_parquet
from tasks.data.pseudonyms import key_id, pseudonym_key, pseudonymize_frames

log = logging.getLogger(__name__)
EVENT_KEY = ["user_id", "item_id", "timestamp"]
TABLES = ("interactions", "items", "users")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StoreUpdate:
    """The store's tables after an append, and what the append did."""

    raw: RawTables
    added: int  # new events appended
    duplicates: int  # events of the batch already in the store (or repeated within it)
    total: int  # events in the store now
    new_items: int
    new_users: int


def store_tables(store: Path) -> RawTables:
    """References to the store's current tables."""
    return RawTables(*(TableRef(str(store / f"{name}.parquet"), fingerprint_file(store / f"{name}.parquet"))
                       for name in TABLES))


def read_manifest(store: Path) -> dict:
    path = store / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {"batches": []}


def initialise_store(store: Path, base: RawTables) -> None:
    """Copy the configured dataset's raw tables into an empty store (nothing to do if it exists)."""
    if (store / MANIFEST).exists():
        return
    store.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        with atomic_path(store / f"{name}.parquet") as temporary:
            shutil.copyfile(getattr(base, name).path, temporary)
    write_json({"created": datetime.now(timezone.utc).isoformat(), "batches": []}, store / MANIFEST)


def align(frame: pl.DataFrame, like: pl.Schema) -> pl.DataFrame:
    """`frame` with the columns of `like`, in its order and types: missing ones null, extra ones dropped."""
    return frame.select([
        (pl.col(name) if name in frame.columns else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in like.items()
    ])


def append_batch(store: Path, batch: EventLogConfig, key: bytes | None = None) -> StoreUpdate:
    """Validate a batch of new events and append what the store does not hold yet (user ids pseudonymised
    with `key` first, when given: the store's key, see `check_store_key`)."""
    frames = event_log.load(batch)
    validate_raw(frames.interactions, frames.items, frames.users, frames.origin)
    frames = pseudonymize_frames(frames, key)
    current = pl.read_parquet(store / "interactions.parquet")
    incoming = align(frames.interactions.collect(), current.schema)
    unique = incoming.unique(subset=EVENT_KEY, keep="first", maintain_order=True)
    fresh = unique.join(current.select(EVENT_KEY), on=EVENT_KEY, how="anti", maintain_order="left")
    duplicates = incoming.height - fresh.height

    items = pl.read_parquet(store / "items.parquet")
    new_items = align(frames.items.collect(), items.schema).join(items.select("item_id"), on="item_id", how="anti")
    new_items = new_items.filter(pl.col("item_id").is_in(fresh["item_id"].implode()))
    users = pl.read_parquet(store / "users.parquet")
    new_users = align(frames.users.collect(), users.schema).join(users.select("user_id"), on="user_id", how="anti")
    new_users = new_users.filter(pl.col("user_id").is_in(fresh["user_id"].implode()))

    if fresh.height:
        write_parquet(pl.concat([current, fresh]), store / "interactions.parquet")
        write_parquet(pl.concat([items, new_items]), store / "items.parquet")
        write_parquet(pl.concat([users, new_users]), store / "users.parquet")
    manifest = read_manifest(store)
    manifest["batches"].append({
        "file": str(Path(batch.interactions).resolve()),
        "fingerprint": fingerprint_file(Path(batch.interactions)),
        "appended_at": datetime.now(timezone.utc).isoformat(),
        "rows": incoming.height, "added": fresh.height, "duplicates": duplicates,
    })
    write_json(manifest, store / MANIFEST)  # last: the store's tables are complete by now
    log.info("event store %s: %d new events appended, %d duplicates skipped, %d new items, %d new users",
             store, fresh.height, duplicates, new_items.height, new_users.height)
    return StoreUpdate(store_tables(store), fresh.height, duplicates, current.height + fresh.height,
                       new_items.height, new_users.height)


def store_dir(root: str, config_name: str) -> Path:
    """The event store of a config: <output.root>/event_store/<config name> (ValueError if the name leads out of it)."""
    return inside(root, "event_store", config_name, setting="name")


def new_batches(store: Path, new_events: EventLogConfig | None) -> list[EventLogConfig]:
    """One batch per file not appended yet: the configured file, or every file of the configured folder
    (name order; hidden files skipped). A folder that does not exist yet holds nothing new."""
    if new_events is None:
        return []
    location = Path(new_events.interactions).expanduser()
    if location.is_dir():
        files = sorted(p for p in location.iterdir() if p.is_file() and not p.name.startswith("."))
    elif location.is_file():
        files = [location]
    elif location.suffix:  # a file that should be there
        raise schemas.DataError(f"new_events.interactions: {location} does not exist "
                                "(expected a CSV/TSV/Parquet event log, or a folder of them)")
    else:
        files = []
    done = {batch["fingerprint"] for batch in read_manifest(store)["batches"]}
    return [new_events.model_copy(update={"interactions": str(path)}) for path in files
            if fingerprint_file(path) not in done]


def check_store_key(store: Path, key: bytes | None, created: bool) -> None:
    """Record the pseudonym key's id in a store just created; otherwise raise ValueError unless the store's
    user ids were made with the same key (or, without a key, are raw: a store from before has no key id)."""
    manifest = read_manifest(store)
    wanted = key_id(key)
    if created:
        write_json(manifest | {"pseudonym_key_id": wanted}, store / MANIFEST)
        return
    held = manifest.get("pseudonym_key_id")
    if held != wanted:
        def ids(identity: str | None) -> str:
            return f"pseudonyms of key id {identity}" if identity else "raw user ids"

        raise ValueError(f"event store {store}: holds {ids(held)}, but this run's config gives {ids(wanted)} "
                         "(privacy.pseudonymize_users and its key); one store never mixes the two: restore the "
                         "key or setting, or use another output.root or config name")


def update_store(store: Path, base: RawTables, batches: list[EventLogConfig],
                 privacy: PrivacyConfig | None = None) -> StoreUpdate:
    """Create the store from the dataset if needed, then append each batch in order (user ids pseudonymised
    as `privacy` says, with the key the store was created with)."""
    key = pseudonym_key(privacy)
    created = not (store / MANIFEST).exists()
    initialise_store(store, base)
    check_store_key(store, key, created)
    added = duplicates = new_items = new_users = 0
    for batch in batches:
        update = append_batch(store, batch, key)
        added, duplicates = added + update.added, duplicates + update.duplicates
        new_items, new_users = new_items + update.new_items, new_users + update.new_users
    total = pl.scan_parquet(store / "interactions.parquet").select(pl.len()).collect().item()
    return StoreUpdate(store_tables(store), added, duplicates, total, new_items, new_users)


update_event_store = task(update_store, name="update-event-store", cache_policy=NO_CACHE)
