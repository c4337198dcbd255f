"""MovieLens-1M original-format adapter, on small latin-1 files written here; downloads are faked."""

from __future__ import annotations

import hashlib
import io
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import polars as pl
import pytest

from conf.schema import MovieLensConfig
from tasks import schemas
from tasks.data.adapters import movielens
from tasks.data.adapters.files import open_utf8
from tasks.schemas import DataError

RATINGS = b"1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n2::99::1::978301000\n"
USERS = b"1::F::1::10::48067\n2::M::56::16::70072\n"
MOVIES = b"10::Toy Story (1995)::Animation|Children's|Comedy\n20::Mis\xe9rables, Les (1995)::Drama|Musical\n"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No network in tests, and transcoded copies go to this test's own temp folder."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network must not be used here")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-tmp"))
    (tmp_path / "system-tmp").mkdir()


def dat_files(folder: Path, ratings: bytes = RATINGS, users: bytes = USERS, movies: bytes = MOVIES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (("ratings.dat", ratings), ("users.dat", users), ("movies.dat", movies)):
        (folder / name).write_bytes(content)
    return folder


def load(folder: Path, download: bool = False):
    return movielens.load(MovieLensConfig(path=str(folder), download=download))


def official_like_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, content in members.items():
            bundle.writestr(name, content)
    return buffer.getvalue()


def serve(monkeypatch, payload: bytes) -> list[str]:
    """Answer urlopen with `payload`; returns the list of requested URLs."""
    requested: list[str] = []

    def fake_urlopen(url, timeout=None):
        requested.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return requested


def trust(monkeypatch, payload: bytes) -> None:
    """Make `payload` the archive whose checksums download() expects."""
    monkeypatch.setattr(movielens, "ZIP_MD5", hashlib.md5(payload).hexdigest())
    monkeypatch.setattr(movielens, "ZIP_SHA256", hashlib.sha256(payload).hexdigest())


ZIP_MEMBERS = {"ml-1m/ratings.dat": RATINGS, "ml-1m/users.dat": USERS, "ml-1m/movies.dat": MOVIES,
               "ml-1m/README": b"readme"}


# --- parsing -----------------------------------------------------------------------------------


def test_ratings_become_interactions_with_contract_types(tmp_path):
    raw = load(dat_files(tmp_path / "ml"))
    interactions = raw.interactions.collect()
    schemas.check_schema(interactions.schema, schemas.INTERACTIONS | schemas.OPTIONAL_INTERACTION_COLUMNS,
                         "interactions", raw.origin)
    assert interactions.rows() == [
        ("1", "10", 978300760, 5.0), ("1", "20", 978302109, 3.0), ("2", "10", 978301968, 4.0),
        ("2", "99", 978301000, 1.0),
    ]


def test_latin1_titles_survive_and_genres_become_the_category(tmp_path):
    items = load(dat_files(tmp_path / "ml")).items.collect()
    assert items.schema == pl.Schema(schemas.ITEMS)
    assert sorted(items.rows()) == [
        ("10", "Toy Story (1995)", "Animation Children's Comedy", "movies"),
        ("20", "Misérables, Les (1995)", "Drama Musical", "movies"),
        ("99", None, None, "movies"),  # rated but absent from movies.dat
    ]


def test_users_carry_their_attributes_as_text(tmp_path):
    users = load(dat_files(tmp_path / "ml")).users.collect()
    expected = {c: pl.String for c in ("user_id", "gender", "age", "occupation", "zip_code")}
    assert users.schema == pl.Schema(expected)
    assert sorted(users.rows()) == [("1", "F", "1", "10", "48067"), ("2", "M", "56", "16", "70072")]


def test_crlf_and_blank_lines_are_tolerated(tmp_path):
    folder = dat_files(tmp_path / "ml", ratings=RATINGS.replace(b"\n", b"\r\n") + b"\r\n")
    interactions = load(folder).interactions.collect()
    assert interactions["timestamp"].to_list() == [978300760, 978302109, 978301968, 978301000]


def test_open_utf8_transcodes_latin1_once(tmp_path):
    source = tmp_path / "movies.dat"
    source.write_bytes(MOVIES)
    copy = open_utf8(source, "latin-1")
    assert "Misérables" in copy.read_text(encoding="utf-8")
    assert open_utf8(source, "latin-1") == copy
    assert copy.is_relative_to(tmp_path / "system-tmp")


def test_source_files_are_the_three_dat_files(tmp_path):
    folder = tmp_path / "ml"
    assert movielens.source_files(MovieLensConfig(path=str(folder))) == [
        folder / "ratings.dat", folder / "users.dat", folder / "movies.dat"
    ]


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"ratings": RATINGS + b"3::10::5\n"}, r"ratings\.dat: line 5: 3 '::'-separated fields, expected 4"),
        ({"ratings": b"1::10::5::1::2\n"}, r"ratings\.dat: line 1: 5 '::'-separated fields, expected 4"),
        ({"ratings": RATINGS + b"3::10::five::978300760\n"}, r"ratings\.dat: line 5: rating 'five' is not a number"),
        ({"ratings": b"1::10::5::978300760\n1::11::4::noon\n"},
         r"ratings\.dat: line 2: timestamp 'noon' is not a whole"),
        ({"ratings": b"1::10::5::97830.5\n"}, r"ratings\.dat: line 1: timestamp '97830.5' is not a whole"),
        ({"ratings": b""}, r"ratings\.dat: empty file"),
        ({"users": USERS + b"3::F::1::10\n"}, r"users\.dat: line 3: 4 '::'-separated fields, expected 5"),
        ({"movies": b"10::Toy Story (1995)\n"}, r"movies\.dat: line 1: 2 '::'-separated fields, expected 3"),
    ],
    ids=["short-rating", "long-rating", "bad-rating", "bad-timestamp", "fractional-timestamp", "empty",
         "short-user", "short-movie"],
)
def test_bad_lines_name_file_and_line(tmp_path, files, expected):
    with pytest.raises(DataError, match=expected):
        load(dat_files(tmp_path / "ml", **files))


