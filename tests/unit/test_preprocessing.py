"""Preprocessing steps on hand-built frames, then prepare_data end to end on the tiny synthetic shop."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from conf.loading import load_config, preset_path
from conf.schema import PipelineConfig, PreprocessConfig, ScenarioConfig, SplitConfig
from tasks.data.ingestion import RawTables, ingest_dataset
from tasks.io import write_parquet
from tasks.data.preprocessing import (
    TIE,
    UNKNOWN_GROUP,
    PreparedData,
    add_tie_break,
    assign_roles,
    assign_splits,
    assign_user_group_splits,
    build_sequences,
    check_partition,
    dedupe,
    filter_by_rating,
    index_ids,
    k_core,
)
from tasks.data.prepare import prepare_data
from tasks.schemas import DataError


def interactions(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    """Raw interactions from (user_id, item_id, timestamp) rows."""
    return pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64},
                        orient="row")


def indexed_events(rows: list[tuple[int, int, int]], tie_order: str = "file") -> pl.DataFrame:
    """Indexed events from (user_idx, item_idx, timestamp) rows, ties broken by row order ('file') or item ('id')."""
    frame = pl.DataFrame(rows, schema={"user_idx": pl.Int32, "item_idx": pl.Int32, "timestamp": pl.Int64},
                         orient="row")
    tie = pl.int_range(pl.len(), dtype=pl.UInt64) if tie_order == "file" else pl.col("item_idx")
    return frame.with_columns(tie.alias(TIE))


def deduped(events: pl.DataFrame, mode: str) -> pl.DataFrame:
    """`dedupe` on raw rows numbered in file order, without the tie-break column."""
    return dedupe(add_tie_break(events.lazy(), "file"), mode).collect().drop(TIE)


def pairs(frame: pl.DataFrame) -> list[tuple[str, str]]:
    """Sorted (user_id, item_id) pairs of a frame."""
    return sorted(frame.select("user_id", "item_id").iter_rows())


def splits_by_item(frame: pl.DataFrame, user_idx: int) -> dict[int, str]:
    """item_idx -> split of one user's events."""
    return dict(frame.filter(pl.col("user_idx") == user_idx).select("item_idx", "split").iter_rows())


# --- filtering and dedupe ----------------------------------------------------------------------


def test_filter_by_rating_keeps_ratings_at_or_above_the_threshold():
    events = pl.LazyFrame({"user_id": ["a", "a", "b", "b"], "item_id": ["x", "y", "x", "z"],
                           "rating": [1.0, 3.5, 4.0, 5.0]})
    kept = filter_by_rating(events, 4.0).collect()
    assert kept["rating"].to_list() == [4.0, 5.0]  # 4.0 itself is kept: the bound is inclusive


def test_filter_by_rating_none_keeps_everything():
    events = pl.LazyFrame({"user_id": ["a", "b"], "item_id": ["x", "x"], "rating": [1.0, 2.0]})
    assert filter_by_rating(events, None).collect().height == 2


def test_dedupe_user_item_keeps_the_earliest_event_of_a_repeated_pair():
    events = interactions([("a", "x", 50), ("a", "y", 30), ("a", "x", 20), ("b", "x", 70), ("a", "x", 90)])
    kept = deduped(events, "user_item")
    # (a, x) happened at 50, 20 and 90: only t=20 survives; (b, x) is another user's pair and stays.
    assert sorted(kept.iter_rows()) == [("a", "x", 20), ("a", "y", 30), ("b", "x", 70)]


def test_dedupe_exact_drops_identical_rows_but_keeps_repeats_at_other_times():
    events = interactions([("a", "x", 50), ("a", "x", 50), ("a", "x", 90), ("b", "x", 50)])
    kept = deduped(events, "exact")
    assert sorted(kept.iter_rows()) == [("a", "x", 50), ("a", "x", 90), ("b", "x", 50)]


# --- k-core ------------------------------------------------------------------------------------


