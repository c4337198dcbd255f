"""Ingestion: bring a dataset's raw tables (interactions, items, users) into the run as Parquet.

Each source is a plain function returning validated polars frames; the task writes them once per
(config, seed) into a content-addressed folder, so every later stage reads the same files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from conf.schema import DataConfig
from tasks import schemas
from tasks.io import CacheDir, TableRef, fingerprint_text, write_parquet
from tasks.synthetic import generate_shop


@dataclass(frozen=True)
class RawTables:
    """References to the ingested raw tables."""

    interactions: TableRef
    items: TableRef
    users: TableRef


def load_synthetic(cfg: DataConfig, seed: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Interactions, items and users of the embedded synthetic shop."""
    shop = generate_shop(cfg.synthetic, seed)
    return shop.interactions, shop.items, shop.users


def validate_raw(interactions: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame, origin: str) -> None:
    """Raise DataError when a raw table lacks a required column, has the wrong type, or is empty."""
    schemas.check_schema(interactions.schema, schemas.INTERACTIONS, "interactions", origin)
    schemas.check_schema(items.schema, schemas.ITEMS, "items", origin)
    schemas.check_schema(users.schema, schemas.USERS, "users", origin)
    if interactions.is_empty():
        raise schemas.DataError(f"{origin}: interactions table is empty (expected at least one row)")
    for column in ("user_id", "item_id", "timestamp"):
        nulls = interactions[column].null_count()
        if nulls:
            raise schemas.DataError(f"{origin}: interactions column '{column}' has {nulls} empty values")


def ingest_dataset(cfg: DataConfig, seed: int, cache_root: Path) -> RawTables:
    """Load, validate and write the configured dataset's raw tables."""
    if cfg.source != "synthetic":  # adapters for real datasets plug in here
        raise ValueError(f"data.source: unsupported source '{cfg.source}'")
    interactions, items, users = load_synthetic(cfg, seed)
    validate_raw(interactions, items, users, origin=f"data.source={cfg.source}")
    out_dir = cache_root / f"ingest-{fingerprint_text(cfg.model_dump(mode='json'), seed)}"
    return RawTables(
        interactions=write_parquet(interactions, out_dir / "interactions.parquet"),
        items=write_parquet(items, out_dir / "items.parquet"),
        users=write_parquet(users, out_dir / "users.parquet"),
    )


@task(name="ingest", retries=2, retry_delay_seconds=5, cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def ingest(cfg: DataConfig, seed: int, cache: CacheDir) -> RawTables:
    """Prefect task: ingest the configured dataset (retried: real sources are downloads)."""
    raw = ingest_dataset(cfg, seed, cache.path)
    rows = pl.scan_parquet(raw.interactions.path).select(pl.len()).collect().item()
    get_run_logger().info("ingested %s: %d interactions -> %s", cfg.source, rows, Path(raw.interactions.path).parent)
    return raw
