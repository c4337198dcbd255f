"""MovieLens-1M in its original format (ratings.dat, users.dat, movies.dat) as raw tables.

The files are latin-1 text with `::` between fields and no header (see the dataset's README).
Polars separators are one byte, so each file is transcoded once to UTF-8 (cached, keeping
accented titles such as "Misérables"), read one line per row and split on "::". One checking
pass per file names the first line with a wrong field count or a bad number.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import polars as pl

from conf.schema import MovieLensConfig
from tasks.data.adapters import DownloadError, RawFrames, empty_users, require_files
from tasks.data.adapters.files import CHUNK_BYTES, LINE, open_utf8, scan_lines
from tasks.io import atomic_path
from tasks.schemas import DataError

log = logging.getLogger(__name__)

URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
# MD5 as GroupLens publishes it (ml-1m.zip.md5) and as dataset loaders pin it (e.g. PaddlePaddle's);
# SHA-256 as pinned by independent downloaders (e.g. TensorFlow's MovieLens example). Both must match.
ZIP_MD5 = "c4d9eecfca2ab87c1945afe126590906"
ZIP_SHA256 = "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
ENCODING = "latin-1"
DOMAIN = "movies"

# file -> its fields, in order
COLUMNS = {
    "ratings.dat": ("user_id", "item_id", "rating", "timestamp"),
    "users.dat": ("user_id", "gender", "age", "occupation", "zip_code"),
    "movies.dat": ("item_id", "title", "genres"),
}


def source_files(cfg: MovieLensConfig) -> list[Path]:
    """The three .dat files `load` reads (after downloading them when enabled), for cache fingerprints."""
    folder = Path(cfg.path).expanduser()
    return [folder / name for name in COLUMNS]


def _hint(folder: Path) -> str:
    return (
        f"Put ratings.dat, users.dat and movies.dat (the ml-1m folder of {URL}) into {folder}, "
        "or set data.movielens.download: true to fetch them"
    )


def download(folder: Path) -> None:
    """Fetch the official ml-1m.zip, verify its checksums and extract the three .dat files into `folder`.

    Each file is written to a temporary name and renamed, so a failed download leaves no partial file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", URL, folder)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".ml-1m-download-") as scratch:
        archive = Path(scratch) / "ml-1m.zip"
        md5, sha256 = hashlib.md5(), hashlib.sha256()
        try:
            with urllib.request.urlopen(URL, timeout=60) as response, open(archive, "wb") as out:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    md5.update(chunk)
                    sha256.update(chunk)
        except OSError as error:  # URLError and timeouts are OSErrors
            raise DownloadError(f"could not download {URL}: {error}. {_hint(folder)}") from error
        if (md5.hexdigest(), sha256.hexdigest()) != (ZIP_MD5, ZIP_SHA256):
            raise DownloadError(
                f"{URL}: checksum mismatch, got md5 {md5.hexdigest()} sha256 {sha256.hexdigest()}, "
                f"expected md5 {ZIP_MD5} sha256 {ZIP_SHA256} (corrupt download or changed upstream file)"
            )
        try:
            with zipfile.ZipFile(archive) as bundle:
                members = set(bundle.namelist())
                missing = [f"ml-1m/{name}" for name in COLUMNS if f"ml-1m/{name}" not in members]
                if missing:
                    raise DataError(f"{URL}: archive lacks {missing}; found {sorted(members)}")
                for name in COLUMNS:
                    with atomic_path(folder / name) as temporary:
                        with bundle.open(f"ml-1m/{name}") as source, open(temporary, "wb") as target:
                            shutil.copyfileobj(source, target, CHUNK_BYTES)
        except zipfile.BadZipFile as error:
            raise DownloadError(f"{URL}: not a valid zip file ({error})") from error


def read_fields(path: Path, numbers: dict[str, pl.DataType]) -> pl.LazyFrame:
    """The `::`-separated fields of a .dat file as String columns, numbers cast to their type.

    Checks the whole file first: the first line with the wrong number of fields, or a value in
    `numbers` that does not parse, raises DataError naming the file and line.
    """
    columns = COLUMNS[path.name]
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file, expected '::'-separated lines {'::'.join(columns)}")
    lines = scan_lines(open_utf8(path, ENCODING)).filter(pl.col("text").is_not_null())  # blank lines
    fields = pl.col("text").str.split_exact("::", len(columns) - 1).struct.rename_fields(list(columns))
    split = lines.select(LINE, "text", fields.struct.unnest())
    checks = {"__fields__": pl.col("text").str.count_matches("::", literal=True) != len(columns) - 1}
    for column, dtype in numbers.items():
        value = pl.col(column).str.strip_chars().cast(dtype, strict=False)
        checks[f"__{column}__"] = value.is_null() | (~value.is_finite() if dtype.is_float() else pl.lit(False))
    bad = split.filter(pl.any_horizontal(list(checks.values()))).head(1).with_columns(**checks)
    bad = bad.collect(engine="streaming")
    if not bad.is_empty():
        row = bad.row(0, named=True)
        where = f"{path}: line {row[LINE]}"
        if row["__fields__"]:
            found = row["text"].count("::") + 1
            raise DataError(f"{where}: {found} '::'-separated fields, expected {len(columns)} ({'::'.join(columns)})")
        column = next(column for column in numbers if row[f"__{column}__"])
        expected = "a number" if numbers[column].is_float() else "a whole number"
        raise DataError(f"{where}: {column} {row[column]!r} is not {expected}")
    typed = [pl.col(column).str.strip_chars().cast(numbers[column]) for column in numbers]
    return split.select(*columns).with_columns(typed)


def load(cfg: MovieLensConfig) -> RawFrames:
    """Ratings, movies and users of MovieLens-1M as lazy frames, downloading them first when enabled."""
    folder = Path(cfg.path).expanduser()
    paths = source_files(cfg)
    if cfg.download and not all(path.is_file() for path in paths):
        download(folder)
    require_files(*paths, hint=_hint(folder))
    ratings, users, movies = paths
    interactions = read_fields(ratings, {"rating": pl.Float64, "timestamp": pl.Int64}).select(
        "user_id", "item_id", "timestamp", "rating"
    )
    listed_items = read_fields(movies, {}).select(
        "item_id",
        "title",
        pl.col("genres").str.replace_all("|", " ", literal=True).alias("category"),
        pl.lit(DOMAIN).alias("domain"),
    ).unique("item_id", keep="first", maintain_order=True)
    unlisted_items = (  # rated but not in movies.dat: no title to give them
        interactions.select("item_id")
        .unique(maintain_order=True)
        .join(listed_items.select("item_id"), on="item_id", how="anti")
        .with_columns(
            pl.lit(None, dtype=pl.String).alias("title"),
            pl.lit(None, dtype=pl.String).alias("category"),
            pl.lit(DOMAIN).alias("domain"),
        )
    )
    listed_users = read_fields(users, {}).unique("user_id", keep="first", maintain_order=True)
    unlisted_users = empty_users(interactions).join(listed_users.select("user_id"), on="user_id", how="anti")
    return RawFrames(
        interactions=interactions,
        items=pl.concat([listed_items, unlisted_items]),
        users=pl.concat([listed_users, unlisted_users], how="diagonal"),
        origin=f"MovieLens-1M files in {folder}",
    )