def test_k_core_repeats_until_a_fixpoint_where_one_pass_is_not_enough():
    # k=2. Core: users A, B x items X, Y. Hanging off it: C (Z, P) and D (Z, X).
    # Counts: users A2 B2 C2 D2; items X3 Y2 Z2 P1.
    # pass 1: P has 1 -> drop (C,P); now C has 1.    pass 2: drop (C,Z); now Z has 1.
    # pass 3: drop (D,Z); now D has 1.                pass 4: drop (D,X); X back to 2.  pass 5: stable.
    events = interactions([
        ("A", "X", 1), ("A", "Y", 2), ("B", "X", 3), ("B", "Y", 4),
        ("C", "Z", 5), ("C", "P", 6), ("D", "Z", 7), ("D", "X", 8),
    ])
    cored = k_core(events, 2)
    assert pairs(cored) == [("A", "X"), ("A", "Y"), ("B", "X"), ("B", "Y")]
    assert cored.group_by("user_id").len()["len"].min() >= 2
    assert cored.group_by("item_id").len()["len"].min() >= 2
    assert k_core(cored, 2).equals(cored)


def test_k_core_with_k_one_keeps_everything():
    events = interactions([("A", "X", 1), ("B", "Y", 2)])
    assert k_core(events, 1).height == 2


def test_k_core_can_empty_the_table():
    # A 2-user, 2-item square survives k=2 but not k=3.
    events = interactions([("A", "X", 1), ("A", "Y", 2), ("B", "X", 3), ("B", "Y", 4)])
    assert k_core(events, 2).height == 4
    assert k_core(events, 3).is_empty()


# --- ids ---------------------------------------------------------------------------------------


def test_index_ids_is_contiguous_from_one_in_sorted_id_order():
    events = interactions([("c", "x", 1), ("a", "x", 2), ("b", "y", 3), ("a", "y", 4)])
    mapping = index_ids(events, "user_id")
    assert mapping.columns == ["user_id", "user_idx"]
    assert mapping["user_idx"].dtype == pl.Int32
    assert list(mapping.iter_rows()) == [("a", 1), ("b", 2), ("c", 3)]  # 0 stays free for padding


def test_index_ids_is_a_bijection_between_ids_and_indices():
    events = interactions([(f"u{i % 7}", f"i{i % 11}", i) for i in range(40)])
    mapping = index_ids(events, "item_id")
    assert mapping["item_id"].n_unique() == mapping["item_idx"].n_unique() == mapping.height == 11
    assert sorted(mapping["item_idx"].to_list()) == list(range(1, 12))


# --- temporal split ----------------------------------------------------------------------------


def test_leave_one_out_holds_out_the_last_event_for_test_and_the_one_before_for_valid():
    # User 1's events arrive shuffled; by time the order is items 10, 11, 12, 13, 14.
    events = indexed_events([(1, 13, 400), (1, 10, 100), (1, 14, 500), (1, 12, 300), (1, 11, 200)])
    split = assign_splits(events, 1)
    assert splits_by_item(split, 1) == {10: "train", 11: "train", 12: "train", 13: "valid", 14: "test"}


def test_split_never_puts_a_later_event_before_an_earlier_split():
    events = indexed_events(
        [(1, i, t) for i, t in zip(range(1, 9), [80, 10, 70, 20, 60, 30, 50, 40])]
        + [(2, i, t) for i, t in zip(range(1, 6), [5, 5, 9, 1, 9])]  # ties in time
    )
    for holdout in (1, 2):
        split = assign_splits(events, holdout)
        bounds = split.group_by("user_idx", "split").agg(
            pl.col("timestamp").min().alias("first"), pl.col("timestamp").max().alias("last")
        )
        for user in (1, 2):
            rows = bounds.filter(pl.col("user_idx") == user).iter_rows(named=True)
            by_split = {row["split"]: row for row in rows}
            assert by_split["train"]["last"] <= by_split["valid"]["first"]
            assert by_split["valid"]["last"] <= by_split["test"]["first"]


