"""Generic event logs: CSV/TSV (optionally gzipped) or Parquet, mapped to the raw tables by column names.

Text files are read with every column as String, so ids keep their spelling ("007" stays "007"),
and times, positions and ratings are parsed here, after one checking pass that names the first
bad line (the header is line 1; a quoted value spanning lines shifts the count) or Parquet row.
Times become Int64 epoch seconds: integer or float seconds, ISO-8601 text, or text in
`time_format`; text without a UTC offset is taken as UTC. With only a position column, the
position is the timestamp, so that the order within a user's sequence comes from it.
"""
from __future__ import annotations

import csv
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from conf.schema import EventLogConfig
from tasks.data.adapters import RawFrames, empty_users, require_files
from tasks.data.adapters.files import LINE, first_ragged_line, not_utf8_message, open_text
from tasks.schemas import DataError

TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t"}
FORMATS = ".csv, .tsv, .csv.gz, .tsv.gz or .parquet"
FUTURE_MARGIN_S = 86_400  # clocks and time zones disagree a little; a day later is a broken time
# Tried in turn on text times (after a trailing Z becomes +00:00); `%.f` also matches no fraction.
ISO_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%d %H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)


@dataclass(frozen=True)
class Table:
    """One input table: the path as configured (for messages), its lazy rows with a LINE column, its columns."""

    path: Path
    rows: pl.LazyFrame
    schema: pl.Schema  # without LINE
    unit: str  # what LINE counts: "line" in text files (header = 1), "row" in Parquet (first = 1)
    plain: Path | None = None  # text files: the uncompressed copy read, for locating unreadable lines
    separator: str | None = None

    def ids(self, column: str, setting: str) -> pl.Expr:
        """An id column as String; DataError when it holds floats (NaN ids, and 1.0 vs "1" mismatches)."""
        dtype = self.schema[column]
        if dtype.is_float():
            raise DataError(f"{self.path}: column '{column}' ({setting}) has type {dtype}; expected text or "
                            "integer ids (float ids come from missing values upcast by pandas: drop or fill them)")
        return self.text(column)

    def require(self, columns: dict[str, str]) -> None:
        """Raise DataError when a mapped column is absent; `columns` maps setting -> column name."""
        for setting, column in columns.items():
            if column not in self.schema:
                raise DataError(
                    f"{self.path}: no column '{column}' ({setting}); found columns {list(self.schema.names())}"
                )

    def text(self, column: str) -> pl.Expr:
        """A column as String, whatever its stored type."""
        return pl.col(column) if self.schema[column] == pl.String else pl.col(column).cast(pl.String)


@dataclass(frozen=True)
class Problem:
    """A per-row check: what is wrong, where it holds, and which column's value to quote."""

    message: str
    bad: pl.Expr
    shown: str | None = None


def source_files(cfg: EventLogConfig) -> list[Path]:
    """The configured files: events, then the items and users tables when set."""
    return [Path(name).expanduser() for name in (cfg.interactions, cfg.items, cfg.users) if name is not None]


