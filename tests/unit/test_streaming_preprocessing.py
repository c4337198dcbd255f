"""The streaming engine writes the same tables as the memory engine, and fails with the same errors.

Small `events_per_bucket` values force many buckets, so users are spread over several files
and the bucket-by-bucket steps (dedupe, split, renumbering, sequences) are exercised.
"""

from __future__ import annotations

from pathlib import Path

import re

import polars as pl
import pytest

from conf.loading import load_config, preset_path
from conf.schema import PreprocessConfig, ScenarioConfig, SplitConfig, SyntheticConfig
from tasks.data.ingestion import RawTables, ingest_dataset
from tasks.io import write_parquet
from tasks.data.prepare import prepare_data
from tasks.data.preprocessing import PreparedData
from tasks.schemas import DataError
from tasks.data.streaming import assign_user_buckets, k_core_files, prepare_data_streaming
from tasks.data.synthetic import generate_shop

TABLES = ("events", "sequences", "users", "items")
NO_PARTITION = ScenarioConfig(partition="none", source=None, target=None)


def write_raw(folder: Path, interactions: pl.DataFrame, users: pl.DataFrame | None = None,
              items: pl.DataFrame | None = None) -> RawTables:
    """Raw tables as ingestion writes them; users and items default to bare rows for every id."""
    if users is None:
        users = interactions.select(pl.col("user_id").unique().sort())
    if items is None:
        items = interactions.select(pl.col("item_id").unique().sort()).with_columns(
            title=pl.col("item_id"), category=pl.lit("c"), domain=pl.lit("books"))
    return RawTables(
        interactions=write_parquet(interactions, folder / "raw" / "interactions.parquet"),
        items=write_parquet(items, folder / "raw" / "items.parquet"),
        users=write_parquet(users, folder / "raw" / "users.parquet"),
    )


def interactions(rows: list[tuple], rating: bool = False) -> pl.DataFrame:
    """Raw interactions from (user_id, item_id, timestamp[, rating]) rows."""
    schema = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64}
    return pl.DataFrame(rows, schema=schema | ({"rating": pl.Float64} if rating else {}), orient="row")


def run_both(raw: RawTables, folder: Path, preprocess: PreprocessConfig = PreprocessConfig(),
             split: SplitConfig = SplitConfig(), scenario: ScenarioConfig = NO_PARTITION,
             group_attribute: str | None = None, events_per_bucket: int = 7,
             seed: int | None = None) -> tuple[PreparedData, PreparedData]:
    """Both engines on the same raw tables, each in its own cache folder."""
    memory = prepare_data(raw, preprocess, split, scenario, group_attribute, folder / "memory", seed)
    streaming = prepare_data_streaming(raw, preprocess.model_copy(update={"engine": "streaming"}), split, scenario,
                                       group_attribute, folder / "streaming", events_per_bucket=events_per_bucket,
                                       seed=seed)
    return memory, streaming


def assert_same_outputs(memory: PreparedData, streaming: PreparedData) -> None:
    """Same four tables (contents, dtypes and row order) and the same counts."""
    for table in TABLES:
        ours = pl.read_parquet(getattr(streaming, table).path)
        expected = pl.read_parquet(getattr(memory, table).path)
        assert ours.equals(expected), f"{table} differ:\n{ours}\n{expected}"
    counts = ("n_users", "n_items", "n_events", "dropped_events")
    assert [getattr(streaming, c) for c in counts] == [getattr(memory, c) for c in counts]


def shop_raw(folder: Path, seed: int = 3) -> RawTables:
    """A small synthetic shop with ratings, repeats, genders and a split_group column."""
    shop = generate_shop(SyntheticConfig(n_users=300, n_items=60, n_topics=4, mean_events_per_user=14), seed)
    users = shop.users.with_columns(
        split_group=pl.when(pl.int_range(pl.len()) % 10 == 0).then(pl.lit("valid"))
        .when(pl.int_range(pl.len()) % 10 == 1).then(pl.lit("test")).otherwise(pl.lit("train"))
    )
    return write_raw(folder, shop.interactions, users, shop.items)


# --- the synthetic shop --------------------------------------------------------------------------


def test_streaming_matches_memory_on_the_tiny_pipeline_shop(tmp_path):
    config = load_config(preset_path("experiments/tiny.yaml"))
    raw = ingest_dataset(config.data, config.seed, tmp_path)
    for events_per_bucket in (1_000, 10**9):  # ~16 buckets, then a single one
        folder = tmp_path / f"per-{events_per_bucket}"
        memory, streaming = run_both(raw, folder, config.preprocess, config.split, config.scenario,
                                     config.evaluation.group_attribute, events_per_bucket)
        assert_same_outputs(memory, streaming)


