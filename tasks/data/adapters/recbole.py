"""RecBole atomic files (`<name>.inter`, `.user`, `.item`, each possibly gzipped) as raw tables.

Format: https://recbole.io/docs/user_guide/data/atomic_files.html. Tab-separated, no quoting, the
first line a header of `name:type` fields (token, token_seq, float, float_seq). Every column is
read as text and only the numbers the pipeline needs are cast, after one checking pass that names
the first line a bad value sits on. Differences from RecBole: `.inter` must have a timestamp (the
pipeline orders events by time), and token_seq / float_seq values are kept as their raw text.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from conf.schema import RecBoleConfig
from tasks.data.adapters import RawFrames, empty_users
from tasks.data.adapters.files import LINE, not_utf8_message, open_text, scan_lines
from tasks.schemas import DataError

log = logging.getLogger(__name__)

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
HINT = "point data.recbole.path at a RecBole dataset folder"


@dataclass(frozen=True)
class AtomicFile:
    """One atomic file: the path as found (for messages), its plain-text view and header fields."""

    path: Path
    text: Path
    fields: dict[str, str]  # column name -> RecBole type, in header order

    def scan(self) -> pl.LazyFrame:
        """All columns as String; blank lines dropped."""
        frame = pl.scan_csv(
            self.text,
            separator="\t",
            quote_char=None,
            has_header=True,
            new_columns=list(self.fields),
            infer_schema=False,
        )
        return frame.filter(pl.any_horizontal([pl.col(name).is_not_null() for name in self.fields]))

    def require(self, columns: list[str], why: str) -> None:
        """Raise DataError when a column is missing, listing the header's columns."""
        missing = [column for column in columns if column not in self.fields]
        if missing:
            found = [f"{name}:{kind}" for name, kind in self.fields.items()]
            raise DataError(f"{self.path}: no column {', '.join(map(repr, missing))} ({why}); found columns {found}")


def _dataset(cfg: RecBoleConfig) -> tuple[Path, str]:
    """The dataset folder and file stem, checked to exist."""
    folder = Path(cfg.path).expanduser()
    name = cfg.name or folder.resolve().name
    if not folder.is_dir():
        raise DataError(
            f"{folder}: RecBole dataset folder not found; expected {folder}/{name}.inter or .inter.gz; {HINT}"
        )
    return folder, name


def _find(folder: Path, name: str, suffix: str) -> Path | None:
    """`<name>.<suffix>`, else `<name>.<suffix>.gz`, else None (the plain file wins when both exist)."""
    candidates = (folder / f"{name}.{suffix}", folder / f"{name}.{suffix}.gz")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    for candidate in candidates:
        if candidate.is_dir():
            raise DataError(f"{candidate}: is a directory, expected a file; {HINT}")
    return None


def _files(cfg: RecBoleConfig) -> tuple[Path, Path | None, Path | None]:
    """Paths of the .inter (required), .user and .item files."""
    folder, name = _dataset(cfg)
    inter = _find(folder, name, "inter")
    if inter is None:
        raise DataError(f"{folder}: no interactions file; expected {folder}/{name}.inter or .inter.gz; {HINT}")
    return inter, _find(folder, name, "user"), _find(folder, name, "item")


def source_files(cfg: RecBoleConfig) -> list[Path]:
    """The atomic files `load` reads (.inter first), for cache fingerprints."""
    return [path for path in _files(cfg) if path is not None]


def read_header(path: Path) -> AtomicFile:
    """Parse and check the `name:type` header of an atomic file; raise DataError when it has no rows."""
    text = open_text(path)
    with open(text, encoding="utf-8", errors="replace", newline="") as handle:
        header = handle.readline().rstrip("\r\n").lstrip("\ufeff")
        has_rows = any(line.strip() for line in handle)  # stops at the first non-blank line
    expected = f"expected a header of tab-separated name:type fields, type one of {', '.join(FIELD_TYPES)}"
    if not header.strip():
        raise DataError(f"{path}: empty file or empty first line; {expected}")
    fields: dict[str, str] = {}
    duplicates: list[str] = []
    for field in header.split("\t"):
        name, colon, kind = field.rpartition(":")
        if not colon or not name:
            raise DataError(f"{path}: header field {field!r} has no ':type'; {expected}")
        if kind not in FIELD_TYPES:
            raise DataError(f"{path}: header field {field!r} has unknown type {kind!r}; {expected}")
        if name in fields:
            duplicates.append(name)
        fields[name] = kind
    if duplicates:
        raise DataError(f"{path}: duplicate column names in header: {duplicates}; each name must appear once")
    if not has_rows:
        raise DataError(f"{path}: header only, expected at least one data row after the header")
    return AtomicFile(path, text, fields)


def _number(raw: pl.Expr) -> pl.Expr:
    """Text to Float64; null where it is not a number."""
    return raw.str.strip_chars().cast(pl.Float64, strict=False)


