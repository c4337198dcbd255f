"""Atomic writes, content fingerprints, schema-checked reads and raw-table validation."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from tasks import schemas
from tasks.data.ingestion import validate_raw
from tasks.io import TableRef, atomic_path, read_table, write_csv, write_parquet
from tasks.schemas import DataError

INTERACTIONS = pl.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i1"], "timestamp": [10, 20]})
ITEMS = pl.DataFrame({"item_id": ["i1"], "title": ["Dune"], "category": ["sf"], "domain": ["books"]})
USERS = pl.DataFrame({"user_id": ["u1", "u2"]})


def names_in(directory: Path) -> list[str]:
    """Sorted file names in a directory, hidden temporaries included."""
    return sorted(path.name for path in directory.iterdir())


# --- atomic writes and fingerprints ------------------------------------------------------------


@pytest.mark.parametrize("write", [write_parquet, write_csv], ids=["parquet", "csv"])
def test_write_leaves_only_the_target_file(tmp_path, write):
    target = tmp_path / "nested" / f"table.{'csv' if write is write_csv else 'parquet'}"
    ref = write(INTERACTIONS, target)
    assert ref.path == str(target)
    assert names_in(target.parent) == [target.name]  # no .table.*.tmp left behind


@pytest.mark.parametrize("write", [write_parquet, write_csv], ids=["parquet", "csv"])
def test_fingerprint_follows_content_not_path(tmp_path, write):
    first = write(INTERACTIONS, tmp_path / "a.out")
    same = write(INTERACTIONS, tmp_path / "b.out")
    changed = write(INTERACTIONS.with_columns(pl.col("timestamp") + 1), tmp_path / "c.out")
    assert first.fingerprint == same.fingerprint
    assert changed.fingerprint != first.fingerprint
    assert re.fullmatch(r"[0-9a-f]{16}", first.fingerprint)


def test_rewriting_a_file_updates_its_fingerprint(tmp_path):
    target = tmp_path / "table.parquet"
    before = write_parquet(INTERACTIONS, target)
    after = write_parquet(INTERACTIONS.head(1), target)
    assert after.fingerprint != before.fingerprint
    assert pl.read_parquet(target).height == 1


def test_atomic_path_leaves_neither_target_nor_temporary_when_the_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as temporary:
            temporary.write_text("half written", encoding="utf-8")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert names_in(tmp_path) == []


def test_atomic_path_keeps_the_previous_file_when_a_rewrite_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("complete", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half written", encoding="utf-8")
            raise RuntimeError("interrupted")
    assert target.read_text(encoding="utf-8") == "complete"
    assert names_in(tmp_path) == ["out.txt"]


def test_atomic_path_writes_to_a_sibling_then_renames(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary != target
        temporary.write_text("done", encoding="utf-8")
        assert not target.exists()  # invisible until the block succeeds
    assert target.read_text(encoding="utf-8") == "done"


# --- schema-checked reads ----------------------------------------------------------------------


def test_read_table_returns_a_table_that_matches_the_schema(tmp_path):
    ref = write_parquet(INTERACTIONS, tmp_path / "interactions.parquet")
    assert read_table(ref, schemas.INTERACTIONS, "interactions").equals(INTERACTIONS)


def test_read_table_names_the_file_and_the_missing_column(tmp_path):
    path = tmp_path / "interactions.parquet"
    ref = write_parquet(INTERACTIONS.drop("timestamp"), path)
    expected = f"{path}: interactions table has no column 'timestamp' (expected Int64)"
    with pytest.raises(DataError, match=re.escape(expected)):
        read_table(ref, schemas.INTERACTIONS, "interactions")


def test_read_table_names_the_file_and_the_mistyped_column(tmp_path):
    path = tmp_path / "interactions.parquet"
    ref = write_parquet(INTERACTIONS.with_columns(pl.col("timestamp").cast(pl.String)), path)
    expected = f"{path}: interactions column 'timestamp' has type String, expected Int64"
    with pytest.raises(DataError, match=re.escape(expected)):
        read_table(ref, schemas.INTERACTIONS, "interactions")


def test_read_table_checks_the_missing_column_of_a_csv(tmp_path):
    path = tmp_path / "interactions.csv"
    ref = write_csv(INTERACTIONS.drop("item_id"), path)
    with pytest.raises(DataError, match=re.escape(f"{path}: interactions table has no column 'item_id'")):
        read_table(ref, schemas.INTERACTIONS, "interactions")


def test_read_table_names_the_path_of_a_missing_file(tmp_path):
    path = tmp_path / "gone.parquet"
    with pytest.raises(DataError, match=re.escape(f"{path}: sequences table is missing")):
        read_table(TableRef(str(path), "0" * 16), schemas.SEQUENCES, "sequences")


# --- raw-table validation ----------------------------------------------------------------------


def test_validate_raw_accepts_well_formed_tables():
    validate_raw(INTERACTIONS, ITEMS, USERS, origin="data.source=test")


def test_validate_raw_rejects_an_empty_interactions_table():
    with pytest.raises(DataError, match=r"^data\.source=test: interactions table is empty"):
        validate_raw(INTERACTIONS.clear(), ITEMS, USERS, origin="data.source=test")


def test_validate_raw_names_the_column_with_null_user_ids():
    with_nulls = INTERACTIONS.with_columns(pl.Series("user_id", [None, "u2"], dtype=pl.String))
    with pytest.raises(DataError, match=r"interactions column 'user_id' has 1 empty values"):
        validate_raw(with_nulls, ITEMS, USERS, origin="data.source=test")


def test_validate_raw_names_the_table_lacking_a_required_column():
    with pytest.raises(DataError, match=r"items table has no column 'domain'"):
        validate_raw(INTERACTIONS, ITEMS.drop("domain"), USERS, origin="data.source=test")