@pytest.mark.parametrize(
    ("preprocess", "split"),
    [
        (PreprocessConfig(dedupe="user_item", k_core=5), SplitConfig(protocol="leave_one_out")),
        (PreprocessConfig(dedupe="exact", k_core=3, min_rating=3.0), SplitConfig(protocol="leave_one_out")),
        (PreprocessConfig(dedupe="user_item", k_core=4, min_rating=4.0), SplitConfig(protocol="last_n", holdout_n=3)),
        (PreprocessConfig(dedupe="exact", k_core=8), SplitConfig(protocol="user_groups")),
    ],
    ids=["user_item-5core", "exact-rating3", "rating4-last_n3", "exact-user_groups"],
)
def test_streaming_matches_memory_on_a_synthetic_shop(tmp_path, preprocess, split):
    raw = shop_raw(tmp_path)
    memory, streaming = run_both(raw, tmp_path, preprocess, split, ScenarioConfig(), "age_band", events_per_bucket=300)
    assert_same_outputs(memory, streaming)
    assert memory.dropped_events > 0  # the settings did filter something


def test_prepare_data_dispatches_to_the_streaming_engine(tmp_path):
    raw = shop_raw(tmp_path)
    streaming = prepare_data(raw, PreprocessConfig(engine="streaming"), SplitConfig(), ScenarioConfig(), None,
                             tmp_path / "streaming")
    memory = prepare_data(raw, PreprocessConfig(), SplitConfig(), ScenarioConfig(), None, tmp_path / "memory")
    assert_same_outputs(memory, streaming)
    assert Path(streaming.events.path).parent != Path(memory.events.path).parent  # engine is part of the key


def test_streaming_leaves_no_temporary_files(tmp_path):
    raw = shop_raw(tmp_path)
    prepared = prepare_data_streaming(raw, PreprocessConfig(engine="streaming"), SplitConfig(), ScenarioConfig(),
                                      None, tmp_path / "cache", events_per_bucket=200)
    out_dir = Path(prepared.events.path).parent
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [out_dir.name]
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{table}.parquet" for table in sorted(TABLES)]


# --- hand-made edge cases ------------------------------------------------------------------------


# Every user has items sharing timestamps; item ids sort differently from input order.
TIED_ROWS = [(u, i, t) for u in ("u1", "u2", "u3") for i, t in
             (("i9", 300), ("i2", 100), ("i4", 300), ("i7", 200), ("i5", 200), ("i1", 300))]


def test_ties_in_time_are_ordered_by_item_idx_in_both_engines_under_id(tmp_path):
    memory, streaming = run_both(write_raw(tmp_path, interactions(TIED_ROWS)), tmp_path,
                                 PreprocessConfig(k_core=1, tie_order="id"), events_per_bucket=6)
    assert_same_outputs(memory, streaming)
    sequences = pl.read_parquet(streaming.sequences.path)
    # by (time, item_idx): i2 | i5 i7 | i1 i4 i9  ->  i9 test, i4 valid
    assert sequences.row(0, named=True) == {"user_idx": 1, "train": [2, 4, 5, 1], "valid": [3], "test": [6],
                                            "context": []}


def test_ties_in_time_keep_the_file_order_in_both_engines_under_file(tmp_path):
    # Users listed last to first: the bucketing rewrites the rows, ties keep each user's file order.
    rows = sorted(TIED_ROWS, key=lambda row: row[0], reverse=True)
    memory, streaming = run_both(write_raw(tmp_path, interactions(rows)), tmp_path,
                                 PreprocessConfig(k_core=1), events_per_bucket=6)
    assert_same_outputs(memory, streaming)
    sequences = pl.read_parquet(streaming.sequences.path)
    # by time, ties as listed: i2 | i7 i5 | i9 i4 i1  ->  i1 test, i4 valid
    assert sequences.row(0, named=True) == {"user_idx": 1, "train": [2, 5, 4, 6], "valid": [3], "test": [1],
                                            "context": []}


