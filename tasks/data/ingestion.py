"""Ingestion: bring a dataset's raw tables (interactions, items, users) into the run as Parquet.

Each source is an adapter in `tasks/data/adapters/` returning lazy frames (see its contract); this
module validates them and streams them to Parquet once per (config, seed, input files, pseudonym key
id) into a content-addressed folder, so every later stage reads the same files. With
`privacy.pseudonymize_users` the user ids are replaced here by keyed hashes (tasks/data/pseudonyms.py), so no
later stage sees a raw one.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from conf.schema import DataConfig, PrivacyConfig
from tasks import schemas
from tasks.data.adapters import DownloadError, RawFrames
from tasks.io import CacheDir, TableRef, atomic_path, fingerprint_file, fingerprint_text
from tasks.data.pseudonyms import key_id, pseudonym_key, pseudonymize_frames
from tasks.data.synthetic import generate_shop


@dataclass(frozen=True)
class RawTables:
    """References to the ingested raw tables, and where they came from (for messages)."""

    interactions: TableRef
    items: TableRef
    users: TableRef
    origin: str = ""  # the input the adapter read (a file, a folder, data.source=synthetic); "": the tables

    def source_of(self, table: TableRef) -> str:
        """What an error about `table` names: the user's input, not the ingested copy in the cache."""
        if not self.origin:
            return table.path
        if table is self.interactions:
            return self.origin
        return f"{self.origin} ({'users' if table is self.users else 'items'} table)"


def load_synthetic(cfg: DataConfig, seed: int) -> RawFrames:
    """Interactions, items and users of the embedded synthetic shop."""
    shop = generate_shop(cfg.synthetic, seed)
    return RawFrames(shop.interactions.lazy(), shop.items.lazy(), shop.users.lazy(), "data.source=synthetic")


def adapter(source: str):
    """The adapter module of a real data source (tasks/data/adapters/<source>.py)."""
    return importlib.import_module(f"tasks.data.adapters.{source}")


def load_frames(cfg: DataConfig, seed: int) -> RawFrames:
    """The configured dataset's raw tables as lazy frames."""
    if cfg.source == "synthetic":
        return load_synthetic(cfg, seed)
    return adapter(cfg.source).load(cfg.source_config())


def source_fingerprint(cfg: DataConfig) -> str:
    """Identity of the input files (path, size, modification time): changes when the data changes."""
    if cfg.source == "synthetic":
        return "generated"
    files = adapter(cfg.source).source_files(cfg.source_config())
    stats = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in files if path.exists()]
    return fingerprint_text(stats)


