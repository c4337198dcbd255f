"""Amazon Reviews adapter: both editions' file names and fields, one domain per category, checked input."""
from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import polars as pl
import pytest

from conf.schema import AmazonConfig
from tasks.data.adapters import amazon
from tasks.schemas import DataError


def write_lines(path: Path, records: list[dict | str]) -> Path:
    """A gzipped JSON-lines file; str records are written as they are (to plant bad lines)."""
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


def review_2023(user: str, item: str, millis: int, rating: float = 5.0) -> dict:
    return {"user_id": user, "parent_asin": item, "asin": f"{item}-variant", "rating": rating, "timestamp": millis,
            "text": "fine", "helpful_vote": 0, "verified_purchase": True}


def review_2018(user: str, item: str, seconds: int, rating: float = 5.0) -> dict:
    return {"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": seconds,
            "reviewTime": "01 2, 2024", "style": {"Format:": " Paperback"}, "vote": "1,234"}


@pytest.fixture
def edition_2023(tmp_path) -> AmazonConfig:
    write_lines(tmp_path / "Books.jsonl.gz", [
        review_2023("u1", "B1", 1_600_000_000_999, 4.0),
        review_2023("u2", "B2", 1_600_000_100_000, 3.0),
    ])
    write_lines(tmp_path / "meta_Books.jsonl.gz", [
        {"parent_asin": "B1", "title": "Dune", "main_category": "Books", "categories": ["Books", "Science Fiction"]},
        {"parent_asin": "B2", "title": "Emma", "main_category": "Books", "categories": []},
        {"parent_asin": "B9", "title": "Never reviewed", "main_category": "Books", "categories": []},
    ])
    write_lines(tmp_path / "Movies_and_TV.jsonl.gz", [
        review_2023("u1", "M1", 1_600_000_200_000),
        review_2023("u1", "B1", 1_600_000_300_000),  # also listed under Books: keeps that domain
    ])
    write_lines(tmp_path / "meta_Movies_and_TV.jsonl.gz", [
        {"parent_asin": "M1", "title": "Alien", "main_category": "Movies & TV",
         "categories": ["Movies & TV", "Horror"]},
        {"parent_asin": "B1", "title": "Dune (film)", "main_category": "Movies & TV", "categories": ["Movies & TV"]},
    ])
    return AmazonConfig(
        path=str(tmp_path), edition=2023, categories=["Books", "Movies_and_TV"], domains=["books", "movies"]
    )


def items_by_id(cfg: AmazonConfig) -> dict[str, dict]:
    return {row["item_id"]: row for row in amazon.load(cfg).items.collect().to_dicts()}


def test_2023_reviews_map_parent_asin_and_milliseconds_to_seconds(edition_2023):
    raw = amazon.load(edition_2023)
    assert isinstance(raw.interactions, pl.LazyFrame)
    interactions = raw.interactions.collect()
    assert interactions.schema == pl.Schema(
        {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64, "rating": pl.Float64}
    )
    assert interactions.rows() == [
        ("u1", "B1", 1_600_000_000, 4.0),  # 999 ms rounds down
        ("u2", "B2", 1_600_000_100, 3.0),
        ("u1", "M1", 1_600_000_200, 5.0),
        ("u1", "B1", 1_600_000_300, 5.0),
    ]
    assert sorted(raw.users.collect()["user_id"].to_list()) == ["u1", "u2"]


def test_2023_each_category_is_a_domain_with_titles_and_category_paths(edition_2023):
    items = items_by_id(edition_2023)
    assert set(items) == {"B1", "B2", "M1"}  # unreviewed metadata entries are left out
    assert items["B1"] == {"item_id": "B1", "title": "Dune", "category": "Books > Science Fiction", "domain": "books"}
    assert items["B2"]["category"] == "Books"  # empty category list: the main category
    assert items["M1"] == {"item_id": "M1", "title": "Alien", "category": "Movies & TV > Horror", "domain": "movies"}


def test_domains_default_to_category_names(edition_2023):
    cfg = edition_2023.model_copy(update={"domains": None})
    assert {row["domain"] for row in items_by_id(cfg).values()} == {"Books", "Movies_and_TV"}


