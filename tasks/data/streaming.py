"""Preprocessing of event logs larger than memory (`preprocess.engine: streaming`), same output as in memory.

The steps and their order are those of `tasks.data.preprocessing.prepare_data_in_memory`; only where the events
live changes. Every pass over all events is a Polars streaming query from Parquet to Parquet in a
temporary folder, holding only group-by states and id maps (sizes of the user and item sets).
The steps that need a user's events together and ordered (dedupe, the split, the sequences) run
in memory one bucket at a time: a bucket is a range of user ids holding about `events_per_bucket`
events. In Polars 2.1 the streaming engine keeps sort, unique, over-windows and list aggregation
in memory (measured: peak RSS grows with the events), hence the buckets.

1. number the rows as read (the tie-break key, `tasks.data.preprocessing.add_tie_break`), count events
   per user (streamed group-by) and cut the sorted user ids into buckets;
2. write the rating-filtered events into one Parquet file per bucket (streamed, partitioned sink;
   the files' row order does not matter from here on: every ordering step sorts by the key);
3. dedupe each bucket (in memory, one bucket at a time);
4. k-core: count users and items over all buckets (streamed), rewrite each bucket without the
   users and items below k (streamed), until every count reaches k;
5. id maps from the final counts; index, split, renumber users and build sequences bucket by
   bucket, in user order (in memory, one bucket at a time), with the memory engine's functions;
6. concatenate the buckets' events and sequences into the output files (streamed, atomic).

Buckets are ranges of user_id in sorted order and user_idx follows sorted user_id, so
concatenating the buckets in order gives the memory engine's rows in its order. Equal timestamps
are ordered by the same key in both engines, numbered over the whole input before it is bucketed.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl

from conf.schema import PreprocessConfig, ScenarioConfig, SplitConfig
from tasks import schemas
from tasks.data.ingestion import RawTables, sink_parquet
from tasks.io import scan_table, write_parquet
from tasks.data.preprocessing import (
    EVENT_COLUMNS,
    TIE,
    PreparedData,
    add_tie_break,
    apply_renumbering,
    build_sequences,
    check_core_not_empty,
    check_split_not_empty,
    dedupe,
    describe_users_and_items,
    filter_by_rating,
    index_events,
    index_ids,
    log_summary,
    output_dir,
    renumber_users,
    split_events,
    user_groups_of,
)

# A bucket of 2M events adds about 0.4 GiB to the peak in the in-memory steps (dedupe, split,
# sequences; measured on the synthetic shop); smaller buckets use less and run slower.
EVENTS_PER_BUCKET = 2_000_000


def assign_user_buckets(events: pl.LazyFrame, events_per_bucket: int) -> pl.DataFrame:
    """user_id -> `_bucket`: consecutive ranges of sorted user ids holding about `events_per_bucket` events each.

    A user with more events than that gets a bucket of their own; bucket numbers may skip values.
    """
    counts = events.group_by("user_id").agg(pl.len()).collect(engine="streaming").sort("user_id")
    events_before = pl.col("len").cum_sum() - pl.col("len")
    return counts.select("user_id", (events_before // events_per_bucket).cast(pl.Int32).alias("_bucket"))


def partition_by_user(events: pl.LazyFrame, buckets: pl.DataFrame, folder: Path) -> list[list[Path]]:
    """Write `events` into Parquet files per bucket of `buckets`; their paths, one list per bucket in user order.

    One streamed pass (pl.PartitionBy, marked unstable in Polars 2.1); holds the user -> bucket map.
    """
    folder.mkdir(parents=True)
    target = pl.PartitionBy(
        folder,
        key="_bucket",
        include_key=False,
        file_path_provider=lambda args: f"{args.partition_keys.item():06d}-{args.index_in_partition:04d}.parquet",
    )
    events.join(buckets.lazy(), on="user_id").sink_parquet(target, engine="streaming")
    bucket_ids = buckets["_bucket"].unique().sort().to_list()
    return [sorted(folder.glob(f"{bucket:06d}-*.parquet")) for bucket in bucket_ids]


def dedupe_buckets(buckets: list[list[Path]], mode: str, folder: Path) -> list[Path]:
    """One deduplicated Parquet file (user_id, item_id, timestamp, _tie) per bucket; the raw files are deleted."""
    folder.mkdir(parents=True)
    deduped = []
    for number, files in enumerate(buckets):
        path = folder / f"{number:06d}.parquet"
        frame = dedupe(pl.scan_parquet(files), mode).select("user_id", "item_id", "timestamp", TIE)
        frame.sink_parquet(path, engine="streaming")
        for file in files:
            file.unlink()
        deduped.append(path)
    return deduped


def k_core_files(paths: list[Path], k: int) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Rewrite the bucket files to their k-core; the final user and item counts, and the number of rewrites.

    The same iteration as `tasks.data.preprocessing.k_core`: drop every event whose user or item has
    fewer than k events, and repeat until nothing changes.
    """
    rounds = 0
    while True:
        events = pl.scan_parquet(paths)
        users = events.group_by("user_id").agg(pl.len()).collect(engine="streaming")
        items = events.group_by("item_id").agg(pl.len()).collect(engine="streaming")
        if users.is_empty() or (users["len"].min() >= k and items["len"].min() >= k):
            return users, items, rounds
        # The dropped ids are usually far fewer than the kept ones: cheaper sets to probe.
        dropped_users = users.filter(pl.col("len") < k)["user_id"].implode()
        dropped_items = items.filter(pl.col("len") < k)["item_id"].implode()
        for path in paths:
            rewritten = path.with_suffix(".next")
            pl.scan_parquet(path).filter(
                ~pl.col("user_id").is_in(dropped_users) & ~pl.col("item_id").is_in(dropped_items)
            ).sink_parquet(rewritten, engine="streaming")
            rewritten.replace(path)
        rounds += 1


