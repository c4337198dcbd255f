"""Ingestion adapters: each turns one kind of dataset into the pipeline's three raw tables.

Contract of every adapter (`load(cfg) -> RawFrames`), checked by `tasks.data.ingestion.validate_raw`:
- interactions: user_id String, item_id String, timestamp Int64 (event time in seconds, or the
  position in the user's sequence when the data has no time), optional rating Float64, optional
  event String;
- items: item_id, title, category, domain, all String (title and category may be null);
- users: user_id String plus attribute columns, all String (may have no attribute at all).
Frames are lazy (Polars scans), so that ingestion can stream logs larger than memory.
Every problem with the input raises `DataError` naming the file, line or column and what was expected.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tasks.schemas import DataError


@dataclass(frozen=True)
class RawFrames:
    """The three raw tables of a dataset, as lazy frames, and a label for messages."""

    interactions: pl.LazyFrame
    items: pl.LazyFrame
    users: pl.LazyFrame
    origin: str


class DownloadError(DataError):
    """A dataset download that failed or arrived corrupt: unlike other bad input, worth retrying."""


def empty_users(interactions: pl.LazyFrame) -> pl.LazyFrame:
    """A users table with no attributes: the distinct user ids of the interactions."""
    return interactions.select("user_id").unique()


def items_without_text(interactions: pl.LazyFrame, domain: str = "default") -> pl.LazyFrame:
    """An items table for data without item metadata: ids only, one domain."""
    return interactions.select("item_id").unique().with_columns(
        pl.lit(None, dtype=pl.String).alias("title"),
        pl.lit(None, dtype=pl.String).alias("category"),
        pl.lit(domain).alias("domain"),
    )


def require_files(*paths: Path, hint: str) -> None:
    """Raise DataError naming the first missing file, with where to get it."""
    for path in paths:
        if path.is_dir():
            raise DataError(f"{path}: is a directory, expected a file. {hint}")
        if not path.is_file():
            raise DataError(f"{path}: file not found. {hint}")
