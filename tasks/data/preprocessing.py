"""Preprocessing with Polars: clean, filter, index, order, split, and partition into source/target.

Order of operations: tie-break key -> optional rating threshold -> dedupe -> iterative k-core ->
contiguous ids -> per-user time-ordered sequences -> temporal hold-out (last items by time are test,
the ones before them valid, the rest train; RecBole's "LS/TO" protocol) -> source/target roles.

A user's events with equal timestamps are ordered by `preprocess.tie_order`: by default the input
file's row order, which is what RecBole does (a stable sort of its atomic file by user, then time).
Ordering them by item id instead (`id`, the behaviour before the setting) leaks: files keyed by
title put same-second bursts in alphabetical order, and a model learns to predict it.

`preprocess.engine: streaming` runs the same steps, built from this module's functions, through
Parquet files in bounded memory (tasks/data/streaming.py); the output is the same.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from conf.schema import PreprocessConfig, ScenarioConfig, SplitConfig
from models.data import SequenceData
from tasks import schemas
from tasks.data.ingestion import RawTables
from tasks.io import TableRef, fingerprint_text, read_table, scan_table, write_parquet
from tasks.schemas import DataError

log = logging.getLogger(__name__)
UNKNOWN_GROUP = "unknown"  # the group of a user whose grouping attribute is missing

# Last sort key of every per-user time order (see add_tie_break); it never reaches the written tables.
TIE = "_tie"
EVENT_COLUMNS = ["user_idx", "item_idx", "timestamp", "split"]  # the written events table
# splitmix64 (Steele et al. 2014): its finaliser is a bijection of 64-bit words, so the shuffled keys
# of distinct rows never collide; Polars' UInt64 arithmetic wraps like the reference's.
GOLDEN_GAMMA = 0x9E3779B97F4A7C15


@dataclass(frozen=True)
class PreparedData:
    """References to the preprocessed tables, plus the counts a run reports."""

    events: TableRef  # user_idx, item_idx, timestamp, split
    sequences: TableRef  # user_idx, train, valid, test (item_idx lists in time order)
    users: TableRef  # user_idx, user_id, role, raw attributes
    items: TableRef  # item_idx, item_id, title, category, domain, role
    n_users: int
    n_items: int  # counts the padding index 0
    n_events: int
    dropped_events: int


def splitmix64(state: pl.Expr) -> pl.Expr:
    """splitmix64's output function of a UInt64 state: a bijective, well-mixed scramble."""
    def mixed(value: pl.Expr, shift: int, multiplier: int | None) -> pl.Expr:
        value = value.xor(value // pl.lit(1 << shift, dtype=pl.UInt64))  # x ^ (x >> shift)
        return value if multiplier is None else value * pl.lit(multiplier, dtype=pl.UInt64)

    return mixed(mixed(mixed(state, 30, 0xBF58476D1CE4E5B9), 27, 0x94D049BB133111EB), 31, None)


def add_tie_break(events: pl.LazyFrame, tie_order: str, seed: int | None = None) -> pl.LazyFrame:
    """Events with a `_tie` column, the last key of every per-user time order.

    Call it on the rows as read, before anything reorders them. `tie_order`: 'file' numbers the
    rows (the input order), 'shuffle' scrambles those numbers with `seed` (the i-th output of
    splitmix64 seeded with it: distinct, reproducible, random among ties), 'id' copies item_id.
    """
    if tie_order == "id":
        return events.with_columns(pl.col("item_id").alias(TIE))
    numbered = events.with_row_index(TIE).with_columns(pl.col(TIE).cast(pl.UInt64))
    if tie_order == "file":
        return numbered
    if seed is None:
        raise ValueError("preprocess.tie_order=shuffle needs the run's seed; none was given")
    one, gamma = pl.lit(1, dtype=pl.UInt64), pl.lit(GOLDEN_GAMMA, dtype=pl.UInt64)
    state = pl.lit(seed % 2**64, dtype=pl.UInt64) + (pl.col(TIE) + one) * gamma
    return numbered.with_columns(splitmix64(state).alias(TIE))


def time_order(user_column: str) -> list[str]:
    """Sort keys putting each user's events in time order, ties by the `_tie` key."""
    return [user_column, "timestamp", TIE]


def filter_by_rating(events: pl.LazyFrame, min_rating: float | None) -> pl.LazyFrame:
    """Interactions rated at least `min_rating` (all of them when None)."""
    if min_rating is None:
        return events
    return events.filter(pl.col("rating") >= min_rating)


def dedupe(events: pl.LazyFrame, mode: str) -> pl.LazyFrame:
    """Drop duplicate interactions: identical rows ('exact') or a user's repeats of an item ('user_item').

    The first in time order is kept (ties by `_tie`), so that both engines keep the same row.
    """
    ordered = events.sort(time_order("user_id"))
    if mode == "exact":
        columns = [c for c in events.collect_schema().names() if c != TIE]
        return ordered.unique(subset=columns, keep="first", maintain_order=True)
    return ordered.unique(subset=["user_id", "item_id"], keep="first", maintain_order=True)


def k_core(events: pl.DataFrame, k: int) -> pl.DataFrame:
    """Drop users and items with fewer than k interactions, repeating until nothing changes."""
    while True:
        kept = events.filter(
            (pl.len().over("user_id") >= k) & (pl.len().over("item_id") >= k)
        )
        if kept.height == events.height:
            return kept
        events = kept


def index_ids(events: pl.DataFrame, column: str) -> pl.DataFrame:
    """Map of raw ids in `column` to contiguous `<name>_idx` from 1 (0 is padding), in sorted id order."""
    index_column = column.replace("_id", "_idx")
    ids = events.select(pl.col(column).unique().sort())
    return ids.with_columns(pl.int_range(1, ids.height + 1, dtype=pl.Int32).alias(index_column))


def assign_splits(events: pl.DataFrame, holdout: int) -> pl.DataFrame:
    """Label each event train/valid/test by its position from the end of the user's time order.

    The last `holdout` events are test, the `holdout` before them valid; ties in time are ordered
    by `_tie` (see add_tie_break) so the same data always gives the same split. Users with fewer
    than 2·holdout + 1 events cannot train and are dropped.
    """
    ordered = events.sort(time_order("user_idx"))
    from_end = (pl.len() - 1 - pl.int_range(pl.len())).over("user_idx")
    return (
        ordered.filter(pl.len().over("user_idx") > 2 * holdout)
        .with_columns(from_end.alias("_from_end"))
        .with_columns(
            pl.when(pl.col("_from_end") < holdout)
            .then(pl.lit("test"))
            .when(pl.col("_from_end") < 2 * holdout)
            .then(pl.lit("valid"))
            .otherwise(pl.lit("train"))
            .alias("split")
        )
        .drop("_from_end")
    )


def assign_user_group_splits(events: pl.DataFrame, user_groups: pl.DataFrame, split: SplitConfig) -> pl.DataFrame:
    """Label events by the dataset's own user split: held-out users' last event is their target.

    `user_groups` maps user_idx to the value of `split.user_group_column`. Users of valid_groups
    (test_groups) get their last event labelled valid (test) and the earlier ones 'context':
    read as history, never trained on. Every other user's events are all train.
    """
    ordered = events.sort(time_order("user_idx")).join(user_groups, on="user_idx", how="left",
                                                        maintain_order="left")  # `last` reads the order
    last = pl.int_range(pl.len()).over("user_idx") == pl.len().over("user_idx") - 1
    held_out = (
        pl.when(pl.col("_group").is_in(split.valid_groups)).then(pl.lit("valid"))
        .when(pl.col("_group").is_in(split.test_groups)).then(pl.lit("test"))
    )
    return ordered.with_columns(
        pl.when(held_out.is_null()).then(pl.lit("train"))
        .when(last).then(held_out)
        .otherwise(pl.lit("context"))
        .alias("split")
    ).drop("_group")


def build_sequences(events: pl.DataFrame) -> pl.DataFrame:
    """One row per user with the time-ordered item_idx lists of each split (ties by `_tie`)."""
    ordered = events.sort(time_order("user_idx"))
    return (
        ordered.group_by("user_idx", maintain_order=True)
        .agg(
            pl.col("item_idx").filter(pl.col("split") == name).alias(name)
            for name in ("train", "valid", "test", "context")
        )
        .sort("user_idx")
    )


def assign_roles(users: pl.DataFrame, items: pl.DataFrame, scenario: ScenarioConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Users and items with a `role` column: 'source', 'target' or 'other' under the scenario's partition."""

    def role_of(column: str) -> pl.Expr:
        return (
            pl.when(pl.col(column) == scenario.source)
            .then(pl.lit("source"))
            .when(pl.col(column) == scenario.target)
            .then(pl.lit("target"))
            .otherwise(pl.lit("other"))
            .alias("role")
        )

    users = users.with_columns(
        role_of(scenario.attribute) if scenario.partition == "user_group" else pl.lit("all").alias("role")
    )
    items = items.with_columns(
        role_of("domain") if scenario.partition == "item_domain" else pl.lit("all").alias("role")
    )
    return users, items


def check_partition(users: pl.DataFrame, items: pl.DataFrame, scenario: ScenarioConfig, group_attribute: str | None, origin: str) -> None:
    """Raise DataError when the configured attributes or group/domain values do not occur in the data."""
    needed = {"scenario.attribute": scenario.attribute} if scenario.partition == "user_group" else {}
    if group_attribute is not None and group_attribute != "target_domain":  # target_domain: from items
        needed["evaluation.group_attribute"] = group_attribute
    for setting, column in needed.items():
        if column not in users.columns:
            raise DataError(f"{origin}: {setting} '{column}' is not a users column; found {users.columns}")
    if scenario.partition == "none":
        return
    column, table = (scenario.attribute, users) if scenario.partition == "user_group" else ("domain", items)
    present = set(table[column].drop_nulls().unique().to_list())
    for setting in ("source", "target"):
        value = getattr(scenario, setting)
        if value not in present:
            raise DataError(
                f"{origin}: scenario.{setting} '{value}' does not occur in column '{column}' "
                f"after filtering; values present: {sorted(present)}"
            )


def index_events(events: pl.DataFrame, user_map: pl.DataFrame, item_map: pl.DataFrame) -> pl.DataFrame:
    """Events with user_idx and item_idx in place of the raw ids (and their `_tie`)."""
    return events.join(user_map, on="user_id").join(item_map, on="item_id").select(
        "user_idx", "item_idx", "timestamp", TIE)


def user_groups_of(user_map: pl.DataFrame, users_raw: pl.DataFrame, split: SplitConfig,
                   origin: str) -> pl.DataFrame | None:
    """user_idx -> `_group` (the value of split.user_group_column) under the user_groups protocol, else None."""
    if split.protocol != "user_groups":
        return None
    if split.user_group_column not in users_raw.columns:
        raise DataError(f"{origin}: split.user_group_column '{split.user_group_column}' is not a users "
                        f"column; found {users_raw.columns}")
    return user_map.join(users_raw.select("user_id", pl.col(split.user_group_column).alias("_group")),
                         on="user_id", how="left").select("user_idx", "_group")


def split_events(events: pl.DataFrame, split: SplitConfig, groups: pl.DataFrame | None) -> pl.DataFrame:
    """Events labelled train/valid/test(/context) under the configured protocol (see assign_splits)."""
    if split.protocol == "user_groups":
        return assign_user_group_splits(events, groups, split)
    return assign_splits(events, split.holdout_size())


def check_core_not_empty(n_events: int, raw: RawTables, preprocess: PreprocessConfig) -> None:
    """Raise DataError when the rating filter and k-core left no interaction."""
    if n_events == 0:
        raise DataError(
            f"{raw.source_of(raw.interactions)}: no interactions left after preprocess.min_rating="
            f"{preprocess.min_rating} and preprocess.k_core={preprocess.k_core}; lower them"
        )


def check_split_not_empty(labels: set[str], n_events: int, groups: pl.DataFrame | None, split: SplitConfig,
                          raw: RawTables) -> None:
    """Raise DataError when the split held out no user of a group, or left no event at all.

    `labels`: the split labels that occur among the `n_events` split events (read under user_groups only).
    """
    if split.protocol == "user_groups":
        for name, wanted in (("valid", split.valid_groups), ("test", split.test_groups)):
            if name not in labels:
                raise DataError(f"{raw.source_of(raw.users)}: no user of split.{name}_groups {wanted} in column "
                                f"'{split.user_group_column}'; values present: "
                                f"{sorted(groups['_group'].drop_nulls().unique().to_list())}")
    if n_events == 0:
        raise DataError(
            f"{raw.source_of(raw.interactions)}: no user has the {2 * split.holdout_size() + 1} interactions that "
            f"split.protocol={split.protocol} needs"
        )


def renumber_users(events: pl.DataFrame, start: int = 1) -> pl.DataFrame:
    """Map user_idx -> `new_idx`, contiguous from `start` in user_idx order, of the users left in `events`."""
    kept_users = events.select("user_idx").unique().sort("user_idx")
    return kept_users.with_columns(pl.int_range(start, start + kept_users.height, dtype=pl.Int32).alias("new_idx"))


def apply_renumbering(frame: pl.DataFrame, renumber: pl.DataFrame) -> pl.DataFrame:
    """`frame` with its user_idx replaced by the renumbered one; users missing from `renumber` are dropped.

    Rows keep their order: the renumbering is monotone, so time-ordered events stay time-ordered.
    """
    return (frame.join(renumber, on="user_idx", maintain_order="left").drop("user_idx")
            .rename({"new_idx": "user_idx"}))


def with_unknown_groups(users: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """`users` with a missing value of each grouping column replaced by UNKNOWN_GROUP (the column as text),
    said in a warning: a user absent from the users table, or without that attribute, is a group of its own."""
    for column in dict.fromkeys(columns):
        missing = users[column].null_count() if column in users.columns else 0
        if missing:
            examples = users.filter(pl.col(column).is_null())["user_id"].head(3).to_list()
            log.warning("users table: %d of %d users have no '%s' (no row in the users table, or no value there; "
                        "e.g. %s): their group is '%s'", missing, users.height, column, examples, UNKNOWN_GROUP)
            users = users.with_columns(pl.col(column).cast(pl.String).fill_null(UNKNOWN_GROUP))
    return users


def warn_items_without_titles(items: pl.DataFrame) -> None:
    """Say how many items of the events have no title when others have one (explanations and text models
    then show their ids); a dataset without any titles is not warned about."""
    missing = items["title"].null_count() if "title" in items.columns else 0
    if 0 < missing < items.height:
        examples = items.filter(pl.col("title").is_null())["item_id"].head(3).to_list()
        log.warning("items table: %d of %d items of the events have no title (no row in the items table, or no "
                    "value there; e.g. %s): their id stands in for it", missing, items.height, examples)


def describe_users_and_items(user_map: pl.DataFrame, item_map: pl.DataFrame, users_raw: pl.DataFrame,
                             raw: RawTables, scenario: ScenarioConfig,
                             group_attribute: str | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The users and items tables: id maps joined to the raw attributes, checked, with source/target roles."""
    items_raw = pl.read_parquet(raw.items.path)
    users = user_map.join(users_raw, on="user_id", how="left").sort("user_idx")
    items = item_map.join(items_raw, on="item_id", how="left").sort("item_idx")
    grouping = ([scenario.attribute] if scenario.partition == "user_group" else []) + (
        [group_attribute] if group_attribute is not None and group_attribute != "target_domain" else [])
    users = with_unknown_groups(users, grouping)
    warn_items_without_titles(items)
    check_partition(users, items, scenario, group_attribute, origin=raw.source_of(raw.users))
    return assign_roles(users, items, scenario)


def output_dir(raw: RawTables, preprocess: PreprocessConfig, split: SplitConfig, scenario: ScenarioConfig,
               group_attribute: str | None, cache_root: Path, seed: int | None = None) -> Path:
    """The cache folder of one preprocessing configuration of one raw dataset."""
    # The seed changes the output only through a shuffled tie order: other runs share the folder.
    tie_seed = seed if preprocess.tie_order == "shuffle" else None
    key = fingerprint_text(raw.interactions.fingerprint, preprocess.model_dump(), split.model_dump(),
                           scenario.model_dump(), group_attribute, tie_seed)
    return cache_root / f"preprocess-{key}"


def log_summary(prepared: PreparedData, preprocess: PreprocessConfig, detail: str = "") -> None:
    """Log the one summary line of the stage: users, items, interactions kept and dropped."""
    log.info(
        "preprocessed: %d users, %d items, %d interactions kept, %d dropped (dedupe, rating, %d-core, split)%s",
        prepared.n_users, prepared.n_items - 1, prepared.n_events, prepared.dropped_events, preprocess.k_core, detail,
    )


def prepare_data_in_memory(
    raw: RawTables,
    preprocess: PreprocessConfig,
    split: SplitConfig,
    scenario: ScenarioConfig,
    group_attribute: str | None,
    cache_root: Path,
    seed: int | None = None,
) -> PreparedData:
    """Run every preprocessing step on the raw tables in memory and write the results as Parquet (the
    `memory` engine; tasks/data/streaming.py is the other, tasks/data/prepare.py picks one).

    `seed`: the run's seed, which orders equal timestamps under `preprocess.tie_order: shuffle`.
    """
    interactions = scan_table(raw.interactions, schemas.INTERACTIONS, "interactions")
    raw_count = interactions.select(pl.len()).collect().item()
    numbered = add_tie_break(interactions, preprocess.tie_order, seed)  # before anything reorders the rows
    filtered = dedupe(filter_by_rating(numbered, preprocess.min_rating), preprocess.dedupe)
    cored = k_core(filtered.select("user_id", "item_id", "timestamp", TIE).collect(), preprocess.k_core)
    check_core_not_empty(cored.height, raw, preprocess)
    user_map, item_map = index_ids(cored, "user_id"), index_ids(cored, "item_id")
    users_raw = pl.read_parquet(raw.users.path)
    groups = user_groups_of(user_map, users_raw, split, raw.source_of(raw.users))
    events = split_events(index_events(cored, user_map, item_map), split, groups)
    labels = set(events["split"].unique().to_list()) if groups is not None else set()  # only user_groups checks them
    check_split_not_empty(labels, events.height, groups, split, raw)
    # Users dropped by the split lose their index so that user_idx stays contiguous.
    renumber = renumber_users(events)
    events = apply_renumbering(events, renumber)
    sequences = build_sequences(events)
    events = events.select(EVENT_COLUMNS)
    user_map = apply_renumbering(user_map, renumber)
    users, items = describe_users_and_items(user_map, item_map, users_raw, raw, scenario, group_attribute)

    out_dir = output_dir(raw, preprocess, split, scenario, group_attribute, cache_root, seed)
    prepared = PreparedData(
        events=write_parquet(events, out_dir / "events.parquet"),
        sequences=write_parquet(sequences, out_dir / "sequences.parquet"),
        users=write_parquet(users, out_dir / "users.parquet"),
        items=write_parquet(items, out_dir / "items.parquet"),
        n_users=users.height,
        n_items=items.height + 1,
        n_events=events.height,
        dropped_events=raw_count - events.height,
    )
    log_summary(prepared, preprocess)
    return prepared


def load_sequence_data(prepared: PreparedData) -> SequenceData:
    """Per-user item_idx arrays of each split, indexed by user_idx - 1."""
    sequences = read_table(prepared.sequences, schemas.SEQUENCES, "sequences").sort("user_idx")

    def arrays(column: str) -> list[np.ndarray]:
        return [np.asarray(items, dtype=np.int64) for items in sequences[column].to_list()]

    return SequenceData(prepared.n_items, arrays("train"), arrays("valid"), arrays("test"), arrays("context"))


def check_catalogue_size(prepared: PreparedData, ks: list[int], top_k: int) -> None:
    """Raise DataError when a configured K is not smaller than the catalogue left after preprocessing."""
    n_items = prepared.n_items - 1
    for setting, k in (("evaluation.ks", max(ks)), ("export.top_k", top_k)):
        if k >= n_items:
            raise DataError(f"{setting}: K={k} must be smaller than the catalogue ({n_items} items after preprocessing)")