def test_item_in_two_categories_keeps_the_first_configured_domain(edition_2023):
    reversed_cfg = edition_2023.model_copy(
        update={"categories": ["Movies_and_TV", "Books"], "domains": ["movies", "books"]}
    )
    assert items_by_id(edition_2023)["B1"]["domain"] == "books"
    assert items_by_id(reversed_cfg)["B1"] == {
        "item_id": "B1", "title": "Dune (film)", "category": "Movies & TV", "domain": "movies",
    }


def test_2018_fields_five_core_file_and_metadata_quirks(tmp_path):
    write_lines(tmp_path / "Grocery_and_Gourmet_Food_5.json.gz", [
        review_2018("A1", "0001", 1_400_000_000, 5.0),
        review_2018("A2", "0002", 1_400_000_500, 2.0),
    ])
    write_lines(tmp_path / "meta_Grocery_and_Gourmet_Food.json.gz", [
        {"asin": "0001", "title": "Tea", "category": ["Grocery &amp; Gourmet Food", "Beverages"],
         "main_cat": "Grocery"},
        {"asin": "0001", "title": "Tea (listed twice)", "category": [], "main_cat": "Grocery"},
        {"asin": "0002", "title": "Dress", "category": [],
         "main_cat": '<img src="https://example.invalid/fashion.png" class="nav-categ-image" alt="AMAZON FASHION"/>'},
    ])
    cfg = AmazonConfig(path=str(tmp_path), edition=2018, categories=["Grocery_and_Gourmet_Food"], domains=["food"])
    raw = amazon.load(cfg)
    assert raw.interactions.collect().rows() == [("A1", "0001", 1_400_000_000, 5.0), ("A2", "0002", 1_400_000_500, 2.0)]
    items = items_by_id(cfg)
    assert items["0001"] == {"item_id": "0001", "title": "Tea", "category": "Grocery & Gourmet Food > Beverages",
                             "domain": "food"}
    assert items["0002"]["category"] == "AMAZON FASHION"
    assert amazon.source_files(cfg) == [
        tmp_path / "Grocery_and_Gourmet_Food_5.json.gz", tmp_path / "meta_Grocery_and_Gourmet_Food.json.gz",
    ]


def test_2018_full_reviews_file_is_preferred_over_five_core(tmp_path):
    write_lines(tmp_path / "Books.json.gz", [review_2018("full", "1", 1)])
    write_lines(tmp_path / "Books_5.json.gz", [review_2018("core", "1", 1)])
    cfg = AmazonConfig(path=str(tmp_path), edition=2018, categories=["Books"])
    assert amazon.load(cfg).interactions.collect()["user_id"].to_list() == ["full"]


def test_missing_metadata_gives_items_without_title_and_warns(tmp_path, caplog):
    write_lines(tmp_path / "Books.jsonl.gz", [review_2023("u1", "B1", 1_000)])
    cfg = AmazonConfig(path=str(tmp_path), categories=["Books"])
    with caplog.at_level(logging.WARNING, logger="tasks.data.adapters.amazon"):
        items = amazon.load(cfg).items.collect()
    assert items.to_dicts() == [{"item_id": "B1", "title": None, "category": None, "domain": "Books"}]
    assert "meta_Books.jsonl.gz" in caplog.text
    assert amazon.source_files(cfg) == [tmp_path / "Books.jsonl.gz"]


def test_missing_reviews_file_says_which_file_where_and_how_to_fetch_it(tmp_path):
    cfg = AmazonConfig(path=str(tmp_path), categories=["Books"])
    with pytest.raises(DataError) as error:
        amazon.load(cfg)
    message = str(error.value)
    assert "Books.jsonl.gz" in message and str(tmp_path) in message
    assert "data.amazon.download: true" in message


def test_line_that_is_not_json_is_named_with_file_and_line(tmp_path):
    lines = [review_2023("u1", "B1", 1_000), "{not json", review_2023("u2", "B1", 2_000)]
    path = write_lines(tmp_path / "Books.jsonl.gz", lines)
    with pytest.raises(DataError, match=r"Books\.jsonl\.gz: line 2 is not valid JSON"):
        amazon.load(AmazonConfig(path=str(tmp_path), categories=["Books"]))
    assert path.is_file()


