"""Amazon Reviews (McAuley lab), editions 2018 and 2023: one category file per product domain.

Files, as published (https://nijianmo.github.io/amazon/ for 2018, https://amazon-reviews-2023.github.io/
for 2023), JSON lines in `cfg.path`, gzipped or not:
- 2018: reviews `<Category>.json.gz` (full, from categoryFiles/; the 5-core `<Category>_5.json.gz`
  from categoryFilesSmall/ is read when the full file is absent), fields reviewerID, asin, overall,
  unixReviewTime (seconds); metadata `meta_<Category>.json.gz` (metaFiles2/), fields asin, title,
  category (list), main_cat.
- 2023: reviews `<Category>.jsonl.gz` (raw/review_categories/), fields user_id, parent_asin, rating,
  timestamp (milliseconds); metadata `meta_<Category>.jsonl.gz` (raw/meta_categories/), fields
  parent_asin, title, categories (list), main_category. The item id is parent_asin, which groups an
  item's colour/size variants, as the 2023 benchmarks do.
Metadata is optional: without it items have no title or category.
"""
from __future__ import annotations

import json
import logging
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from conf.schema import AmazonConfig
from tasks.data.adapters import DownloadError, RawFrames, empty_users
from tasks.data.adapters.files import has_content, not_utf8_message, open_text
from tasks.io import atomic_path
from tasks.schemas import DataError

log = logging.getLogger(__name__)

# The lab moved its files between hosts over the years; the same tree is served by both.
MIRRORS = (
    "https://datarepo.eng.ucsd.edu/mcauley_group/data",
    "https://mcauleylab.ucsd.edu/public_datasets/data",
)
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class Edition:
    """File names, download folders and field names of one edition."""

    review_names: tuple[str, ...]  # candidates in order of preference, the first is downloaded; `{c}`: category
    meta_names: tuple[str, ...]
    review_folder: str  # relative to a mirror
    meta_folder: str
    user: str
    item: str
    rating: str
    time: str
    time_per_second: int  # time units per second
    meta_item: str
    meta_title: str
    meta_categories: str  # list of category names, broadest first
    meta_main_category: str


EDITIONS = {
    2018: Edition(
        review_names=("{c}.json.gz", "{c}.json", "{c}_5.json.gz", "{c}_5.json"),
        meta_names=("meta_{c}.json.gz", "meta_{c}.json"),
        review_folder="amazon_v2/categoryFiles",
        meta_folder="amazon_v2/metaFiles2",
        user="reviewerID",
        item="asin",
        rating="overall",
        time="unixReviewTime",
        time_per_second=1,
        meta_item="asin",
        meta_title="title",
        meta_categories="category",
        meta_main_category="main_cat",
    ),
    2023: Edition(
        review_names=("{c}.jsonl.gz", "{c}.jsonl"),
        meta_names=("meta_{c}.jsonl.gz", "meta_{c}.jsonl"),
        review_folder="amazon_2023/raw/review_categories",
        meta_folder="amazon_2023/raw/meta_categories",
        user="user_id",
        item="parent_asin",
        rating="rating",
        time="timestamp",
        time_per_second=1000,
        meta_item="parent_asin",
        meta_title="title",
        meta_categories="categories",
        meta_main_category="main_category",
    ),
}


def review_file(cfg: AmazonConfig, category: str) -> Path:
    """The reviews file of a category: the first candidate name present, else the one `download` fetches."""
    return first_present(Path(cfg.path).expanduser(), EDITIONS[cfg.edition].review_names, category)


def meta_file(cfg: AmazonConfig, category: str) -> Path:
    """The metadata file of a category (it may be absent)."""
    return first_present(Path(cfg.path).expanduser(), EDITIONS[cfg.edition].meta_names, category)


def first_present(folder: Path, names: tuple[str, ...], category: str) -> Path:
    """The first of the candidate file names that exists in `folder`, else the first candidate."""
    candidates = [folder / name.format(c=category) for name in names]
    return next((path for path in candidates if path.is_file()), candidates[0])


def source_files(cfg: AmazonConfig) -> list[Path]:
    """The files `load` reads: each category's reviews file and, where present, its metadata file."""
    files = []
    for category in cfg.categories:
        files.append(review_file(cfg, category))
        if meta_file(cfg, category).is_file():
            files.append(meta_file(cfg, category))
    return files