def load(cfg: EventLogConfig) -> RawFrames:
    """Interactions, items and users of an event log, checked and mapped to the raw-table contract."""
    columns = cfg.columns
    events = scan_table(Path(cfg.interactions).expanduser(), cfg, "data.events.interactions")
    names = ("user", "item", "time", "position", "rating", "event", "domain")
    mapped = {name: getattr(columns, name) for name in names}
    events.require({f"data.events.columns.{name}": column for name, column in mapped.items() if column is not None})

    rows = events.rows
    if cfg.keep_events:
        rows = rows.filter(events.text(columns.event).is_in(cfg.keep_events))
    user = events.ids(columns.user, "data.events.columns.user")
    item = events.ids(columns.item, "data.events.columns.item")
    problems = [
        Problem(f"column '{columns.user}' (user id) is empty", is_blank(user)),
        Problem(f"column '{columns.item}' (item id) is empty", is_blank(item)),
    ]
    if columns.time is not None:
        timestamp = parse_time(events, columns.time, cfg.time_format)
        expected = f"text in time_format '{cfg.time_format}'" if cfg.time_format else "seconds or ISO-8601 text"
        limit = int(time.time()) + FUTURE_MARGIN_S
        problems += [
            Problem(f"column '{columns.time}' (time) is empty", pl.col(columns.time).is_null()),
            Problem(
                f"column '{columns.time}' (time) cannot be parsed; expected {expected}",
                pl.col(columns.time).is_not_null() & timestamp.is_null(),
                shown=columns.time,
            ),
            Problem(
                f"column '{columns.time}' (time) is in the future, after {iso_utc(limit)} "
                "(times must be epoch seconds: milliseconds? divide by 1000)",
                timestamp > limit,
                shown=columns.time,
            ),
        ]
    else:  # the config guarantees a position column when there is no time
        timestamp = parse_integer(events, columns.position)
        problems += [
            Problem(f"column '{columns.position}' (position) is empty", pl.col(columns.position).is_null()),
            Problem(
                f"column '{columns.position}' (position) is not an integer",
                pl.col(columns.position).is_not_null() & timestamp.is_null(),
                shown=columns.position,
            ),
        ]
    selected = [user.alias("user_id"), item.alias("item_id"), timestamp.alias("timestamp")]
    if columns.rating is not None:
        rating = pl.col(columns.rating).cast(pl.Float64, strict=False)
        problems.append(
            Problem(
                f"column '{columns.rating}' (rating) is not a number",
                pl.col(columns.rating).is_not_null() & rating.is_null(),
                shown=columns.rating,
            )
        )
        selected.append(rating.alias("rating"))
    if columns.event is not None:
        selected.append(events.text(columns.event).alias("event"))
    kept = check(events, rows, problems)
    if kept == 0:
        raise DataError(no_rows_message(events, cfg))

    interactions = rows.select(selected)
    event_domain = events.text(columns.domain) if columns.domain is not None else pl.lit(None, dtype=pl.String)
    items = item_ids(rows.select(item.alias("item_id"), event_domain.alias("event_domain")), columns.domain is not None)
    items = attach_item_table(items, cfg)
    users = attach_user_table(empty_users(interactions), cfg)
    return RawFrames(interactions=interactions, items=items, users=users, origin=str(events.path))


def scan_table(path: Path, cfg: EventLogConfig, setting: str) -> Table:
    """A checked lazy view of a CSV/TSV(.gz) or Parquet file, blank lines dropped, with LINE numbers."""
    require_files(path, hint=f"Set {setting} to an existing {FORMATS} file.")
    name = path.name.lower()
    if name.endswith(".parquet"):
        if path.stat().st_size == 0:
            raise DataError(f"{path}: file is empty, expected a Parquet table")
        frame = pl.scan_parquet(path)
        try:
            schema = frame.collect_schema()
        except pl.exceptions.PolarsError as error:
            raise DataError(f"{path}: not a readable Parquet file ({error})") from error
        return Table(path, frame.with_row_index(LINE, offset=1), schema, "row")
    suffix = Path(name.removesuffix(".gz")).suffix
    if suffix not in TEXT_SEPARATORS:
        raise DataError(f"{path}: unknown file type '{suffix or name}'; expected {FORMATS} ({setting})")
    text = open_text(path)
    # An explicit `separator` wins; otherwise the extension says (.tsv: tab).
    separator = cfg.separator if "separator" in cfg.model_fields_set else TEXT_SEPARATORS[suffix]
    header = read_header(path, text, separator)
    frame = pl.scan_csv(text, separator=separator, infer_schema=False, new_columns=header)
    frame = frame.with_row_index(LINE, offset=2).filter(pl.any_horizontal([pl.col(c).is_not_null() for c in header]))
    return Table(path, frame, pl.Schema({column: pl.String for column in header}), "line", text, separator)


def read_header(path: Path, text: Path, separator: str) -> list[str]:
    """Column names from the first line; DataError when the file is empty, has no rows or repeats a name.

    Polars renames repeated names silently (`a`, `a_duplicated_0`), so they are caught here.
    """
    try:
        with text.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=separator)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: file is empty, expected a header line and rows")
            if not any(row for row in reader):
                raise DataError(f"{path}: has a header line but no rows")
    except UnicodeDecodeError as error:
        raise DataError(not_utf8_message(path, text) or f"{path}: not valid UTF-8 text ({error})") from error
    repeated = [name for name, count in Counter(header).items() if count > 1]
    if repeated:
        raise DataError(f"{path}: line 1: column name(s) {repeated} appear more than once in the header {header}")
    return header


