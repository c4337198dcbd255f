"""Polars schemas of every table that crosses a stage, and the check that enforces them."""
from __future__ import annotations

import polars as pl


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, column and what was expected."""


# Raw tables, as ingestion adapters must deliver them (ids are strings in the source's id space).
INTERACTIONS = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64}
OPTIONAL_INTERACTION_COLUMNS = {"rating": pl.Float64}
ITEMS = {"item_id": pl.String, "title": pl.String, "category": pl.String, "domain": pl.String}
USERS = {"user_id": pl.String}

# Preprocessed tables (idx columns are contiguous from 1; 0 is padding).
ITEM_INDEX = {"item_idx": pl.Int32, "item_id": pl.String, "domain": pl.String, "role": pl.String}
USER_INDEX = {"user_idx": pl.Int32, "user_id": pl.String, "role": pl.String}  # + the raw user attributes
EVENTS = {"user_idx": pl.Int32, "item_idx": pl.Int32, "timestamp": pl.Int64, "split": pl.String}
SEQUENCES = {
    "user_idx": pl.Int32,
    "train": pl.List(pl.Int32),
    "valid": pl.List(pl.Int32),
    "test": pl.List(pl.Int32),
    "context": pl.List(pl.Int32),
}
RECOMMENDATIONS = {"user_id": pl.String, "item_id": pl.String, "rank": pl.Int32, "score": pl.Float64,
                   # Why: the user's history items that point to the item most, best first, with their evidence
                   # (models/explain.py); empty lists when none does (always, for popularity).
                   "reason_item_ids": pl.List(pl.String), "reason_scores": pl.List(pl.Float64)}
METRICS = {
    "scenario": pl.String,
    "model": pl.String,
    "split": pl.String,
    "group": pl.String,
    "metric": pl.String,
    "k": pl.Int32,
    "value": pl.Float64,
}


def check_schema(actual: pl.Schema, required: dict[str, pl.DataType], table: str, source: str) -> None:
    """Raise DataError naming the file and column when a required column is missing or mistyped."""
    for column, dtype in required.items():
        if column not in actual:
            raise DataError(
                f"{source}: {table} table has no column '{column}' (expected {dtype}); "
                f"found columns {list(actual.names())}"
            )
        if actual[column] != dtype:
            raise DataError(f"{source}: {table} column '{column}' has type {actual[column]}, expected {dtype}")