def load(cfg: AmazonConfig) -> RawFrames:
    """Interactions, items (one domain per category) and users of the configured categories.

    Each file is read once here to check it (a streaming pass keeping only counts), so that a bad
    line fails with its file and line now, not as a Polars error deep inside a later stage.
    """
    expected = [path for c in cfg.categories for path in (review_file(cfg, c), meta_file(cfg, c))]
    if cfg.download and not all(path.is_file() for path in expected):
        download(cfg)
    edition = EDITIONS[cfg.edition]
    domains = cfg.domains or cfg.categories
    reviews, items = [], []
    for category, domain in zip(cfg.categories, domains):
        path = review_file(cfg, category)
        if not path.is_file():
            names = " or ".join(name.format(c=category) for name in edition.review_names)
            raise DataError(
                f"{path}: reviews file of category '{category}' not found; expected {names} in "
                f"folder {path.parent} (data.amazon.path). Set `data.amazon.download: true` to fetch it."
            )
        frame = scan_reviews(path, edition)
        reviews.append(frame)
        items.append(category_items(frame, cfg, category, domain))
    interactions = pl.concat(reviews, how="vertical")
    # An item listed in two categories keeps the domain of the first configured one: every item
    # must belong to exactly one domain, and prefixing ids per domain would split its history.
    catalogue = pl.concat(items, how="vertical").unique(subset="item_id", keep="first", maintain_order=True)
    origin = f"amazon {cfg.edition} ({', '.join(cfg.categories)}) in {cfg.path}"
    return RawFrames(interactions=interactions, items=catalogue, users=empty_users(interactions), origin=origin)