def test_ties_in_time_follow_the_tie_key_file_order_or_item_idx():
    # Items 9 and 4 share the last timestamp. File order: 9 then 4, so 4 is test and 9 valid.
    rows = [(1, 9, 300), (1, 2, 100), (1, 4, 300), (1, 7, 200)]
    assert splits_by_item(assign_splits(indexed_events(rows), 1), 1) == {2: "train", 7: "train", 9: "valid",
                                                                            4: "test"}
    assert splits_by_item(assign_splits(indexed_events(rows[::-1]), 1), 1) == {2: "train", 7: "train",
                                                                                  4: "valid", 9: "test"}
    # By item_idx ('id'): 4 then 9 whatever the input order.
    expected = {2: "train", 7: "train", 4: "valid", 9: "test"}
    assert splits_by_item(assign_splits(indexed_events(rows, "id"), 1), 1) == expected
    assert splits_by_item(assign_splits(indexed_events(rows[::-1], "id"), 1), 1) == expected


def test_dedupe_keeps_the_first_of_a_pair_repeated_at_one_time_in_file_order():
    # (a, x) twice at t=5 around (a, y): the first x is kept, so x stays before y among the ties.
    events = add_tie_break(interactions([("a", "x", 5), ("a", "y", 5), ("a", "x", 5)]).lazy(), "file")
    for mode in ("user_item", "exact"):
        kept = dedupe(events, mode).collect()
        assert kept.sort("timestamp", TIE).select("item_id", TIE).rows() == [("x", 0), ("y", 1)]


def test_users_with_too_few_events_for_the_holdout_are_dropped():
    # holdout 1 needs 2*1 + 1 = 3 events: user 1 has 3 (one train event), user 2 has only 2.
    events = indexed_events([(1, 1, 1), (1, 2, 2), (1, 3, 3), (2, 1, 1), (2, 2, 2)])
    split = assign_splits(events, 1)
    assert split["user_idx"].unique().to_list() == [1]
    assert splits_by_item(split, 1) == {1: "train", 2: "valid", 3: "test"}


def test_last_n_holdout_of_three_gives_three_valid_and_three_test_items_per_user():
    # holdout 3 needs 7 events: user 1 has 8 (2 train), user 2 has 7 (1 train), user 3 has 6 (dropped).
    events = indexed_events(
        [(1, i, 10 * i) for i in range(1, 9)] + [(2, i, 10 * i) for i in range(1, 8)]
        + [(3, i, 10 * i) for i in range(1, 7)]
    )
    split = assign_splits(events, 3)
    counts = dict(split.group_by("user_idx", "split").len().select(
        pl.concat_str("user_idx", "split", separator="/"), "len").iter_rows())
    assert counts == {"1/train": 2, "1/valid": 3, "1/test": 3, "2/train": 1, "2/valid": 3, "2/test": 3}
    assert [i for i, s in sorted(splits_by_item(split, 1).items()) if s == "test"] == [6, 7, 8]


def test_build_sequences_lists_each_split_in_time_order():
    events = indexed_events([(2, 5, 30), (1, 3, 20), (1, 8, 10), (2, 6, 10), (1, 4, 40), (1, 1, 30),
                             (2, 7, 20), (2, 9, 40)])
    split = assign_splits(events, 1)
    sequences = build_sequences(split)
    # User 1 by time: 8, 3, 1, 4.   User 2 by time: 6, 7, 5, 9.
    assert sequences.to_dicts() == [
        {"user_idx": 1, "train": [8, 3], "valid": [1], "test": [4], "context": []},
        {"user_idx": 2, "train": [6, 7], "valid": [5], "test": [9], "context": []},
    ]


def test_user_group_split_holds_out_whole_users_with_their_history_as_context():
    events = indexed_events([(1, 5, 10), (1, 6, 20), (2, 7, 10), (2, 8, 20), (2, 9, 30), (3, 1, 10), (3, 2, 20)])
    groups = pl.DataFrame({"user_idx": [1, 2, 3], "_group": ["train_A", "valid", "test"]},
                          schema={"user_idx": pl.Int32, "_group": pl.String})
    split = assign_user_group_splits(events, groups, SplitConfig(protocol="user_groups"))
    sequences = build_sequences(split)
    assert sequences.to_dicts() == [
        {"user_idx": 1, "train": [5, 6], "valid": [], "test": [], "context": []},
        {"user_idx": 2, "train": [], "valid": [9], "test": [], "context": [7, 8]},
        {"user_idx": 3, "train": [], "valid": [], "test": [2], "context": [1]},
    ]


