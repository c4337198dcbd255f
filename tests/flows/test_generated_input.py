"""Property-generated malformed event files, run through the real adapters as `itx` checks them before a run
starts (`itx validate --check-data`, the same checks as `itx run`): the only allowed outcomes are success,
or exit 2 with one `itx: error:` line that names the file. Never a raw traceback, never exit 1.

The generator mixes valid rows with the kinds of damage found in real exports: missing, extra and repeated
columns, rows with too few or too many fields, empty and whitespace ids, quotes and separators inside
fields, non-UTF-8 bytes, negative, huge, fractional and text times, and for Parquet, columns of the wrong
type (floats with NaN, booleans, nulls). The slow tier runs a few of them through a whole `itx run`.
"""
from __future__ import annotations

import contextlib
import gzip
import io
from pathlib import Path

import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conf.loading import preset_path
from flows.cli import main

COLUMNS = ["user_id", "item_id", "timestamp"]
FIELDS = st.one_of(
    st.sampled_from(["u1", "u2", "i1", "i2", "1700000000", "1700000060", "0", "", " ", "NaN", "-5", "1.5e3",
                     "2024-01-02T03:04:05", "yesterday", "99999999999999999999", '"quoted, field"', '"',
                     "a\tb", "a;b", "caf\u00e9", "\u0000"]),
    st.text(max_size=6),
)
HEADERS = st.one_of(
    st.just(COLUMNS), st.just(COLUMNS), st.just([*COLUMNS, "extra"]),  # mostly right: the damage is in the rows
    st.permutations(COLUMNS).map(list),
    st.lists(st.sampled_from([*COLUMNS, "extra", "", "user_id"]), min_size=1, max_size=5),
)
VALID_ROWS = [[f"u{n % 4}", f"i{n % 7}", str(1_700_000_000 + 60 * n)] for n in range(24)]


@st.composite
def damaged_rows(draw, width: int) -> list[list[str]]:
    """Valid rows (padded to the header's width), a few of them damaged: a field replaced, added or dropped."""
    rows = [(row + ["x"] * width)[:width] for row in VALID_ROWS[:draw(st.integers(0, len(VALID_ROWS)))]]
    for _ in range(draw(st.integers(0, 3)) if rows else 0):
        row = rows[draw(st.integers(0, len(rows) - 1))]
        action = draw(st.sampled_from(["replace", "replace", "replace", "add", "drop"]))
        if action == "replace" and row:
            row[draw(st.integers(0, len(row) - 1))] = draw(FIELDS)
        elif action in ("add", "replace"):
            row.append(draw(FIELDS))
        elif row:
            row.pop()
    return rows


@st.composite
def text_files(draw) -> tuple[str, bytes]:
    """(file name, its bytes): a CSV or TSV (maybe gzipped) with a drawn header and rows."""
    suffix = draw(st.sampled_from([".csv", ".tsv", ".csv.gz"]))
    separator = "\t" if suffix == ".tsv" else ","
    header = draw(HEADERS)
    rows = draw(damaged_rows(len(header)))
    text = "\n".join(separator.join(row) for row in [header, *rows]) + draw(st.sampled_from(["\n", "", "\r\n"]))
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 5)) == 0 and data:  # a stray byte that is not UTF-8
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + b"\xff" + data[at:]
    return f"events{suffix}", gzip.compress(data) if suffix.endswith(".gz") else data


PARQUET_VALUES = {
    "text": st.lists(st.sampled_from(["u1", "i1", "", None, "1700000000"]), min_size=1, max_size=6),
    "int": st.lists(st.one_of(st.none(), st.integers(-10, 2_000_000_000)), min_size=1, max_size=6),
    "float": st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), min_size=1, max_size=6),
    "bool": st.lists(st.one_of(st.none(), st.booleans()), min_size=1, max_size=6),
}


@st.composite
def parquet_files(draw) -> tuple[str, bytes]:
    """("events.parquet", its bytes): drawn columns of drawn types, or a file cut short."""
    names = draw(st.lists(st.sampled_from([*COLUMNS, "extra"]), min_size=1, max_size=4, unique=True))
    length = draw(st.integers(1, 6))
    columns = {}
    for name in names:
        kind = draw(st.sampled_from(sorted(PARQUET_VALUES)))
        values = draw(PARQUET_VALUES[kind])
        columns[name] = (values * length)[:length]
    buffer = io.BytesIO()
    pl.DataFrame(columns, strict=False).write_parquet(buffer)
    data = buffer.getvalue()
    if draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return "events.parquet", data


def check(folder: Path, name: str, data: bytes, command: str = "validate") -> tuple[int, list[str]]:
    """(exit code, the `itx:` error lines) of `itx <command>` on a tiny preset reading this events file."""
    path = folder / name
    path.write_bytes(data)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({"extends": str(preset_path("experiments/tiny.yaml")),
                                      "data": {"source": "events", "events": {"interactions": str(path)}},
                                      "scenario": {"partition": "none", "source": None, "target": None}}))
    stderr = io.StringIO()
    args = [command, str(config), "--output-dir", str(folder / "out"), "--set",
            f"tracking.tracking_uri=sqlite:///{folder / 'mlflow.db'}", "--set", "train.max_epochs=1"]
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main([*args, "--check-data"] if command == "validate" else args)
    return code, [line for line in stderr.getvalue().splitlines() if line.startswith("itx: error:")]


def assert_clear_outcome(code: int, errors: list[str], name: str) -> None:
    assert code in (0, 2), f"exit {code}: {errors}"
    if code == 2:
        assert len(errors) == 1, errors
        assert name in errors[0], errors[0]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(drawn=st.one_of(text_files(), parquet_files()))
def test_a_generated_events_file_is_accepted_or_refused_in_one_line_naming_it(drawn, tmp_path_factory):
    name, data = drawn
    folder = tmp_path_factory.mktemp("generated")
    code, errors = check(folder, name, data)
    assert_clear_outcome(code, errors, name)
    assert not (folder / "out").exists()


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(drawn=st.one_of(text_files(), parquet_files()))
def test_a_generated_events_file_runs_or_fails_in_one_line_leaving_no_run_folder(drawn, tmp_path_factory):
    name, data = drawn
    folder = tmp_path_factory.mktemp("generated-run")
    code, errors = check(folder, name, data, command="run")
    assert_clear_outcome(code, errors, name)
    runs = [path for path in (folder / "out").glob("*") if path.name != "cache"] if (folder / "out").exists() else []
    if code == 2:
        assert runs == []