def test_missing_files_say_where_to_put_them_and_how_to_download(tmp_path):
    folder = tmp_path / "ml"
    with pytest.raises(DataError, match=r"ml/ratings\.dat: file not found.*into .*ml.*data\.movielens\.download: true"):
        load(folder)  # the autouse fixture fails the test if this touched the network


def test_present_files_are_not_downloaded_again(tmp_path):
    assert load(dat_files(tmp_path / "ml"), download=True).interactions.collect().height == 4


# --- download ----------------------------------------------------------------------------------


def test_download_fetches_verifies_and_extracts_the_three_files(tmp_path, monkeypatch):
    payload = official_like_zip(ZIP_MEMBERS)
    requested = serve(monkeypatch, payload)
    trust(monkeypatch, payload)
    folder = tmp_path / "ml"
    raw = load(folder, download=True)
    assert requested == [movielens.URL]
    assert sorted(path.name for path in folder.iterdir()) == ["movies.dat", "ratings.dat", "users.dat"]
    assert (folder / "movies.dat").read_bytes() == MOVIES
    assert raw.interactions.collect().height == 4


def test_download_refuses_an_archive_with_other_checksums(tmp_path, monkeypatch):
    serve(monkeypatch, official_like_zip(ZIP_MEMBERS))  # real pinned checksums: this fake cannot match
    folder = tmp_path / "ml"
    with pytest.raises(DataError, match=r"checksum mismatch.*expected md5 c4d9eecfca2ab87c1945afe126590906"):
        load(folder, download=True)
    assert list(folder.iterdir()) == []  # nothing extracted, no temporary left


def test_download_refuses_an_archive_without_the_dat_files(tmp_path, monkeypatch):
    payload = official_like_zip({"ml-1m/ratings.dat": RATINGS})
    serve(monkeypatch, payload)
    trust(monkeypatch, payload)
    with pytest.raises(DataError, match=r"archive lacks \['ml-1m/users\.dat', 'ml-1m/movies\.dat'\]"):
        movielens.download(tmp_path / "ml")
    assert list((tmp_path / "ml").iterdir()) == []


def test_download_failure_names_the_url_and_the_manual_route(tmp_path, monkeypatch):
    def unreachable(url, timeout=None):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(DataError, match=r"could not download https://files\.grouplens\.org/.*Put ratings\.dat"):
        movielens.download(tmp_path / "ml")
