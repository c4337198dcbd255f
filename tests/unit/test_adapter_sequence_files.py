"""The Food–Kitchen sequence-file adapter on small fixture folders written by the tests."""
from pathlib import Path

import polars as pl
import pytest

from conf.schema import SequenceFilesConfig
from tasks.data.adapters.sequence_files import SEQUENCE_FILES, load
from tasks.schemas import DataError

ITEMS = "item_id\tdomain\tasin\ttitle\n0\tfood\tA0\tOat Crunch\n1\tfood\tA1\tGreen Tea\n2\tkitchen\tB2\tTea Kettle\n"


def fixture_folder(tmp_path: Path, lines: dict[str, str] | None = None, raw: bool = True) -> Path:
    folder = tmp_path / "fk"
    sequences = folder / "raw" if raw else folder
    sequences.mkdir(parents=True)
    (folder / "items.tsv").write_text(ITEMS)
    defaults = {"train_A": "1\t0,1\n", "train_B": "1\t2\n", "train_overlap": "1\t0,2,1\n",
                "valid": "1\t1,2\n", "test": "1\t2,0,1\n"}
    for name in SEQUENCE_FILES:
        (sequences / f"{name}.txt").write_text((lines or {}).get(name, defaults[name]))
    return folder


@pytest.mark.parametrize("raw", [True, False])
def test_sequences_become_position_ordered_events_with_per_file_users(tmp_path, raw):
    frames = load(SequenceFilesConfig(path=str(fixture_folder(tmp_path, raw=raw))))
    events = frames.interactions.collect()
    overlap = events.filter(pl.col("user_id") == "train_overlap:1")
    assert overlap["item_id"].to_list() == ["0", "2", "1"]
    assert overlap["timestamp"].to_list() == [0, 1, 2]  # the position is the order
    assert events.schema == pl.Schema({"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64})
    # Index 1 of every file is a different person.
    assert events["user_id"].n_unique() == len(SEQUENCE_FILES)
    users = dict(frames.users.collect().iter_rows())
    assert users["valid:1"] == "valid" and users["train_B:1"] == "train_B"
    items = frames.items.collect().sort("item_id")
    assert items["title"].to_list() == ["Oat Crunch", "Green Tea", "Tea Kettle"]
    assert items["domain"].to_list() == ["food", "food", "kitchen"]


def test_missing_sequence_file_is_named_with_where_to_get_the_data(tmp_path):
    folder = fixture_folder(tmp_path)
    (folder / "raw" / "valid.txt").unlink()
    with pytest.raises(DataError, match=r"valid\.txt: file not found.*data\.sequence_files\.path"):
        load(SequenceFilesConfig(path=str(folder)))


def test_line_without_a_tab_is_named(tmp_path):
    folder = fixture_folder(tmp_path, {"train_B": "1\t2\n2 5,6\n"})
    with pytest.raises(DataError, match=r"train_B\.txt: line 2: expected 'user_index<TAB>item,item"):
        load(SequenceFilesConfig(path=str(folder)))


def test_non_integer_item_id_is_named_with_its_line(tmp_path):
    folder = fixture_folder(tmp_path, {"test": "1\t2\n2\t0,x7\n"})
    with pytest.raises(DataError, match=r"test\.txt: line 2: item id 'x7'"):
        load(SequenceFilesConfig(path=str(folder)))


def test_item_missing_from_the_item_table_is_reported(tmp_path):
    folder = fixture_folder(tmp_path, {"train_A": "1\t0,9\n"})
    with pytest.raises(DataError, match=r"items\.tsv: item id '9' .*train_A\.txt"):
        load(SequenceFilesConfig(path=str(folder)))
