"""Cross-domain sequence files, the format of the Food–Kitchen benchmark (LLMCDSR, π-Net, C2DSR).

A folder (or its `raw/` subfolder) holds one text file per user group — `train_A.txt`,
`train_B.txt`, `train_overlap.txt`, `valid.txt`, `test.txt` — each line `user_index<TAB>item,item,…`
in chronological order, plus `items.tsv` (`item_id, domain, asin, title`) beside them. There are no
timestamps: the position in the sequence is the order (the `timestamp` column carries it). Each
file numbers its users from 1 and these are different people, so a user's id is
`<file stem>:<index>`; the file stem becomes the user's `split_group` attribute, which the
`user_groups` split protocol uses to keep the benchmark's own train / cold valid / cold test users.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from conf.schema import SequenceFilesConfig
from tasks.data.adapters import RawFrames, require_files
from tasks.data.adapters.files import first_ragged_line, has_content, not_utf8_message
from tasks.schemas import DataError

SEQUENCE_FILES = ("train_A", "train_B", "train_overlap", "valid", "test")
HINT = ("point data.sequence_files.path at a folder with items.tsv and the sequence files "
        f"({', '.join(f + '.txt' for f in SEQUENCE_FILES)}), directly or in raw/; the Food–Kitchen copy is "
        "../shared/datasets/amazon-food-kitchen")


def sequence_folder(root: Path) -> Path:
    """The folder holding the sequence files: `root/raw` when present, else `root`."""
    return root / "raw" if (root / "raw" / "train_A.txt").is_file() or (root / "raw").is_dir() else root


def source_files(cfg: SequenceFilesConfig) -> list[Path]:
    """items.tsv and every sequence file that exists."""
    root = Path(cfg.path)
    folder = sequence_folder(root)
    return [root / "items.tsv", *(p for p in (folder / f"{s}.txt" for s in SEQUENCE_FILES) if p.is_file())]


def read_sequences(path: Path) -> pl.LazyFrame:
    """One row per (user, position, item) of a sequence file; errors name the file and line."""
    expected = "lines 'user_index<TAB>item,item,...'"
    if not has_content(path):
        raise DataError(f"{path}: empty file, expected {expected}")
    try:
        lines = pl.read_csv(path, separator="\t", has_header=False, new_columns=["index", "items"],
                            schema_overrides={"index": pl.String, "items": pl.String}, quote_char=None)
    except pl.exceptions.PolarsError as error:
        raise DataError(unreadable_message(path, 2, expected, error)) from error
    lines = lines.with_row_index("line", offset=1)
    malformed = lines.filter(pl.col("items").is_null() | pl.col("index").is_null())
    if not malformed.is_empty():
        raise DataError(f"{path}: line {malformed['line'][0]}: expected 'user_index<TAB>item,item,...'")
    events = (
        lines.with_columns(pl.col("items").str.strip_chars(", ").str.split(","))
        .explode("items")
        .with_columns(pl.col("items").str.strip_chars())
    )
    bad = events.filter(~pl.col("items").str.contains(r"^\d+$"))
    if not bad.is_empty():
        raise DataError(f"{path}: line {bad['line'][0]}: item id {bad['items'][0]!r} is not a non-negative integer")
    stem = path.stem
    return events.lazy().select(
        (pl.lit(f"{stem}:") + pl.col("index")).alias("user_id"),
        pl.col("items").alias("item_id"),
        pl.int_range(pl.len()).over("line").cast(pl.Int64).alias("timestamp"),  # position in the sequence
        pl.lit(stem).alias("split_group"),
    )


def unreadable_message(path: Path, width: int, expected: str, error: Exception) -> str:
    """Why Polars could not read a tab-separated file: its first non-UTF-8 line or line with the wrong field count."""
    message = not_utf8_message(path, path)
    if message is not None:
        return message
    ragged = first_ragged_line(path, "\t", width, quoted=False)
    if ragged is not None:
        return f"{path}: line {ragged[0]}: {ragged[1]} tab-separated fields, expected {width}: {expected}"
    return f"{path}: cannot be read: {error}"


def load(cfg: SequenceFilesConfig) -> RawFrames:
    """Interactions ordered by position, items with domain and title, users with their split_group."""
    root = Path(cfg.path)
    folder = sequence_folder(root)
    require_files(root / "items.tsv", *(folder / f"{s}.txt" for s in SEQUENCE_FILES), hint=HINT)
    items_path = root / "items.tsv"
    if not has_content(items_path):
        raise DataError(f"{items_path}: empty file, expected a tab-separated header item_id, domain, asin, title "
                        "and a row per item")
    try:
        items = pl.read_csv(items_path, separator="\t", quote_char=None, infer_schema=False)
    except pl.exceptions.PolarsError as error:
        raise DataError(not_utf8_message(items_path, items_path) or f"{items_path}: cannot be read: {error}") from error
    missing = {"item_id", "domain", "title"} - set(items.columns)
    if missing:
        raise DataError(f"{root / 'items.tsv'}: missing columns {sorted(missing)}; found {items.columns}")
    sequences = pl.concat([read_sequences(folder / f"{s}.txt") for s in SEQUENCE_FILES]).collect()
    unknown = sequences.join(items.select("item_id"), on="item_id", how="anti")
    if not unknown.is_empty():
        raise DataError(f"{root / 'items.tsv'}: item id {unknown['item_id'][0]!r} used in the sequence files "
                        f"({unknown['split_group'][0]}.txt) has no row")
    interactions = sequences.select("user_id", "item_id", "timestamp")
    users = sequences.select("user_id", "split_group").unique(subset="user_id", keep="first", maintain_order=True)
    item_table = items.select(
        "item_id",
        pl.col("title"),
        pl.col("domain").alias("category"),
        pl.col("domain"),
    )
    return RawFrames(interactions.lazy(), item_table.lazy(), users.lazy(), str(root))