# --- source/target roles -----------------------------------------------------------------------

USERS = pl.DataFrame({"user_idx": [1, 2, 3], "gender": ["M", "F", "X"]})
ITEMS = pl.DataFrame({"item_idx": [1, 2, 3], "domain": ["books", "movies", "music"]})


def test_user_group_roles_mark_source_target_and_other_users():
    users, items = assign_roles(USERS, ITEMS, ScenarioConfig(partition="user_group", source="M", target="F"))
    assert users["role"].to_list() == ["source", "target", "other"]
    assert items["role"].to_list() == ["all", "all", "all"]


def test_item_domain_roles_mark_source_target_and_other_items():
    users, items = assign_roles(USERS, ITEMS, ScenarioConfig(partition="item_domain", source="books",
                                                             target="movies"))
    assert items["role"].to_list() == ["source", "target", "other"]
    assert users["role"].to_list() == ["all", "all", "all"]


def test_check_partition_accepts_values_that_occur():
    check_partition(USERS, ITEMS, ScenarioConfig(source="M", target="F"), "gender", origin="users.parquet")


def test_check_partition_names_scenario_target_when_its_value_is_absent():
    men_only = USERS.filter(pl.col("gender") == "M")
    with pytest.raises(DataError, match=r"^users\.parquet: scenario\.target 'F' does not occur in column 'gender'"):
        check_partition(men_only, ITEMS, ScenarioConfig(source="M", target="F"), None, origin="users.parquet")


def test_check_partition_names_the_missing_domain_for_item_domain():
    scenario = ScenarioConfig(partition="item_domain", source="books", target="games")
    with pytest.raises(DataError, match=r"scenario\.target 'games' does not occur in column 'domain'"):
        check_partition(USERS, ITEMS, scenario, None, origin="items.parquet")


def test_check_partition_names_evaluation_group_attribute_for_a_missing_column():
    expected = r"users\.parquet: evaluation\.group_attribute 'age_band' is not a users column"
    with pytest.raises(DataError, match=expected):
        check_partition(USERS, ITEMS, ScenarioConfig(), "age_band", origin="users.parquet")


# --- prepare_data on the tiny synthetic shop ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_config() -> PipelineConfig:
    return load_config(preset_path("experiments/tiny.yaml"))


def prepare(config: PipelineConfig, root: Path, preprocess: PreprocessConfig | None = None) -> PreparedData:
    """Ingest the configured shop into `root` and preprocess it there."""
    raw = ingest_dataset(config.data, config.seed, root)
    return prepare_data(raw, preprocess or config.preprocess, config.split, config.scenario,
                        config.evaluation.group_attribute, root)


@pytest.fixture(scope="module")
def tiny_prepared(tiny_config, tmp_path_factory) -> PreparedData:
    return prepare(tiny_config, tmp_path_factory.mktemp("prepared"))


def test_prepared_users_and_items_have_contiguous_indices(tiny_prepared):
    users = pl.read_parquet(tiny_prepared.users.path)
    items = pl.read_parquet(tiny_prepared.items.path)
    assert users["user_idx"].to_list() == list(range(1, tiny_prepared.n_users + 1))
    assert items["item_idx"].to_list() == list(range(1, tiny_prepared.n_items))  # n_items counts padding 0
    assert users["user_id"].n_unique() == users.height and items["item_id"].n_unique() == items.height
    assert set(users["role"]) == {"source", "target"}  # tiny: every user is M or F


def test_prepared_sequences_have_every_split_for_every_user(tiny_prepared):
    sequences = pl.read_parquet(tiny_prepared.sequences.path)
    assert sequences.height == tiny_prepared.n_users
    assert sequences["train"].list.len().min() >= 1
    assert sequences["valid"].list.len().to_list() == [1] * sequences.height  # leave_one_out
    assert sequences["test"].list.len().to_list() == [1] * sequences.height