def scan_reviews(path: Path, edition: Edition) -> pl.LazyFrame:
    """Checked lazy interactions of one reviews file: user_id, item_id, timestamp (s), rating."""
    text = open_text(path)
    if not has_content(text):
        raise DataError(f"{path}: empty file, expected one JSON review object per line with fields "
                        f"{edition.user}, {edition.item}, {edition.rating}, {edition.time}")
    raw = pl.scan_ndjson(
        text,
        # All as text: ids keep leading zeros, and a malformed value becomes a reportable line
        # instead of a parse error without one.
        schema={edition.user: pl.String, edition.item: pl.String, edition.rating: pl.String, edition.time: pl.String},
    )
    time = parse_integer(pl.col(edition.time))
    rating = pl.col(edition.rating).cast(pl.Float64, strict=False)
    check_lines(
        path,
        text,
        raw,
        [
            Problem(f"field '{edition.user}' (user id) is missing or empty", is_blank(edition.user)),
            Problem(f"field '{edition.item}' (item id) is missing or empty", is_blank(edition.item)),
            Problem(f"field '{edition.time}' (review time) is missing", pl.col(edition.time).is_null()),
            Problem(
                f"field '{edition.time}' is not an integer time",
                pl.col(edition.time).is_not_null() & time.is_null(),
                shown=edition.time,
            ),
            Problem(
                f"field '{edition.rating}' is not a number",
                pl.col(edition.rating).is_not_null() & rating.is_null(),
                shown=edition.rating,
            ),
        ],
    )
    return raw.select(
        pl.col(edition.user).alias("user_id"),
        pl.col(edition.item).alias("item_id"),
        (time // edition.time_per_second).alias("timestamp"),
        rating.alias("rating"),
    )


def category_items(reviews: pl.LazyFrame, cfg: AmazonConfig, category: str, domain: str) -> pl.LazyFrame:
    """Items reviewed in one category, with title and category path from its metadata when present."""
    reviewed = reviews.select("item_id").unique()
    path = meta_file(cfg, category)
    if not path.is_file():
        log.warning("%s: metadata file not found; items of category '%s' get no title or category", path, category)
        return reviewed.with_columns(
            pl.lit(None, dtype=pl.String).alias("title"),
            pl.lit(None, dtype=pl.String).alias("category"),
            pl.lit(domain).alias("domain"),
        )
    # Unreviewed catalogue entries are left out; the metadata of some categories lists an item twice.
    meta = scan_meta(path, EDITIONS[cfg.edition]).unique(subset="item_id", keep="first")
    return reviewed.join(meta, on="item_id", how="left").with_columns(pl.lit(domain).alias("domain"))


def scan_meta(path: Path, edition: Edition) -> pl.LazyFrame:
    """Checked lazy metadata of one file: item_id, title, category (list joined by ' > ', else the main category)."""
    text = open_text(path)
    raw = pl.scan_ndjson(
        text,
        schema={
            edition.meta_item: pl.String,
            edition.meta_title: pl.String,
            edition.meta_categories: pl.List(pl.String),
            edition.meta_main_category: pl.String,
        },
    )
    item_missing = Problem(f"field '{edition.meta_item}' (item id) is missing or empty", is_blank(edition.meta_item))
    check_lines(path, text, raw, [item_missing])
    path_names = pl.col(edition.meta_categories).list.join(" > ").str.replace_all("&amp;", "&", literal=True)
    # 2018 main_cat is sometimes an <img> tag whose alt text holds the name.
    main = pl.col(edition.meta_main_category)
    main = pl.when(main.str.starts_with("<")).then(main.str.extract(r'alt="([^"]*)"')).otherwise(main)
    return raw.select(
        pl.col(edition.meta_item).alias("item_id"),
        pl.col(edition.meta_title).alias("title"),
        pl.when(pl.col(edition.meta_categories).list.len() > 0).then(path_names).otherwise(main).alias("category"),
    )


def parse_integer(text: pl.Expr) -> pl.Expr:
    """Integer from text holding an integer or a number such as 1.5e9 (floored); null when not a number."""
    number = text.cast(pl.Float64, strict=False)
    as_float = pl.when(number.is_finite()).then(number.floor()).cast(pl.Int64, strict=False)
    return pl.coalesce(text.cast(pl.Int64, strict=False), as_float)


def is_blank(column: str) -> pl.Expr:
    """True where a text column is null or only whitespace."""
    return pl.col(column).is_null() | (pl.col(column).str.strip_chars() == "")


@dataclass(frozen=True)
class Problem:
    """A per-line check: what is wrong, where it holds, and which field's value to quote."""

    message: str
    bad: pl.Expr
    shown: str | None = None


def check_lines(path: Path, text: Path, raw: pl.LazyFrame, problems: list[Problem]) -> None:
    """Raise DataError naming the file and first line where a problem holds, or where a line is not JSON."""
    lines = raw.with_row_index("line", offset=1)  # blank lines are skipped, and would shift this count
    firsts = []
    for i, problem in enumerate(problems):
        firsts.append(pl.col("line").filter(problem.bad).first().alias(f"line{i}"))
        if problem.shown is not None:
            firsts.append(pl.col(problem.shown).filter(problem.bad).first().alias(f"value{i}"))
    try:
        first = lines.select(firsts).collect(engine="streaming")
    except pl.exceptions.PolarsError as error:
        message = not_utf8_message(path, text)
        if message is not None:
            raise DataError(message) from error
        line = first_non_json_line(text)
        if line is not None:
            raise DataError(f"{path}: line {line} is not valid JSON (expected one JSON object per line)") from error
        raise DataError(f"{path}: cannot be read as JSON lines: {error}") from error
    for i, problem in enumerate(problems):
        line = first[f"line{i}"][0]
        if line is not None:
            found = f" (found {first[f'value{i}'][0]!r})" if problem.shown is not None else ""
            raise DataError(f"{path}: line {line}: {problem.message}{found}")


def first_non_json_line(path: Path) -> int | None:
    """Number of the first non-blank line that is not a JSON object (a linear scan, run only after a failure)."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    return number
            except ValueError:
                return number
    return None


def download(cfg: AmazonConfig) -> None:
    """Fetch the configured categories' missing reviews and metadata files into `cfg.path`."""
    edition = EDITIONS[cfg.edition]
    folder = Path(cfg.path).expanduser()
    for category in cfg.categories:
        wanted = [
            (review_file(cfg, category), edition.review_folder, edition.review_names[0].format(c=category), False),
            (meta_file(cfg, category), edition.meta_folder, edition.meta_names[0].format(c=category), True),
        ]
        for present, remote_folder, name, optional in wanted:
            if present.is_file():
                continue
            try:
                fetch([f"{mirror}/{remote_folder}/{name}" for mirror in MIRRORS], folder / name)
            except DataError as error:
                if not optional:
                    raise
                log.warning("%s (metadata is optional: items go without title and category)", error)


def fetch(urls: list[str], target: Path) -> None:
    """Download the first URL that answers to `target`, atomically; DownloadError when none does."""
    failures = []
    for url in urls:
        log.info("downloading %s -> %s", url, target)
        try:
            with atomic_path(target) as temporary:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, temporary.open("wb") as out:
                    shutil.copyfileobj(response, out, length=1 << 20)
            return
        except OSError as error:  # URLError and HTTPError are OSErrors
            failures.append(f"{url}: {error}")
    raise DownloadError(f"{target}: download failed from every mirror: {'; '.join(failures)}")
