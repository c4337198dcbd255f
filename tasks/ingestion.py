"""Ingestion: bring a dataset's raw tables (interactions, items, users) into the run as Parquet.

Each source is an adapter in `tasks/adapters/` returning lazy frames (see its contract); this
module validates them and streams them to Parquet once per (config, seed, input files) into a
content-addressed folder, so every later stage reads the same files.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from conf.schema import DataConfig
from tasks import schemas
from tasks.adapters import RawFrames
from tasks.io import CacheDir, TableRef, atomic_path, fingerprint_file, fingerprint_text
from tasks.synthetic import generate_shop


@dataclass(frozen=True)
class RawTables:
    """References to the ingested raw tables."""

    interactions: TableRef
    items: TableRef
    users: TableRef


def load_synthetic(cfg: DataConfig, seed: int) -> RawFrames:
    """Interactions, items and users of the embedded synthetic shop."""
    shop = generate_shop(cfg.synthetic, seed)
    return RawFrames(shop.interactions.lazy(), shop.items.lazy(), shop.users.lazy(), "data.source=synthetic")


def adapter(source: str):
    """The adapter module of a real data source (tasks/adapters/<source>.py)."""
    return importlib.import_module(f"tasks.adapters.{source}")


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
        pl.len().alias("rows"), *(pl.col(c).null_count().alias(c) for c in ("user_id", "item_id", "timestamp"))
    ).collect(engine="streaming").row(0, named=True)
    if counts["rows"] == 0:
        raise schemas.DataError(f"{origin}: interactions table is empty (expected at least one row)")
    for column in ("user_id", "item_id", "timestamp"):
        if counts[column]:
            raise schemas.DataError(f"{origin}: interactions column '{column}' has {counts[column]} empty values")


def sink_parquet(frame: pl.LazyFrame, path: Path) -> TableRef:
    """Stream a lazy frame to Parquet (bounded memory), atomically, and return its reference."""
    with atomic_path(path) as temporary:
        frame.sink_parquet(temporary, engine="streaming")
    return TableRef(str(path), fingerprint_file(path))


def ingest_dataset(cfg: DataConfig, seed: int, cache_root: Path) -> RawTables:
    """Load, validate and write the configured dataset's raw tables."""
    frames = load_frames(cfg, seed)
    validate_raw(frames.interactions, frames.items, frames.users, frames.origin)
    key = fingerprint_text(cfg.model_dump(mode="json"), seed, source_fingerprint(cfg))
    out_dir = cache_root / f"ingest-{key}"
    return RawTables(
        interactions=sink_parquet(frames.interactions, out_dir / "interactions.parquet"),
        items=sink_parquet(frames.items, out_dir / "items.parquet"),
        users=sink_parquet(frames.users, out_dir / "users.parquet"),
    )


# `files` (the input files' fingerprint) is an argument only so that it enters the cache key.
@task(name="ingest", retries=2, retry_delay_seconds=5, cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def ingest(cfg: DataConfig, seed: int, cache: CacheDir, files: str = "") -> RawTables:
    """Prefect task: ingest the configured dataset (retried: real sources may be downloads)."""
    raw = ingest_dataset(cfg, seed, cache.path)
    rows = pl.scan_parquet(raw.interactions.path).select(pl.len()).collect().item()
    get_run_logger().info("ingested %s: %d interactions -> %s", cfg.source, rows, Path(raw.interactions.path).parent)
    return raw