def test_prepared_events_respect_k_core_and_time_order(tiny_config, tiny_prepared):
    events = pl.read_parquet(tiny_prepared.events.path)
    assert events.height == tiny_prepared.n_events
    # k_core=5 leaves every user at least 5 events, more than the 3 leave_one_out needs, so the
    # split drops nobody and the k-core bound still holds in the written table.
    k = tiny_config.preprocess.k_core
    assert events.group_by("user_idx").len()["len"].min() >= k
    assert events.group_by("item_idx").len()["len"].min() >= k
    bounds = events.group_by("user_idx", "split").agg(pl.col("timestamp").min().alias("first"),
                                                        pl.col("timestamp").max().alias("last"))
    first_last = {(user, split): (first, last) for user, split, first, last in bounds.iter_rows()}
    for user in range(1, tiny_prepared.n_users + 1):
        assert first_last[(user, "train")][1] <= first_last[(user, "valid")][0] <= first_last[(user, "test")][0]


def test_prepare_data_gives_the_same_sequences_for_the_same_config_and_seed(tiny_config, tiny_prepared, tmp_path):
    again = prepare(tiny_config, tmp_path)
    assert again.sequences.path != tiny_prepared.sequences.path
    assert pl.read_parquet(again.sequences.path).equals(pl.read_parquet(tiny_prepared.sequences.path))
    assert again.sequences.fingerprint == tiny_prepared.sequences.fingerprint


def test_prepare_data_raises_when_k_core_leaves_nothing(tiny_config, tmp_path):
    with pytest.raises(DataError, match=r"no interactions left after .*preprocess\.k_core=10000; lower them"):
        prepare(tiny_config, tmp_path, PreprocessConfig(k_core=10_000))


# --- equal timestamps: preprocess.tie_order ----------------------------------------------------

# u1's last three events share t=300; the file lists them i3, i1, i2 (id order: i1, i2, i3) and
# repeats i3 after them (dropped by either dedupe). Items i1..i6 get item_idx 1..6.
TIED_ROWS = [("u1", "i5", 100), ("u1", "i6", 200), ("u1", "i3", 300), ("u1", "i1", 300), ("u1", "i2", 300),
             ("u1", "i3", 300), ("u2", "i4", 50), ("u2", "i1", 60), ("u2", "i2", 60), ("u2", "i6", 70)]


def write_tied_raw(folder: Path) -> RawTables:
    """TIED_ROWS as ingested raw tables (bare users and items)."""
    events = interactions(TIED_ROWS)
    items = events.select(pl.col("item_id").unique().sort()).with_columns(
        title=pl.col("item_id"), category=pl.lit("c"), domain=pl.lit("books"))
    return RawTables(write_parquet(events, folder / "raw" / "interactions.parquet"),
                     write_parquet(items, folder / "raw" / "items.parquet"),
                     write_parquet(events.select(pl.col("user_id").unique().sort()), folder / "raw" / "users.parquet"))


def tied_sequence(raw: RawTables, folder: Path, tie_order: str, seed: int | None = None,
                  dedupe_mode: str = "user_item") -> list[int]:
    """u1's item_idx sequence (train, valid, test) after prepare_data under `tie_order`."""
    prepared = prepare_data(raw, PreprocessConfig(k_core=1, tie_order=tie_order, dedupe=dedupe_mode), SplitConfig(),
                            ScenarioConfig(partition="none", source=None, target=None), None, folder, seed)
    row = pl.read_parquet(prepared.sequences.path).row(0, named=True)
    return row["train"] + row["valid"] + row["test"]


@pytest.mark.parametrize("dedupe_mode", ["user_item", "exact"])
def test_file_tie_order_keeps_the_file_order_of_equal_timestamps(tmp_path, dedupe_mode):
    sequence = tied_sequence(write_tied_raw(tmp_path), tmp_path, "file", dedupe_mode=dedupe_mode)
    assert sequence == [5, 6, 3, 1, 2]  # test: i2, the tied event listed last in the file


def test_id_tie_order_orders_equal_timestamps_by_item_id(tmp_path):
    assert tied_sequence(write_tied_raw(tmp_path), tmp_path, "id") == [5, 6, 1, 2, 3]