@pytest.mark.parametrize("tie_order", ["file", "shuffle", "id"])
def test_both_engines_give_the_same_sequences_under_each_tie_order(tmp_path, tie_order):
    # Timestamps coarsened to 3-day steps and rows shuffled: many ties, file order unlike time or id order.
    shop = generate_shop(SyntheticConfig(n_users=200, n_items=60, n_topics=4, mean_events_per_user=14), 5)
    coarse = shop.interactions.with_columns(pl.col("timestamp") // (3 * 86_400)).sample(fraction=1.0, shuffle=True,
                                                                                         seed=1)
    raw = write_raw(tmp_path, coarse, items=shop.items)
    for dedupe_mode in ("user_item", "exact"):
        folder = tmp_path / dedupe_mode
        memory, streaming = run_both(raw, folder, PreprocessConfig(k_core=3, tie_order=tie_order, dedupe=dedupe_mode),
                                     events_per_bucket=150, seed=7)
        assert_same_outputs(memory, streaming)
        ties = pl.read_parquet(memory.events.path).filter(pl.len().over("user_idx", "timestamp") > 1)
        assert ties.height > 100  # the case is about ties


def test_users_dropped_by_the_split_are_renumbered_alike_across_buckets(tmp_path):
    # leave_one_out needs 3 events: u2 and u4 have 2 and are dropped, so u3 becomes user 2, u5 user 3.
    counts = {"u1": 4, "u2": 2, "u3": 3, "u4": 2, "u5": 5}
    rows = [(user, f"i{n}", 10 * n) for user, count in counts.items() for n in range(count)]
    memory, streaming = run_both(write_raw(tmp_path, interactions(rows)), tmp_path,
                                 PreprocessConfig(k_core=1), events_per_bucket=2)  # about a user per bucket
    assert_same_outputs(memory, streaming)
    users = pl.read_parquet(streaming.users.path)
    assert users.select("user_idx", "user_id").rows() == [(1, "u1"), (2, "u3"), (3, "u5")]


def test_k_core_needing_several_rewrites_gives_the_memory_fixpoint(tmp_path):
    # k=3. Core: users A, B, C x items X, Y, Z (9 events). Hanging off it, each pass exposing the next:
    # pass 1 drops item P (1 event) and user G (2); D and item V fall to 2. Pass 2 drops them; E, F
    # and item W fall to 2. Pass 3 drops those; pass 4 finds only the core, every count 3.
    core = [(u, i, t) for t, (u, i) in enumerate((u, i) for u in "ABC" for i in "XYZ")]
    chain = [("D", "P", 20), ("D", "W", 21), ("D", "X", 22), ("E", "W", 23), ("F", "W", 24), ("E", "V", 25),
             ("F", "V", 26), ("G", "V", 27), ("E", "X", 28), ("F", "Y", 29), ("G", "Z", 30)]
    raw = write_raw(tmp_path, interactions(core + chain))
    memory, streaming = run_both(raw, tmp_path, PreprocessConfig(k_core=3), events_per_bucket=3)
    assert_same_outputs(memory, streaming)
    assert pl.read_parquet(streaming.users.path)["user_id"].to_list() == ["A", "B", "C"]
    assert streaming.n_events == 9


def test_k_core_files_rewrites_until_every_count_reaches_k(tmp_path):
    # The chain of the memory engine's k_core test (k=2): four passes drop C and D, then stable.
    rows = [("A", "X", 1), ("A", "Y", 2), ("B", "X", 3), ("B", "Y", 4),
            ("C", "Z", 5), ("C", "P", 6), ("D", "Z", 7), ("D", "X", 8)]
    paths = [tmp_path / "0.parquet", tmp_path / "1.parquet"]
    interactions(rows[:4]).write_parquet(paths[0])
    interactions(rows[4:]).write_parquet(paths[1])
    users, items, rounds = k_core_files(paths, 2)
    assert rounds == 4
    assert sorted(users.rows()) == [("A", 2), ("B", 2)] and sorted(items.rows()) == [("X", 2), ("Y", 2)]
    assert pl.read_parquet(paths[1]).is_empty()


def test_buckets_are_consecutive_user_ranges_of_about_the_requested_size():
    events = interactions([(f"u{u}", "i", t) for u, n in enumerate([3, 1, 4, 1, 5, 9, 2, 6]) for t in range(n)])
    buckets = assign_user_buckets(events.lazy(), 5)
    # events before each user, in user order: 0 3 4 8 9 14 23 25 -> // 5
    assert buckets.rows() == [("u0", 0), ("u1", 0), ("u2", 0), ("u3", 1), ("u4", 1), ("u5", 2), ("u6", 4),
                              ("u7", 5)]


