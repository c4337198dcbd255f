"""RecBole atomic-file adapter and the gzip view it reads through, on small files written here."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import polars as pl
import pytest

from conf.schema import RecBoleConfig
from tasks import schemas
from tasks.data.adapters import recbole
from tasks.data.adapters.files import open_text
from tasks.schemas import DataError

ML_1M = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "ml-1m"

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\ti1\t5\t100.4\n"
    "u1\ti2\t3.5\t200.6\n"
    "u2\ti3\t4\t300\n"
)
ITEM = (
    "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token_seq\n"
    "i1\tDune\t1984.0\tsf drama\n"
    "i2\tHeat\t1995\tcrime\n"
    "i9\tNever Rated\t2000\tdrama\n"
)
USER = "user_id:token\tage:float\tgender:token\nu1\t1.0\tF\nu2\t25.5\tM\n"


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path, monkeypatch):
    """Decompressed copies go to this test's own folder, not the shared system temp dir."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-tmp"))
    (tmp_path / "system-tmp").mkdir()


def write(path: Path, text: str) -> Path:
    """Write `text` as UTF-8, gzipped when the name ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def dataset(root: Path, inter: str | None = INTER, user: str | None = USER, item: str | None = ITEM,
            gz: tuple[str, ...] = ()) -> Path:
    """A RecBole folder `root/shop` with the given files (None: left out); `gz` lists suffixes to gzip."""
    folder = root / "shop"
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, text in (("inter", inter), ("user", user), ("item", item)):
        if text is not None:
            write(folder / f"shop.{suffix}{'.gz' if suffix in gz else ''}", text)
    return folder


def config(folder: Path, **overrides) -> RecBoleConfig:
    return RecBoleConfig(path=str(folder), **overrides)


# --- open_text ---------------------------------------------------------------------------------


def test_open_text_returns_plain_files_unchanged(tmp_path):
    path = write(tmp_path / "a.inter", INTER)
    assert open_text(path) == path


def test_open_text_decompresses_once_into_the_temp_cache(tmp_path):
    path = write(tmp_path / "a.inter.gz", INTER)
    first = open_text(path)
    assert first.name == "a.inter"
    assert first.parent.parent == tmp_path / "system-tmp" / "itx-unzipped"
    assert first.read_text() == INTER
    stamp = first.stat().st_mtime_ns
    assert open_text(path) == first and first.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert [p.name for p in first.parent.iterdir()] == ["a.inter"]  # no temporary left behind


def test_open_text_follows_changes_to_the_gz_file(tmp_path):
    path = write(tmp_path / "a.inter.gz", INTER)
    first = open_text(path)
    write(path, INTER + "u3\ti1\t1\t400\n")
    second = open_text(path)
    assert second != first
    assert second.read_text().endswith("u3\ti1\t1\t400\n")


@pytest.mark.parametrize(
    "content",
    [gzip.compress(INTER.encode())[:-12], b"not gzip at all"],
    ids=["truncated", "garbage"],
)
def test_open_text_rejects_a_bad_gzip_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.inter.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"not a valid gzip file: .*broken\.inter\.gz"):
        open_text(path)
    assert not list((tmp_path / "system-tmp" / "itx-unzipped").rglob("*.inter"))


# --- parsing -----------------------------------------------------------------------------------


def test_interactions_have_contract_types_rounded_seconds_and_float_ratings(tmp_path):
    raw = recbole.load(config(dataset(tmp_path)))
    interactions = raw.interactions.collect()
    schemas.check_schema(interactions.schema, schemas.INTERACTIONS | schemas.OPTIONAL_INTERACTION_COLUMNS,
                         "interactions", raw.origin)
    assert interactions.rows() == [("u1", "i1", 100, 5.0), ("u1", "i2", 201, 3.5), ("u2", "i3", 300, 4.0)]


def test_interactions_without_rating_column_have_no_rating(tmp_path):
    inter = "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t7\n"
    interactions = recbole.load(config(dataset(tmp_path, inter=inter))).interactions.collect()
    assert interactions.columns == ["user_id", "item_id", "timestamp"]
    assert interactions["timestamp"].to_list() == [7]


def test_crlf_lines_and_blank_lines_are_read_like_plain_ones(tmp_path):
    crlf = INTER.replace("\n", "\r\n") + "\r\n"
    interactions = recbole.load(config(dataset(tmp_path, inter=crlf))).interactions.collect()
    assert interactions.rows() == [("u1", "i1", 100, 5.0), ("u1", "i2", 201, 3.5), ("u2", "i3", 300, 4.0)]


def test_titles_join_item_text_fields_and_unlisted_items_are_titled_by_id(tmp_path):
    cfg = config(dataset(tmp_path), item_text_fields=["movie_title", "release_year"], category_field="genre",
                 domain="movies")
    items = recbole.load(cfg).items.collect()
    assert items.schema == pl.Schema(schemas.ITEMS)
    assert sorted(items.rows()) == [
        ("i1", "Dune 1984", "sf drama", "movies"),  # float year shown without ".0"
        ("i2", "Heat 1995", "crime", "movies"),
        ("i3", "i3", None, "movies"),  # rated but absent from .item
        ("i9", "Never Rated 2000", "drama", "movies"),  # listed but never rated: kept for cold start
    ]


def test_title_defaults_to_the_item_id(tmp_path):
    items = recbole.load(config(dataset(tmp_path))).items.collect()
    assert dict(zip(items["item_id"], items["title"])) == {"i1": "i1", "i2": "i2", "i3": "i3", "i9": "i9"}
    assert items["category"].null_count() == items.height
    assert set(items["domain"]) == {"default"}


def test_without_item_file_every_rated_item_gets_a_row(tmp_path):
    items = recbole.load(config(dataset(tmp_path, item=None), domain="books")).items.collect()
    assert sorted(items.rows()) == [("i1", "i1", None, "books"), ("i2", "i2", None, "books"),
                                    ("i3", "i3", None, "books")]


def test_user_attributes_are_text_and_whole_floats_lose_their_decimal(tmp_path):
    users = recbole.load(config(dataset(tmp_path))).users.collect()
    assert users.schema == pl.Schema({"user_id": pl.String, "age": pl.String, "gender": pl.String})
    assert sorted(users.rows()) == [("u1", "1", "F"), ("u2", "25.5", "M")]


def test_users_missing_from_user_file_get_empty_attributes(tmp_path):
    users = recbole.load(config(dataset(tmp_path, user=USER.replace("u2\t25.5\tM\n", "")))).users.collect()
    assert sorted(users.rows()) == [("u1", "1", "F"), ("u2", None, None)]


def test_without_user_file_users_are_the_interacting_ids(tmp_path):
    users = recbole.load(config(dataset(tmp_path, user=None))).users.collect()
    assert users.columns == ["user_id"]
    assert sorted(users["user_id"]) == ["u1", "u2"]


def test_gzipped_files_read_like_plain_ones(tmp_path):
    cfg = dict(item_text_fields=["movie_title"], category_field="genre")
    plain = recbole.load(config(dataset(tmp_path / "plain"), **cfg))
    packed = recbole.load(config(dataset(tmp_path / "gz", gz=("inter", "user", "item")), **cfg))
    for table in ("interactions", "items", "users"):
        assert getattr(packed, table).collect().equals(getattr(plain, table).collect()), table


def test_plain_file_wins_over_its_gz_twin_and_source_files_lists_what_is_read(tmp_path):
    folder = dataset(tmp_path, item=None)
    write(folder / "shop.inter.gz", INTER.replace("u2\ti3", "u9\ti9"))
    cfg = config(folder)
    assert recbole.source_files(cfg) == [folder / "shop.inter", folder / "shop.user"]
    assert "u9" not in recbole.load(cfg).interactions.collect()["user_id"].to_list()


def test_explicit_name_picks_the_file_stem(tmp_path):
    folder = tmp_path / "data"
    write(folder / "ml.inter.gz", INTER)
    cfg = config(folder, name="ml")
    assert recbole.source_files(cfg) == [folder / "ml.inter.gz"]
    assert recbole.load(cfg).interactions.collect().height == 3


def test_first_bad_line_is_found_in_a_longer_file(tmp_path):
    rows = [f"u{n}\ti{n % 7}\t{n % 5 + 1}\t{n}" for n in range(5000)]
    rows[3000] = "u1\ti1\t3\tlater"  # line 3002 (the header is line 1)
    rows[4000] = "u1\ti1\t3\tlatest"
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n"
    with pytest.raises(DataError, match=r"shop\.inter: line 3002: column 'timestamp' has 'later'"):
        recbole.load(config(dataset(tmp_path, inter=inter)))


# --- errors ------------------------------------------------------------------------------------

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


@pytest.mark.parametrize(
    ("inter", "expected"),
    [
        ("user_id\titem_id:token\ttimestamp:float\nu1\ti1\t1\n", r"shop\.inter: header field 'user_id' has no ':type'"),
        ("user_id:token\titem_id:token\ttimestamp:int\nu1\ti1\t1\n", r"shop\.inter: .*unknown type 'int'"),
        ("user_id:token\titem_id:token\titem_id:float\ttimestamp:float\nu1\ti1\t1\t2\n",
         r"shop\.inter: duplicate column names in header: \['item_id'\]"),
        ("user_id:token\titem_id:token\trating:float\nu1\ti1\t5\n",
         r"shop\.inter: no column 'timestamp' .*found columns \['user_id:token', 'item_id:token', 'rating:float'\]"),
        ("uid:token\titem_id:token\ttimestamp:float\nu1\ti1\t5\n", r"shop\.inter: no column 'user_id'"),
        ("", r"shop\.inter: empty file"),
        (HEADER, r"shop\.inter: header only"),
        (HEADER + "\n\n", r"shop\.inter: header only"),
        (HEADER + "u1\ti1\t5\t10\nu1\ti2\t4\tyesterday\n", r"shop\.inter: line 3: column 'timestamp' has 'yesterday'"),
        (HEADER + "u1\ti1\t5\t10\nu1\ti2\t4\t\n", r"shop\.inter: line 3: column 'timestamp' has ''"),
        (HEADER + "u1\ti1\t5\t10\nu1\ti2\t4\tinf\n", r"shop\.inter: line 3: column 'timestamp' has 'inf'"),
        (HEADER + "u1\ti1\t5\t10\nu1\ti2\t4\t20\nu1\ti3\tfive\t30\n",
         r"shop\.inter: line 4: column 'rating' has 'five'"),
        (HEADER + "u1\ti1\t5\n", r"shop\.inter: line 2: 3 tab-separated fields, expected 4"),
        (HEADER + "u1\ti1\t5\t10\t11\n", r"shop\.inter: line 2: 5 tab-separated fields, expected 4"),
    ],
    ids=["untyped", "unknown-type", "duplicate", "no-timestamp", "no-user", "empty", "header-only",
         "header-and-blank-lines", "bad-timestamp", "empty-timestamp", "infinite-timestamp", "bad-rating",
         "short-line", "long-line"],
)
def test_bad_interactions_file_names_file_and_problem(tmp_path, inter, expected):
    with pytest.raises(DataError, match=expected):
        recbole.load(config(dataset(tmp_path, inter=inter)))


def test_empty_rating_is_allowed_and_null(tmp_path):
    interactions = recbole.load(config(dataset(tmp_path, inter=HEADER + "u1\ti1\t\t10\n"))).interactions.collect()
    assert interactions["rating"].to_list() == [None]


def test_bad_value_in_a_gz_file_names_the_gz_file(tmp_path):
    folder = dataset(tmp_path, inter=None)
    write(folder / "shop.inter.gz", HEADER + "u1\ti1\tx\t10\n")
    with pytest.raises(DataError, match=r"shop\.inter\.gz: line 2: column 'rating' has 'x'"):
        recbole.load(config(folder))


def test_missing_folder_says_where_the_files_go(tmp_path):
    expected = r"nowhere.*expected .*nowhere/nowhere\.inter or \.inter\.gz.*data\.recbole\.path"
    with pytest.raises(DataError, match=expected):
        recbole.load(config(tmp_path / "nowhere"))


def test_missing_inter_file_says_where_it_goes(tmp_path):
    folder = dataset(tmp_path, inter=None)
    with pytest.raises(DataError, match=r"expected .*shop/shop\.inter or \.inter\.gz"):
        recbole.source_files(config(folder))


@pytest.mark.parametrize(
    ("suffix", "text", "expected"),
    [
        ("item", "item_id:token\tmovie_title:token\ni1\n", r"shop\.item: line 2: 1 tab-separated fields, expected 2"),
        ("item", "iid:token\tmovie_title:token\ni1\tDune\n", r"shop\.item: no column 'item_id'"),
        ("user", "user_id:token\tage:float\n", r"shop\.user: header only"),
        ("user", "user_id:token\tage:number\nu1\t3\n", r"shop\.user: .*unknown type 'number'"),
    ],
    ids=["short-item-line", "item-without-id", "user-header-only", "user-unknown-type"],
)
def test_bad_side_files_name_file_and_problem(tmp_path, suffix, text, expected):
    with pytest.raises(DataError, match=expected):
        recbole.load(config(dataset(tmp_path, **{suffix: text})))


def test_text_field_absent_from_item_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"shop\.item: no column 'plot' .*item_text_fields.*found columns"):
        recbole.load(config(dataset(tmp_path), item_text_fields=["movie_title", "plot"]))


def test_text_fields_without_item_file_name_the_setting(tmp_path):
    with pytest.raises(DataError, match=r"no \.item file.*\['genre'\]"):
        recbole.load(config(dataset(tmp_path, item=None), category_field="genre"))


# --- real data ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_movielens_1m_atomic_files_load_completely():
    if not ML_1M.is_dir():
        pytest.skip(f"{ML_1M} not present")
    raw = recbole.load(RecBoleConfig(path=str(ML_1M), item_text_fields=["movie_title", "release_year"],
                                     category_field="genre", domain="movies"))
    interactions = raw.interactions.collect()
    assert interactions.height == 1_000_209
    assert interactions["timestamp"].min() >= 956_000_000  # 2000-04-25, unix seconds
    users = raw.users.collect()
    assert users.height == 6_040 and users["gender"].null_count() == 0
    assert sorted(users["age"].unique()) == ["1", "18", "25", "35", "45", "50", "56"]
    rated = interactions.select("item_id").unique().join(raw.items.collect(), on="item_id", how="left")
    assert rated.height == 3_706
    assert rated["title"].null_count() == 0
    assert (rated["title"] != rated["item_id"]).all()  # titles come from .item, not the id fallback