def parse_time(table: Table, column: str, time_format: str | None) -> pl.Expr:
    """Int64 epoch seconds from a column of numbers, datetimes, dates or text (null where unparsable)."""
    dtype = table.schema[column]
    value = pl.col(column)
    if dtype.is_integer() or dtype.is_float():
        return floor_to_int(value)
    if isinstance(dtype, pl.Datetime):
        return value.dt.epoch("s")  # a naive datetime counts as UTC
    if dtype == pl.Date:
        return value.cast(pl.Datetime("us")).dt.epoch("s")
    if dtype != pl.String:
        raise DataError(f"{table.path}: column '{column}' has type {dtype}; expected seconds, datetimes or text times")
    stripped = value.str.strip_chars()
    if time_format is not None:
        return to_seconds(stripped, time_format)
    numeric = pl.coalesce(stripped.cast(pl.Int64, strict=False), floor_to_int(stripped.cast(pl.Float64, strict=False)))
    iso = stripped.str.replace(r"[Zz]$", "+00:00")
    return pl.coalesce(numeric, *(to_seconds(iso, pattern) for pattern in ISO_FORMATS))


def to_seconds(text: pl.Expr, pattern: str) -> pl.Expr:
    """Epoch seconds of text in strptime `pattern` (UTC unless the text has an offset); null where it doesn't match."""
    return text.str.to_datetime(pattern, strict=False, time_unit="us", time_zone="UTC").dt.epoch("s")


def floor_to_int(number: pl.Expr) -> pl.Expr:
    """Int64 of a number, rounded down; null when not finite."""
    number = number.cast(pl.Float64)
    return pl.when(number.is_finite()).then(number.floor()).cast(pl.Int64, strict=False)


def parse_integer(table: Table, column: str) -> pl.Expr:
    """Int64 of a column holding whole numbers (as numbers or text); null elsewhere."""
    dtype = table.schema[column]
    if dtype.is_integer():
        return pl.col(column).cast(pl.Int64)
    number = pl.col(column).cast(pl.Float64, strict=False)
    return pl.when(number.is_finite() & (number == number.floor())).then(number).cast(pl.Int64, strict=False)


def is_blank(text: pl.Expr) -> pl.Expr:
    """True where text is null or only whitespace."""
    return text.is_null() | (text.str.strip_chars() == "")