@pytest.mark.parametrize("mode", ["user_item", "exact"])
def test_dedupe_and_rating_filter_match_memory_with_repeats_and_rated_duplicates(tmp_path, mode):
    # Repeats of a pair at other times, exact duplicates, and same-time duplicates differing in rating.
    rows = [(u, f"i{n % 4}", 10 * n + (n % 3), 1.0 + n % 5) for u in ("u1", "u2", "u3") for n in range(12)]
    rows += [("u1", "i0", 0, 1.0), ("u2", "i1", 11, 5.0), ("u2", "i1", 11, 4.0), ("u3", "i2", 50, 2.0)]
    raw = write_raw(tmp_path, interactions(rows, rating=True))
    for min_rating in (None, 2.0):
        folder = tmp_path / f"rating-{min_rating}"
        memory, streaming = run_both(raw, folder, PreprocessConfig(dedupe=mode, k_core=2, min_rating=min_rating),
                                     events_per_bucket=10)
        assert_same_outputs(memory, streaming)


def test_user_groups_protocol_matches_memory(tmp_path):
    rows = [(f"u{u}", f"i{(u + n) % 5}", 100 * n + u) for u in range(8) for n in range(4)]
    users = pl.DataFrame({"user_id": [f"u{u}" for u in range(8)],
                          "split_group": ["train", "valid", "train", "test", "train", None, "valid", "test"]})
    raw = write_raw(tmp_path, interactions(rows), users)
    memory, streaming = run_both(raw, tmp_path, PreprocessConfig(k_core=2), SplitConfig(protocol="user_groups"),
                                 events_per_bucket=5)
    assert_same_outputs(memory, streaming)
    assert set(pl.read_parquet(streaming.events.path)["split"]) == {"train", "valid", "test", "context"}


# --- bad input fails alike -----------------------------------------------------------------------


def error_of(call) -> BaseException:
    """The exception `call()` raises."""
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


GOOD_ROWS = [(f"u{u}", f"i{(u + n) % 6}", 10 * n, float(1 + (u + n) % 5)) for u in range(6) for n in range(5)]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("k_core", r"no interactions left after preprocess\.min_rating=None and preprocess\.k_core=100"),
        ("rating", r"no interactions left after preprocess\.min_rating=9\.0"),
        ("split", r"no user has the 21 interactions that split\.protocol=last_n needs"),
        ("group_column", r"split\.user_group_column 'split_group' is not a users column"),
        ("no_test_users", r"no user of split\.test_groups \['test'\] in column 'split_group'"),
        ("scenario", r"scenario\.target 'F' does not occur in column 'gender'"),
        ("no_rating_column", r"rating"),
    ],
)
def test_bad_input_raises_the_memory_engines_error(tmp_path, case, message):
    users = pl.DataFrame({"user_id": [f"u{u}" for u in range(6)], "gender": ["M"] * 6,
                          "split_group": ["train", "valid"] * 3})
    rows = [row[:3] for row in GOOD_ROWS] if case == "no_rating_column" else GOOD_ROWS
    raw = write_raw(tmp_path, interactions(rows, rating=case != "no_rating_column"),
                    users.drop("split_group") if case == "group_column" else users)
    preprocess = {"k_core": PreprocessConfig(k_core=100), "rating": PreprocessConfig(min_rating=9.0),
                  "no_rating_column": PreprocessConfig(min_rating=2.0)}.get(case, PreprocessConfig(k_core=2))
    split = {"split": SplitConfig(protocol="last_n", holdout_n=10), "group_column": SplitConfig(protocol="user_groups"),
             "no_test_users": SplitConfig(protocol="user_groups")}.get(case, SplitConfig())
    scenario = ScenarioConfig() if case == "scenario" else NO_PARTITION
    memory = error_of(lambda: prepare_data(raw, preprocess, split, scenario, None, tmp_path / "memory"))
    streaming = error_of(lambda: prepare_data_streaming(raw, preprocess.model_copy(update={"engine": "streaming"}),
                                                        split, scenario, None, tmp_path / "streaming",
                                                        events_per_bucket=7))
    assert type(streaming) is type(memory)
    assert re.search(message, str(memory)), str(memory)
    if isinstance(memory, DataError):
        assert str(streaming) == str(memory)
    assert not list((tmp_path / "streaming").glob(".preprocess-streaming-*"))  # cleaned up after the error
