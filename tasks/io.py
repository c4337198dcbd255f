"""Schema-checked reads and atomic writes of the tables and files that cross stages."""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from tasks.schemas import DataError, check_schema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableRef:
    """A file handed between tasks: its path and a content fingerprint (stable cache keys)."""

    path: str
    fingerprint: str


def fingerprint_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Short SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def fingerprint_text(*parts: Any) -> str:
    """Short SHA-256 of JSON-serialised parts (configs, fingerprints): names cache folders."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CacheDir:
    """The folder of cached stage outputs, and its generation.

    Prefect keeps cache records in its own home, which outlives this folder. The generation is a
    random id created with the folder and part of every cached task's inputs, so once the folder
    is deleted (`make clean`), records that point into it can never match again.
    """

    path: Path
    generation: str


def open_cache_dir(path: Path) -> CacheDir:
    """The cache folder at `path`, created with a fresh generation id when missing."""
    marker = path / ".generation"
    if not marker.is_file():
        path.mkdir(parents=True, exist_ok=True)
        try:  # exclusive create: concurrent runs agree on one generation
            with open(marker, "x", encoding="utf-8") as handle:
                handle.write(uuid.uuid4().hex)
        except FileExistsError:
            pass
    return CacheDir(path, marker.read_text(encoding="utf-8").strip())


def inside(root: str | Path, *parts: str, setting: str) -> Path:
    """`root/parts...` as an absolute path, checked to stay strictly inside root.

    Names from config (run names, config and model names) become folder names; this is where a
    name such as `../x`, `/etc` or `.` is stopped. The check is on the names, not the disk: a
    symlink placed inside root on purpose (a cache on another disk) still counts as inside.
    Raises ValueError naming `setting` when the path would leave root or be root itself.
    """
    base = Path(root).resolve()
    path = Path(os.path.normpath(base.joinpath(*parts)))
    if path == base or base not in path.parents:
        shown = "/".join(str(part) for part in parts)
        raise ValueError(f"{setting}: {shown!r} must name a folder inside {base}, "
                         "without '..', path separators at the start or '.' alone")
    return path


@contextmanager
def file_lock(path: Path, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block; wait while another process holds it.

    An OS lock (flock): the kernel releases it when its holder exits, even on SIGKILL, so a crashed
    run never leaves a stale lock behind. The lock file itself stays (deleting it would race).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another run holding %s%s", path, f" ({what})" if what else "")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling path to write; renamed onto `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_parquet(frame: pl.DataFrame, path: Path) -> TableRef:
    """Write a Parquet file atomically and return its reference."""
    with atomic_path(path) as temporary:
        frame.write_parquet(temporary)
    return TableRef(str(path), fingerprint_file(path))


def write_csv(frame: pl.DataFrame, path: Path) -> TableRef:
    """Write a CSV file atomically and return its reference."""
    with atomic_path(path) as temporary:
        frame.write_csv(temporary)
    return TableRef(str(path), fingerprint_file(path))


def write_text(text: str, path: Path) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def write_json(payload: Any, path: Path) -> Path:
    """Write a JSON file atomically."""
    return write_text(json.dumps(payload, indent=2, default=str) + "\n", path)


def scan_table(ref: TableRef, required: dict[str, pl.DataType], table: str) -> pl.LazyFrame:
    """Lazy scan of a Parquet (or CSV) table whose required columns are checked against `required`."""
    path = Path(ref.path)
    if not path.is_file():
        raise DataError(
            f"{path}: {table} table is missing; if it came from the task cache, "
            "rerun with --refresh-cache to rebuild it"
        )
    if path.suffix == ".csv":
        frame = pl.scan_csv(path, schema_overrides=required)
    else:
        frame = pl.scan_parquet(path)
    check_schema(frame.collect_schema(), required, table, str(path))
    return frame


def read_table(ref: TableRef, required: dict[str, pl.DataType], table: str) -> pl.DataFrame:
    """Eager read of a schema-checked Parquet table."""
    return scan_table(ref, required, table).collect()
