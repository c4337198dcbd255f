"""Plain-text views of input files: gzip decompressed and legacy encodings transcoded to UTF-8.

Polars scans need an uncompressed UTF-8 file on disk, so `.gz` inputs and latin-1 files are
streamed once into a per-file cache folder under the system temp dir and reused while the source
file is unchanged (same resolved path, size and modification time). Writes are atomic, so
concurrent runs never see a half-written copy.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import shutil
import tempfile
import zlib
from pathlib import Path

import polars as pl

from tasks.io import atomic_path
from tasks.schemas import DataError

CHUNK_BYTES = 1 << 20


def _cache_path(path: Path, folder: str, name: str, *key: str) -> Path:
    """Where the converted copy of `path` lives: keyed by the source's identity and state."""
    resolved = path.resolve()
    stat = resolved.stat()
    identity = "\0".join([str(resolved), str(stat.st_size), str(stat.st_mtime_ns), *key])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / folder / digest / name


def _gunzip(source: Path, target: Path) -> None:
    """Stream-decompress `source` into `target`, naming the file when the gzip data is bad."""
    with gzip.open(source, "rb") as compressed, open(target, "wb") as plain:
        while True:
            try:
                chunk = compressed.read(CHUNK_BYTES)
            except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
                raise DataError(f"not a valid gzip file: {source} ({error})") from error
            if not chunk:
                return
            plain.write(chunk)


def open_text(path: Path) -> Path:
    """`path` itself, or for a `.gz` file the path of its decompressed copy (cached, atomic)."""
    if path.suffix != ".gz":
        return path
    target = _cache_path(path, "itx-unzipped", path.stem)
    if not target.is_file():
        with atomic_path(target) as temporary:
            _gunzip(path, temporary)
    return target


def open_utf8(path: Path, encoding: str) -> Path:
    """The path of a UTF-8 copy of text file `path` written in `encoding` (cached, atomic).

    `.gz` files are decompressed on the way. Line endings are kept as they are, so line numbers
    in the copy are those of the source.
    """
    target = _cache_path(path, "itx-utf8", path.stem if path.suffix == ".gz" else path.name, encoding)
    if not target.is_file():
        plain = open_text(path)
        with atomic_path(target) as temporary:
            with (
                open(plain, encoding=encoding, newline="") as source,
                open(temporary, "w", encoding="utf-8", newline="") as copy,
            ):
                try:
                    shutil.copyfileobj(source, copy, CHUNK_BYTES)
                except UnicodeDecodeError as error:
                    raise DataError(f"{path}: not valid {encoding} text ({error})") from error
    return target


LINE = "__line__"


def scan_lines(path: Path) -> pl.LazyFrame:
    """Every line of a text file as one String column `text`, numbered from 1 in column LINE.

    Reading whole lines lets an adapter split fields itself and name the exact line of a problem.
    """
    return pl.scan_csv(
        path,
        separator="\x1f",  # ASCII unit separator, absent from text data: each line is one field
        quote_char=None,
        has_header=False,
        new_columns=["text"],
        infer_schema=False,
        truncate_ragged_lines=True,
    ).with_row_index(LINE, offset=1)


def first_undecodable_line(path: Path, encoding: str = "utf-8") -> tuple[int, bytes] | None:
    """(line number from 1, offending bytes) of the first line not valid in `encoding`, else None.

    A linear scan, run only after a read failed, to turn a decoder error into a line number.
    """
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as error:
                return number, line[error.start:error.end]
    return None


def not_utf8_message(path: Path, text: Path) -> str | None:
    """A message naming the line of `path` (read through its plain view `text`) that is not UTF-8, else None."""
    bad = first_undecodable_line(text)
    if bad is None:
        return None
    line, raw = bad
    return (f"{path}: line {line}: not valid UTF-8 text (bytes {raw.hex(' ')}); expected a UTF-8 file "
            "(re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`)")


def first_ragged_line(path: Path, separator: str, width: int, quoted: bool = True) -> tuple[int, int] | None:
    """(line number from 1, field count) of the first non-blank CSV/TSV row without `width` fields, else None.

    `quoted`: whether '"' quotes values (as Polars reads CSV by default). Line numbers count physical
    lines; a row with a quoted value spanning lines counts as its last line. A linear scan, run only
    after a read failed.
    """
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.reader(handle, delimiter=separator, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
        for row in reader:
            if row and len(row) != width:
                return reader.line_num, len(row)
    return None


def has_content(path: Path) -> bool:
    """True when the file holds a byte other than whitespace (reads only up to the first such byte)."""
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            if chunk.strip():
                return True
    return False