@pytest.mark.parametrize("field", ["user_id", "parent_asin", "timestamp"])
def test_absent_required_field_is_named_with_file_and_line(tmp_path, field):
    broken = review_2023("u2", "B2", 2_000)
    del broken[field]
    write_lines(tmp_path / "Books.jsonl.gz", [review_2023("u1", "B1", 1_000), broken])
    with pytest.raises(DataError, match=rf"Books\.jsonl\.gz: line 2: field '{field}'"):
        amazon.load(AmazonConfig(path=str(tmp_path), categories=["Books"]))


def test_absent_item_id_in_metadata_is_named(tmp_path):
    write_lines(tmp_path / "Books.jsonl.gz", [review_2023("u1", "B1", 1_000)])
    write_lines(tmp_path / "meta_Books.jsonl.gz", [{"title": "No id", "categories": []}])
    with pytest.raises(DataError, match=r"meta_Books\.jsonl\.gz: line 1: field 'parent_asin'"):
        amazon.load(AmazonConfig(path=str(tmp_path), categories=["Books"]))


def test_unparsable_time_is_named_with_value(tmp_path):
    bad = review_2018("A2", "2", 0)
    bad["unixReviewTime"] = "Sept 1st"
    write_lines(tmp_path / "Books.json.gz", [review_2018("A1", "1", 1), bad])
    expected = r"Books\.json\.gz: line 2: field 'unixReviewTime' is not an integer time \(found 'Sept 1st'\)"
    with pytest.raises(DataError, match=expected):
        amazon.load(AmazonConfig(path=str(tmp_path), edition=2018, categories=["Books"]))


def test_download_fetches_only_missing_files_from_official_urls(tmp_path, monkeypatch):
    write_lines(tmp_path / "meta_Books.jsonl.gz", [{"parent_asin": "B1", "title": "Dune", "categories": []}])
    fetched: list[tuple[list[str], Path]] = []

    def fake_fetch(urls: list[str], target: Path) -> None:
        fetched.append((urls, target))
        write_lines(target, [review_2023("u1", "B1", 1_000)])

    monkeypatch.setattr(amazon, "fetch", fake_fetch)
    cfg = AmazonConfig(path=str(tmp_path), categories=["Books"], download=True)
    assert amazon.load(cfg).interactions.collect().height == 1
    assert fetched == [(
        [
            "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/review_categories/Books.jsonl.gz",
            "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw/review_categories/Books.jsonl.gz",
        ],
        tmp_path / "Books.jsonl.gz",
    )]
    fetched.clear()
    amazon.load(cfg)  # everything present: nothing fetched
    assert fetched == []


def test_download_urls_of_2018_edition(tmp_path, monkeypatch):
    fetched: list[str] = []
    monkeypatch.setattr(amazon, "fetch", lambda urls, target: fetched.append(urls[0]))
    amazon.download(AmazonConfig(path=str(tmp_path), edition=2018, categories=["Books"]))
    assert fetched == [
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFiles/Books.json.gz",
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/meta_Books.json.gz",
    ]


def test_fetch_falls_back_to_the_next_mirror_and_writes_atomically(tmp_path):
    source = tmp_path / "remote.gz"
    source.write_bytes(b"payload")
    target = tmp_path / "data" / "Books.jsonl.gz"
    amazon.fetch([(tmp_path / "absent.gz").as_uri(), source.as_uri()], target)  # file:// URLs: no network
    assert target.read_bytes() == b"payload"
    assert [path.name for path in target.parent.iterdir()] == ["Books.jsonl.gz"]
    with pytest.raises(DataError, match="download failed from every mirror"):
        amazon.fetch([(tmp_path / "absent.gz").as_uri()], tmp_path / "data" / "meta.gz")
    assert [path.name for path in target.parent.iterdir()] == ["Books.jsonl.gz"]


def test_failed_metadata_download_only_warns(tmp_path, monkeypatch, caplog):
    def fetch_reviews_only(urls: list[str], target: Path) -> None:
        if target.name.startswith("meta_"):
            raise DataError(f"{target}: download failed from every mirror: 404")
        write_lines(target, [review_2023("u1", "B1", 1_000)])

    monkeypatch.setattr(amazon, "fetch", fetch_reviews_only)
    with caplog.at_level(logging.WARNING, logger="tasks.data.adapters.amazon"):
        raw = amazon.load(AmazonConfig(path=str(tmp_path), categories=["Books"], download=True))
    assert raw.items.collect()["title"].to_list() == [None]
    assert "metadata is optional" in caplog.text