def test_shuffle_tie_order_is_fixed_by_the_seed_and_changes_with_it(tmp_path):
    raw = write_tied_raw(tmp_path)
    first = tied_sequence(raw, tmp_path / "a", "shuffle", seed=42)
    assert tied_sequence(raw, tmp_path / "b", "shuffle", seed=42) == first
    assert first[:2] == [5, 6] and sorted(first[2:]) == [1, 2, 3]  # only the tied events move
    others = {tuple(tied_sequence(raw, tmp_path / f"s{seed}", "shuffle", seed=seed)) for seed in range(8)}
    assert len(others - {tuple(first)}) > 0


def test_shuffle_tie_order_needs_a_seed(tmp_path):
    with pytest.raises(ValueError, match="tie_order=shuffle needs the run's seed"):
        tied_sequence(write_tied_raw(tmp_path), tmp_path, "shuffle")


def test_the_seed_keys_the_cache_folder_only_under_shuffle(tmp_path):
    raw = write_tied_raw(tmp_path)

    def folder(tie_order: str, seed: int) -> Path:
        prepared = prepare_data(raw, PreprocessConfig(k_core=1, tie_order=tie_order), SplitConfig(),
                                ScenarioConfig(partition="none", source=None, target=None), None, tmp_path, seed)
        return Path(prepared.events.path).parent

    assert folder("file", 1) == folder("file", 2)
    assert folder("shuffle", 1) != folder("shuffle", 2)


def test_shuffled_tie_keys_are_splitmix64_outputs_of_the_seed():
    # Reference values of splitmix64 (Steele et al.): pins the shuffle across Polars versions.
    mask = (1 << 64) - 1

    def reference(seed: int, n: int) -> list[int]:
        values, state = [], seed
        for _ in range(n):
            state = (state + 0x9E3779B97F4A7C15) & mask
            z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & mask
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
            values.append(z ^ (z >> 31))
        return values

    events = interactions([("a", f"i{n}", 1) for n in range(6)]).lazy()
    assert reference(0, 1) == [0xE220A8397B1DCDAF]  # the published first output for seed 0
    for seed in (0, 42, 2**63 + 5):
        assert add_tie_break(events, "shuffle", seed).collect()[TIE].to_list() == reference(seed, 6)


@pytest.mark.parametrize("engine", ["memory", "streaming"])
def test_users_missing_from_the_users_table_form_an_unknown_group_and_are_warned_about(tmp_path, engine, caplog):
    raw = write_tied_raw(tmp_path)
    users = pl.DataFrame({"user_id": ["u1"], "gender": ["F"]})  # u2 has no row; a third user has no gender
    users = pl.concat([users, pl.DataFrame({"user_id": ["u3"], "gender": [None]}, schema=users.schema)])
    raw = RawTables(raw.interactions, raw.items, write_parquet(users, tmp_path / "raw" / "users_gender.parquet"))
    with caplog.at_level("WARNING", logger="tasks.data.preprocessing"):
        prepared = prepare_data(raw, PreprocessConfig(k_core=1, engine=engine), SplitConfig(),
                                ScenarioConfig(partition="none", source=None, target=None), "gender", tmp_path)
    groups = dict(pl.read_parquet(prepared.users.path).select("user_id", "gender").iter_rows())
    assert groups == {"u1": "F", "u2": UNKNOWN_GROUP}
    assert "1 of 2 users have no 'gender'" in caplog.text and "'u2'" in caplog.text


def test_items_without_titles_among_titled_ones_are_warned_about(tmp_path, caplog):
    raw = write_tied_raw(tmp_path)
    items = pl.read_parquet(raw.items.path).with_columns(
        pl.when(pl.col("item_id").is_in(["i1", "i2"])).then(None).otherwise(pl.col("title")).alias("title"))
    raw = RawTables(raw.interactions, write_parquet(items, tmp_path / "raw" / "items_half.parquet"), raw.users)
    with caplog.at_level("WARNING", logger="tasks.data.preprocessing"):
        prepare_data(raw, PreprocessConfig(k_core=1), SplitConfig(),
                     ScenarioConfig(partition="none", source=None, target=None), None, tmp_path)
    assert "items table: 2 of 6 items of the events have no title" in caplog.text and "'i1'" in caplog.text