def prepare_data_streaming(
    raw: RawTables,
    preprocess: PreprocessConfig,
    split: SplitConfig,
    scenario: ScenarioConfig,
    group_attribute: str | None,
    cache_root: Path,
    events_per_bucket: int = EVENTS_PER_BUCKET,
    seed: int | None = None,
) -> PreparedData:
    """`prepare_data` with every pass over all events streamed through Parquet (see the module docstring)."""
    interactions = scan_table(raw.interactions, schemas.INTERACTIONS, "interactions")
    raw_count = interactions.select(pl.len()).collect(engine="streaming").item()
    numbered = add_tie_break(interactions, preprocess.tie_order, seed)  # before the bucketing reorders rows
    filtered = filter_by_rating(numbered, preprocess.min_rating)
    cache_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".preprocess-streaming-", dir=cache_root) as temporary:
        work = Path(temporary)
        buckets = assign_user_buckets(filtered, events_per_bucket)
        check_core_not_empty(buckets.height, raw, preprocess)  # the rating filter left nothing
        paths = dedupe_buckets(partition_by_user(filtered, buckets, work / "raw"), preprocess.dedupe, work / "core")
        user_counts, item_counts, rounds = k_core_files(paths, preprocess.k_core)
        check_core_not_empty(user_counts.height, raw, preprocess)
        user_map, item_map = index_ids(user_counts, "user_id"), index_ids(item_counts, "item_id")
        users_raw = pl.read_parquet(raw.users.path)
        groups = user_groups_of(user_map, users_raw, split, raw.source_of(raw.users))

        # Bucket by bucket in user order, so the renumbered user_idx run on from one bucket to the next.
        event_parts, sequence_parts, renumbers, labels = [], [], [], set()
        n_events = n_kept_users = 0
        for number, path in enumerate(paths):
            events = split_events(index_events(pl.read_parquet(path), user_map, item_map), split, groups)
            if events.is_empty():
                continue
            renumber = renumber_users(events, start=n_kept_users + 1)
            events = apply_renumbering(events, renumber)
            event_parts.append(work / f"events-{number:06d}.parquet")
            sequence_parts.append(work / f"sequences-{number:06d}.parquet")
            build_sequences(events).write_parquet(sequence_parts[-1])
            events = events.select(EVENT_COLUMNS)
            events.write_parquet(event_parts[-1])
            renumbers.append(renumber)
            labels |= set(events["split"].unique().to_list())
            n_events += events.height
            n_kept_users += renumber.height
        check_split_not_empty(labels, n_events, groups, split, raw)
        user_map = apply_renumbering(user_map, pl.concat(renumbers))
        users, items = describe_users_and_items(user_map, item_map, users_raw, raw, scenario, group_attribute)

        out_dir = output_dir(raw, preprocess, split, scenario, group_attribute, cache_root, seed)
        prepared = PreparedData(
            events=sink_parquet(pl.scan_parquet(event_parts), out_dir / "events.parquet"),
            sequences=sink_parquet(pl.scan_parquet(sequence_parts), out_dir / "sequences.parquet"),
            users=write_parquet(users, out_dir / "users.parquet"),
            items=write_parquet(items, out_dir / "items.parquet"),
            n_users=users.height,
            n_items=items.height + 1,
            n_events=n_events,
            dropped_events=raw_count - n_events,
        )
    log_summary(prepared, preprocess, f"; streaming: {len(paths)} buckets, {rounds} k-core rewrites")
    return prepared