def as_lazy(frame: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """A lazy view of either kind of frame."""
    return frame.lazy() if isinstance(frame, pl.DataFrame) else frame


def validate_raw(interactions: pl.DataFrame | pl.LazyFrame, items: pl.DataFrame | pl.LazyFrame,
                 users: pl.DataFrame | pl.LazyFrame, origin: str) -> None:
    """Raise DataError when a raw table lacks a required column, has the wrong type, or is empty."""
    interactions, items, users = as_lazy(interactions), as_lazy(items), as_lazy(users)
    interaction_schema = interactions.collect_schema()
    schemas.check_schema(interaction_schema, schemas.INTERACTIONS, "interactions", origin)
    optional = {c: t for c, t in schemas.OPTIONAL_INTERACTION_COLUMNS.items() if c in interaction_schema}
    schemas.check_schema(interaction_schema, optional, "interactions", origin)
    schemas.check_schema(items.collect_schema(), schemas.ITEMS, "items", origin)
    schemas.check_schema(users.collect_schema(), schemas.USERS, "users", origin)
    counts = interactions.select(
        pl.len().alias("rows"), *(pl.col(c).null_count().alias(c) for c in ("user_id", "item_id", "timestamp")),
        (pl.col("timestamp") < 0).sum().alias("negative"), pl.col("timestamp").min().alias("earliest"),
    ).collect(engine="streaming").row(0, named=True)
    if counts["rows"] == 0:
        raise schemas.DataError(f"{origin}: interactions table is empty (expected at least one row)")
    for column in ("user_id", "item_id", "timestamp"):
        if counts[column]:
            raise schemas.DataError(f"{origin}: interactions column '{column}' has {counts[column]} empty values")
    if counts["negative"]:
        raise schemas.DataError(f"{origin}: interactions column 'timestamp' has {counts['negative']} negative values "
                                f"(the smallest {counts['earliest']}); expected seconds since 1970, or positions, >= 0")


def check_source(cfg: DataConfig, seed: int) -> None:
    """Raise DataError (or FileNotFoundError) when the configured input files cannot be ingested.

    The same checks as `ingest_dataset` (the adapter's own and `validate_raw`), without writing anything,
    so that a command-line run reports bad input in seconds, before a Prefect server or a run folder
    exists. Generated data needs no check; a source still to be downloaded is checked by `ingest`, after
    the download its retries protect.
    """
    if cfg.source == "synthetic":
        return
    module, source = adapter(cfg.source), cfg.source_config()
    if getattr(source, "download", False) and not all(path.is_file() for path in module.source_files(source)):
        return
    frames = module.load(source)
    validate_raw(frames.interactions, frames.items, frames.users, frames.origin)


def sink_parquet(frame: pl.LazyFrame, path: Path) -> TableRef:
    """Stream a lazy frame to Parquet (bounded memory), atomically, and return its reference."""
    with atomic_path(path) as temporary:
        frame.sink_parquet(temporary, engine="streaming")
    return TableRef(str(path), fingerprint_file(path))


def ingest_dataset(cfg: DataConfig, seed: int, cache_root: Path, privacy: PrivacyConfig | None = None) -> RawTables:
    """Load, validate and write the configured dataset's raw tables (user ids pseudonymised when `privacy`
    says so; the key's id, never the key, then names the folder)."""
    key = pseudonym_key(privacy)
    frames = load_frames(cfg, seed)
    validate_raw(frames.interactions, frames.items, frames.users, frames.origin)
    frames = pseudonymize_frames(frames, key)
    parts = (cfg.model_dump(mode="json"), seed, source_fingerprint(cfg))
    if key is not None:  # only then: the folders of runs without pseudonyms keep their names
        parts += (f"pseudonyms:{key_id(key)}",)
    out_dir = cache_root / f"ingest-{fingerprint_text(*parts)}"
    return RawTables(
        interactions=sink_parquet(frames.interactions, out_dir / "interactions.parquet"),
        items=sink_parquet(frames.items, out_dir / "items.parquet"),
        users=sink_parquet(frames.users, out_dir / "users.parquet"),
        origin=frames.origin,
    )


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry condition of `ingest`: retry downloads and other transient failures, never bad input.

    A malformed file fails the same way on every try; retrying it only delays the error by the
    retry delays. A failed download (DownloadError) is bad input that a retry may cure.
    """
    error = state.data
    return isinstance(error, DownloadError) or not isinstance(error, ValueError)


# `files` (the input files' fingerprint) and `pseudonym_key_id` (the key's id, None without pseudonyms) are
# arguments only so that they enter the cache key: the key itself never does.
@task(name="ingest", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input,
      cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def ingest(cfg: DataConfig, seed: int, cache: CacheDir, files: str = "", privacy: PrivacyConfig | None = None,
           pseudonym_key_id: str | None = None) -> RawTables:
    """Prefect task: ingest the configured dataset (retried: real sources may be downloads)."""
    raw = ingest_dataset(cfg, seed, cache.path, privacy)
    rows = pl.scan_parquet(raw.interactions.path).select(pl.len()).collect().item()
    pseudonyms = f", user ids pseudonymised (key id {pseudonym_key_id})" if pseudonym_key_id else ""
    get_run_logger().info("ingested %s: %d interactions -> %s%s", cfg.source, rows,
                          Path(raw.interactions.path).parent, pseudonyms)
    return raw