def iso_utc(seconds: int) -> str:
    """Epoch seconds as ISO-8601 UTC text, for messages."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds")


def check(table: Table, rows: pl.LazyFrame, problems: list[Problem]) -> int:
    """Number of rows; DataError naming the file, column and first line of the first problem that holds.

    One streaming pass computes every check, keeping only the first offending line of each.
    """
    firsts = [pl.len().alias("rows")]
    for i, problem in enumerate(problems):
        firsts.append(pl.col(LINE).filter(problem.bad).first().alias(f"line{i}"))
        if problem.shown is not None:
            firsts.append(table.text(problem.shown).filter(problem.bad).first().alias(f"value{i}"))
    try:
        first = rows.select(firsts).collect(engine="streaming")
    except pl.exceptions.PolarsError as error:
        raise DataError(unreadable_message(table, error)) from error
    for i, problem in enumerate(problems):
        line = first[f"line{i}"][0]
        if line is not None:
            found = f" (found {first[f'value{i}'][0]!r})" if problem.shown is not None else ""
            raise DataError(f"{table.path}: {table.unit} {line}: {problem.message}{found}")
    return first["rows"][0]


def unreadable_message(table: Table, error: Exception) -> str:
    """Why Polars could not read a table: the first line that is not UTF-8 or has the wrong field count, if any."""
    if table.plain is not None:
        message = not_utf8_message(table.path, table.plain)
        if message is not None:
            return message
        header = list(table.schema.names())
        ragged = first_ragged_line(table.plain, table.separator, len(header))
        if ragged is not None:
            line, found = ragged
            return (f"{table.path}: line {line}: {found} fields separated by {table.separator!r}, expected "
                    f"{len(header)} as in the header {header}")
    return f"{table.path}: cannot be read: {error}"


def no_rows_message(events: Table, cfg: EventLogConfig) -> str:
    """Why no event is left: an empty table, or no event of the kept types (listing the types found)."""
    if not cfg.keep_events:
        return f"{events.path}: no events (the table has no rows)"
    column = cfg.columns.event
    found = events.rows.select(events.text(column).unique().head(20)).collect()[column].to_list()
    return f"{events.path}: no events of types {cfg.keep_events} (keep_events) in column '{column}'; found {found}"


def item_ids(keyed: pl.LazyFrame, has_domain: bool) -> pl.LazyFrame:
    """Distinct item ids with the domain of their first event (null when events carry none)."""
    if has_domain:
        # An item logged under two domains keeps its first one: each item belongs to one domain.
        return keyed.unique(subset="item_id", keep="first", maintain_order=True)
    return keyed.unique(subset="item_id")


def attach_item_table(items: pl.LazyFrame, cfg: EventLogConfig) -> pl.LazyFrame:
    """Items with title, category and domain (events' domain, else the item table's, else 'default')."""
    if cfg.items is None:
        table_columns = pl.lit(None, dtype=pl.String)
        items = items.with_columns(
            table_columns.alias("title"), table_columns.alias("category"), table_columns.alias("table_domain")
        )
    else:
        table = scan_table(Path(cfg.items).expanduser(), cfg, "data.events.items")
        # A column named title, category or domain is used as such unless item_columns maps another one.
        same_named = {key: key for key in ("title", "category", "domain") if key in table.schema}
        mapping = {"item_id": "item_id", **same_named, **cfg.item_columns}
        table.require({f"data.events.item_columns.{key}": column for key, column in mapping.items()})
        item = table.ids(mapping["item_id"], "data.events.item_columns.item_id")
        check(table, table.rows, [Problem(f"column '{mapping['item_id']}' (item id) is empty", is_blank(item))])
        described = table.rows.select(
            item.alias("item_id"),
            *(
                (table.text(mapping[key]) if key in mapping else pl.lit(None, dtype=pl.String)).alias(name)
                for key, name in (("title", "title"), ("category", "category"), ("domain", "table_domain"))
            ),
        ).unique(subset="item_id", keep="first", maintain_order=True)
        # Items never interacted with are left out; logged items missing from the table get nulls.
        items = items.join(described, on="item_id", how="left")
    return items.select(
        "item_id",
        "title",
        "category",
        pl.coalesce(blank_to_null("event_domain"), blank_to_null("table_domain"), pl.lit("default")).alias("domain"),
    )


def blank_to_null(column: str) -> pl.Expr:
    """A text column with whitespace-only values as null."""
    return pl.when(is_blank(pl.col(column))).then(None).otherwise(pl.col(column))


def attach_user_table(users: pl.LazyFrame, cfg: EventLogConfig) -> pl.LazyFrame:
    """The event log's users with the user table's other columns as String attributes (null when absent)."""
    if cfg.users is None:
        return users
    table = scan_table(Path(cfg.users).expanduser(), cfg, "data.events.users")
    id_column = cfg.user_id_column
    table.require({"data.events.user_id_column": id_column})
    attributes = [name for name in table.schema.names() if name != id_column]
    if "user_id" in attributes:
        raise DataError(
            f"{table.path}: column 'user_id' is not the user id column ('{id_column}', data.events.user_id_column) "
            "and would clash with it; rename it or point user_id_column at it"
        )
    user = table.ids(id_column, "data.events.user_id_column")
    check(table, table.rows, [Problem(f"column '{id_column}' (user id) is empty", is_blank(user))])
    described = table.rows.select(user.alias("user_id"), *(table.text(name).alias(name) for name in attributes))
    return users.join(described.unique(subset="user_id", keep="first", maintain_order=True), on="user_id", how="left")
