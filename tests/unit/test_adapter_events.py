"""Generic event-log adapter: formats, time parsing, column mapping, side tables, and every input error."""
from __future__ import annotations

import gzip
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from conf.schema import EventLogConfig
from tasks.data.adapters import events
from tasks.schemas import DataError

JAN_2_2024 = int(datetime(2024, 1, 2, tzinfo=timezone.utc).timestamp())  # 1704153600


def write(path: Path, text: str) -> Path:
    """A text file, gzipped when the name ends in .gz."""
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def config(path: Path, **settings) -> EventLogConfig:
    return EventLogConfig(interactions=str(path), **settings)


def interactions(cfg: EventLogConfig) -> pl.DataFrame:
    return events.load(cfg).interactions.collect()


def items_by_id(cfg: EventLogConfig) -> dict[str, dict]:
    return {row["item_id"]: row for row in events.load(cfg).items.collect().to_dicts()}


# --- formats and times -------------------------------------------------------------------------


def test_csv_with_iso_times_in_several_spellings(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp\n"
                 "u1,007,2024-01-02T00:00:00Z\n"
                 "u1,i2,2024-01-02T03:00:00+02:00\n"
                 "u2,i2,2024-01-02 00:00:30\n"
                 "u2,i3,2024-01-02\n"
                 "u3,i3,2024-01-02T00:01:00.75\n")
    raw = events.load(config(path))
    assert isinstance(raw.interactions, pl.LazyFrame)
    frame = raw.interactions.collect()
    assert frame.schema == pl.Schema({"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64})
    assert frame["item_id"][0] == "007"  # ids keep their spelling
    assert (frame["timestamp"] - JAN_2_2024).to_list() == [0, 3600, 30, 0, 60]


def test_tsv_gz_with_integer_and_float_seconds_uses_tab_by_default(tmp_path):
    path = write(tmp_path / "log.tsv.gz", "who\twhat\twhen\nu1\ti1\t1704153600\nu1\ti2\t1704153601.9\n")
    cfg = config(path, columns={"user": "who", "item": "what", "time": "when"})
    assert interactions(cfg).rows() == [("u1", "i1", 1704153600), ("u1", "i2", 1704153601)]
    assert events.source_files(cfg) == [path]


def test_custom_time_format_and_separator(tmp_path):
    path = write(tmp_path / "events.csv", "user_id;item_id;timestamp\nu1;i1;02/01/2024 00:10\nu1;i2;03/01/2024 00:00\n")
    cfg = config(path, time_format="%d/%m/%Y %H:%M", separator=";")
    assert (interactions(cfg)["timestamp"] - JAN_2_2024).to_list() == [600, 86_400]


def test_parquet_with_integer_and_datetime_times(tmp_path):
    stamps = [datetime(2024, 1, 2, tzinfo=timezone.utc), datetime(2024, 1, 2, 0, 0, 5, tzinfo=timezone.utc)]
    pl.DataFrame({"user_id": [1, 2], "item_id": ["a", "b"], "timestamp": [JAN_2_2024, JAN_2_2024 + 5],
                  "at": stamps}).write_parquet(tmp_path / "events.parquet")
    by_seconds = interactions(config(tmp_path / "events.parquet"))
    by_datetime = interactions(config(tmp_path / "events.parquet", columns={"time": "at"}))
    assert by_seconds.rows() == [("1", "a", JAN_2_2024), ("2", "b", JAN_2_2024 + 5)]  # ids become text
    assert by_datetime["timestamp"].to_list() == by_seconds["timestamp"].to_list()


def test_position_only_orders_by_position(tmp_path):
    path = write(tmp_path / "seq.csv", "user_id,item_id,pos\nu1,i9,2\nu1,i8,0\nu1,i7,1\n")
    frame = interactions(config(path, columns={"time": None, "position": "pos"}))
    assert frame.sort("timestamp")["item_id"].to_list() == ["i8", "i7", "i9"]
    assert frame.schema["timestamp"] == pl.Int64


def test_keep_events_filters_and_rating_is_float(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp,type,stars\n"
                 "u1,i1,1,view,\nu1,i2,2,purchase,4\nu2,i1,3,purchase,5\n")
    cfg = config(path, columns={"event": "type", "rating": "stars"}, keep_events=["purchase"])
    frame = interactions(cfg)
    assert frame.rows() == [("u1", "i2", 2, 4.0, "purchase"), ("u2", "i1", 3, 5.0, "purchase")]
    assert frame.schema["rating"] == pl.Float64
    assert set(items_by_id(cfg)) == {"i1", "i2"}


# --- domains, items and users ------------------------------------------------------------------


def test_domain_comes_from_events_then_item_table_then_default(tmp_path):
    path = write(tmp_path / "events.csv",
                 "user_id,item_id,timestamp,shop\nu1,i1,1,books\nu1,i2,2,\nu2,i3,3,\nu2,i1,4,films\n")
    write(tmp_path / "items.csv", "id,name,genre,dept\ni1,Dune,sf,films\ni2,Emma,classic,books\n")
    cfg = config(path, columns={"domain": "shop"}, items=str(tmp_path / "items.csv"),
                 item_columns={"item_id": "id", "title": "name", "category": "genre", "domain": "dept"})
    items = items_by_id(cfg)
    assert items["i1"] == {"item_id": "i1", "title": "Dune", "category": "sf", "domain": "books"}  # first event wins
    assert items["i2"]["domain"] == "books"  # from the item table
    assert items["i3"] == {"item_id": "i3", "title": None, "category": None, "domain": "default"}
    assert events.source_files(cfg) == [path, tmp_path / "items.csv"]


def test_without_item_table_every_item_is_in_the_default_domain(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,i1,1\nu1,i2,2\n")
    assert {row["domain"] for row in items_by_id(config(path)).values()} == {"default"}


def test_user_table_attributes_are_text(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,i1,1\nu2,i1,2\n")
    pl.DataFrame({"uid": ["u1", "u9"], "age": [30, 40], "gender": ["F", "M"]}).write_parquet(tmp_path / "users.parquet")
    cfg = config(path, users=str(tmp_path / "users.parquet"), user_id_column="uid")
    users = events.load(cfg).users.collect().sort("user_id")
    assert users.schema == pl.Schema({"user_id": pl.String, "age": pl.String, "gender": pl.String})
    assert users.rows() == [("u1", "30", "F"), ("u2", None, None)]  # only the log's users


def test_without_user_table_users_are_the_logged_ids(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,i1,1\nu2,i1,2\nu1,i2,3\n")
    users = events.load(config(path)).users.collect()
    assert users.columns == ["user_id"] and sorted(users["user_id"]) == ["u1", "u2"]


# --- errors ------------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"absent\.csv: file not found"):
        events.load(config(tmp_path / "absent.csv"))


def test_directory_is_rejected(tmp_path):
    (tmp_path / "events.csv").mkdir()
    with pytest.raises(DataError, match=r"events\.csv: is a directory"):
        events.load(config(tmp_path / "events.csv"))


@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz", "events.parquet"])
def test_empty_file_is_rejected(tmp_path, name):
    path = write(tmp_path / name, "")
    if name.endswith(".parquet"):
        path.write_bytes(b"")
    with pytest.raises(DataError, match=re.escape(f"{name}: file is empty")):
        events.load(config(path))


def test_header_without_rows_is_rejected(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp\n")
    with pytest.raises(DataError, match=r"events\.csv: has a header line but no rows"):
        events.load(config(path))


def test_unknown_extension_lists_the_known_ones(tmp_path):
    path = write(tmp_path / "events.json", "{}")
    with pytest.raises(DataError, match=r"events\.json: unknown file type '\.json'; expected .*\.parquet"):
        events.load(config(path))


def test_absent_mapped_column_lists_the_columns_found(tmp_path):
    path = write(tmp_path / "events.csv", "user,item_id,timestamp\nu1,i1,1\n")
    with pytest.raises(DataError) as error:
        events.load(config(path))
    assert str(error.value) == (
        f"{path}: no column 'user_id' (data.events.columns.user); found columns ['user', 'item_id', 'timestamp']"
    )


def test_duplicate_header_name_is_rejected(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp,item_id\nu1,i1,1,i2\n")
    with pytest.raises(DataError, match=r"events\.csv: line 1: column name\(s\) \['item_id'\] appear more than once"):
        events.load(config(path))


@pytest.mark.parametrize(
    ("body", "cfg_settings", "expected"),
    [
        ("u1,i1,2024-01-02\nu1,i2,yesterday\n", {},
         r"line 3: column 'timestamp' \(time\) cannot be parsed; "
         r"expected seconds or ISO-8601 text \(found 'yesterday'\)"),
        ("u1,i1,02/01/2024\nu1,i2,2024-01-02\n", {"time_format": "%d/%m/%Y"},
         r"line 3: column 'timestamp' \(time\) cannot be parsed; expected text in time_format '%d/%m/%Y'"),
        ("u1,i1,1\nu1,i2,\n", {}, r"line 3: column 'timestamp' \(time\) is empty"),
        ("u1,i1,1\n,i2,2\n", {}, r"line 3: column 'user_id' \(user id\) is empty"),
        ("u1,i1,1\nu1, ,2\n", {}, r"line 3: column 'item_id' \(item id\) is empty"),
    ],
    ids=["iso", "time_format", "empty_time", "empty_user", "blank_item"],
)
def test_bad_value_is_named_with_file_column_and_line(tmp_path, body, cfg_settings, expected):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp\n" + body)
    with pytest.raises(DataError, match=r"events\.csv: " + expected):
        events.load(config(path, **cfg_settings))


def test_time_in_the_future_is_rejected_with_its_line(tmp_path):
    millis = int(time.time() * 1000)
    path = write(tmp_path / "events.csv", f"user_id,item_id,timestamp\nu1,i1,1\nu1,i2,{millis}\n")
    expected = r"events\.csv: line 3: column 'timestamp' \(time\) is in the future.*milliseconds"
    with pytest.raises(DataError, match=expected):
        events.load(config(path))


def test_bad_row_in_parquet_is_named_by_row(tmp_path):
    frame = pl.DataFrame({"user_id": ["u1", None], "item_id": ["i1", "i2"], "timestamp": [1, 2]})
    frame.write_parquet(tmp_path / "e.parquet")
    with pytest.raises(DataError, match=r"e\.parquet: row 2: column 'user_id' \(user id\) is empty"):
        events.load(config(tmp_path / "e.parquet"))


def test_rows_of_dropped_event_types_are_not_checked(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp,type\nu1,i1,never,view\nu1,i2,2,buy\n")
    cfg = config(path, columns={"event": "type"}, keep_events=["buy"])
    assert interactions(cfg).rows() == [("u1", "i2", 2, "buy")]


def test_keep_events_matching_nothing_lists_the_types_found(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp,type\nu1,i1,1,view\n")
    expected = r"events\.csv: no events of types \['buy'\] .* column 'type'; found \['view'\]"
    with pytest.raises(DataError, match=expected):
        events.load(config(path, columns={"event": "type"}, keep_events=["buy"]))


def test_position_that_is_not_an_integer_is_named(tmp_path):
    path = write(tmp_path / "seq.csv", "user_id,item_id,pos\nu1,i1,1\nu1,i2,1.5\n")
    expected = r"seq\.csv: line 3: column 'pos' \(position\) is not an integer \(found '1.5'\)"
    with pytest.raises(DataError, match=expected):
        events.load(config(path, columns={"time": None, "position": "pos"}))


def test_rating_that_is_not_a_number_is_named(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp,stars\nu1,i1,1,five\n")
    with pytest.raises(DataError, match=r"events\.csv: line 2: column 'stars' \(rating\) is not a number"):
        events.load(config(path, columns={"rating": "stars"}))


def test_item_table_errors_name_the_item_file(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    write(tmp_path / "items.csv", "id,name\ni1,Dune\n,Nameless\n")
    items = str(tmp_path / "items.csv")
    expected = (r"items\.csv: no column 'title_text' \(data\.events\.item_columns\.title\); "
                r"found columns \['id', 'name'\]")
    with pytest.raises(DataError, match=expected):
        events.load(config(path, items=items, item_columns={"item_id": "id", "title": "title_text"}))
    with pytest.raises(DataError, match=r"items\.csv: line 3: column 'id' \(item id\) is empty"):
        events.load(config(path, items=items, item_columns={"item_id": "id", "title": "name"}))


def test_user_table_without_the_id_column_is_named(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    write(tmp_path / "users.csv", "uid,gender\nu1,F\n")
    expected = r"users\.csv: no column 'user_id' \(data\.events\.user_id_column\); found columns \['uid', 'gender'\]"
    with pytest.raises(DataError, match=expected):
        events.load(config(path, users=str(tmp_path / "users.csv")))


def test_corrupt_gzip_is_named(tmp_path):
    path = tmp_path / "events.csv.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    with pytest.raises(DataError, match=r"events\.csv\.gz"):
        events.load(config(path))