def check_lines(file: AtomicFile, numbers: dict[str, bool]) -> None:
    """Raise DataError at the first line with the wrong field count or a bad number (one pass).

    numbers: column -> whether it is required (an empty optional value is allowed).
    Line numbers count the header as line 1.
    """
    lines = scan_lines(file.text)
    width = len(file.fields)
    columns = list(file.fields)
    split = pl.col("text").str.split_exact("\t", width - 1)
    checks = {"__fields__": pl.col("text").str.count_matches("\t", literal=True) != width - 1}
    for column, required in numbers.items():
        raw = split.struct.field(f"field_{columns.index(column)}")
        value = _number(raw)
        bad = value.is_null() | ~value.is_finite() | (value.abs() >= 2.0**63)
        checks[column] = bad if required else raw.str.strip_chars().ne("") & bad
    try:
        bad_lines = (
            lines.filter((pl.col(LINE) > 1) & pl.col("text").is_not_null())
            .with_columns(**checks)
            .filter(pl.any_horizontal(list(checks)))
            .head(1)
            .collect(engine="streaming")
        )
    except pl.exceptions.PolarsError as error:
        raise DataError(not_utf8_message(file.path, file.text) or f"{file.path}: cannot be read: {error}") from error
    if bad_lines.is_empty():
        return
    row = bad_lines.row(0, named=True)
    where = f"{file.path}: line {row[LINE]}"
    if row["__fields__"]:
        found = row["text"].count("\t") + 1
        raise DataError(f"{where}: {found} tab-separated fields, expected {width} as in the header {columns}")
    column = next(column for column in numbers if row[column])
    value = row["text"].split("\t")[columns.index(column)].strip()
    raise DataError(f"{where}: column '{column}' has {value!r}, expected a number")


def _shown(name: str, kind: str) -> pl.Expr:
    """A column as text; float columns holding whole numbers lose their '.0' (age '1', not '1.0')."""
    raw = pl.col(name)
    if kind != "float":
        return raw
    value = _number(raw)
    whole = value.is_finite() & (value == value.round()) & (value.abs() < 2.0**53)
    return pl.when(whole).then(value.cast(pl.Int64).cast(pl.String)).otherwise(raw).alias(name)


def _interactions(inter: AtomicFile) -> pl.LazyFrame:
    """user_id, item_id, timestamp (rounded seconds) and, when present, rating."""
    columns = [
        pl.col("user_id"),
        pl.col("item_id"),
        pl.col("timestamp").str.strip_chars().cast(pl.Float64).round().cast(pl.Int64),
    ]
    if "rating" in inter.fields:
        columns.append(pl.col("rating").str.strip_chars().replace("", None).cast(pl.Float64))
    return inter.scan().select(columns)


def _items(item: AtomicFile | None, interactions: pl.LazyFrame, cfg: RecBoleConfig) -> pl.LazyFrame:
    """Every `.item` row plus each interacted item it lacks (titled by its id)."""
    domain = pl.lit(cfg.domain).alias("domain")
    unlisted = interactions.select("item_id").unique(maintain_order=True).with_columns(
        pl.col("item_id").alias("title"), pl.lit(None, dtype=pl.String).alias("category"), domain
    )
    named = [*cfg.item_text_fields, *([cfg.category_field] if cfg.category_field else [])]
    if item is None:
        if named:
            raise DataError(
                f"{cfg.path}: no .item file, but data.recbole.item_text_fields / category_field name "
                f"its columns {named}; add the .item file or clear those settings"
            )
        return unlisted
    item.require(["item_id"], "the key of .item rows")
    item.require(named, "named by data.recbole.item_text_fields / category_field")
    text = [_shown(name, item.fields[name]) for name in cfg.item_text_fields]
    title = pl.concat_str(text, separator=" ", ignore_nulls=True) if text else pl.col("item_id")
    category = _shown(cfg.category_field, item.fields[cfg.category_field]) if cfg.category_field else pl.lit(None)
    listed = (
        item.scan()
        .filter(pl.col("item_id").is_not_null())
        .select(
            pl.col("item_id"),
            pl.coalesce(title.replace("", None), pl.col("item_id")).alias("title"),
            category.cast(pl.String).alias("category"),
            domain,
        )
        .unique("item_id", keep="first", maintain_order=True)
    )
    return pl.concat([listed, unlisted.join(listed.select("item_id"), on="item_id", how="anti")])


def _users(user: AtomicFile | None, interactions: pl.LazyFrame) -> pl.LazyFrame:
    """Every `.user` row with its attributes as text, plus each interacting user it lacks."""
    if user is None:
        return empty_users(interactions)
    user.require(["user_id"], "the key of .user rows")
    listed = (
        user.scan()
        .filter(pl.col("user_id").is_not_null())
        .select(pl.col("user_id"), *(_shown(name, kind) for name, kind in user.fields.items() if name != "user_id"))
        .unique("user_id", keep="first", maintain_order=True)
    )
    unlisted = empty_users(interactions).join(listed.select("user_id"), on="user_id", how="anti")
    return pl.concat([listed, unlisted], how="diagonal")


def load(cfg: RecBoleConfig) -> RawFrames:
    """The dataset's interactions, items and users as lazy frames, after checking every file."""
    folder, name = _dataset(cfg)
    inter_path, user_path, item_path = _files(cfg)
    inter = read_header(inter_path)
    inter.require(list(INTERACTION_COLUMNS), "this pipeline needs user_id, item_id and timestamp to order events")
    check_lines(inter, {"timestamp": True, **({"rating": False} if "rating" in inter.fields else {})})
    user = item = None
    if user_path is not None:
        user = read_header(user_path)
        check_lines(user, {})
    if item_path is not None:
        item = read_header(item_path)
        check_lines(item, {})
    log.info("RecBole dataset: reading %s", ", ".join(str(path) for path in (inter_path, user_path, item_path) if path))
    interactions = _interactions(inter)
    return RawFrames(
        interactions=interactions,
        items=_items(item, interactions, cfg),
        users=_users(user, interactions),
        origin=f"RecBole dataset {folder}/{name}",
    )
