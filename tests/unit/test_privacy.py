"""Pseudonymous user ids: the keyed hash, where the key comes from, ingestion and the event store applying
it, and mapping a run's recommendations back with `itx reidentify`."""
from __future__ import annotations

import hmac
import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from conf.loading import dump_config, load_config, preset_path
from conf.schema import DataConfig, EventLogConfig, PrivacyConfig
from tasks.data import pseudonyms as privacy_module
from tasks.data.event_store import MANIFEST, update_store
from tasks.data.ingestion import ingest_dataset
from tasks.data.pseudonyms import (
    PseudonymKeyError,
    key_id,
    pseudonym_key,
    pseudonymize,
)
from tasks.ops.reidentify import reidentify_run

KEY = "unit-test-key-0123456789abcdef"
OTHER_KEY = "another-key-fedcba9876543210"
RAW_USERS = ["alice@example.com", "CUST-000123", "bob@example.com", "CUST-000456"]
ON = PrivacyConfig(pseudonymize_users=True)


def hmac_hex(key: str, value: str) -> str:
    return hmac.new(key.encode(), value.encode(), "sha256").hexdigest()[:32]


def write_dataset(folder: Path) -> EventLogConfig:
    """A tiny event log with distinctive raw user ids, and a users table with their gender."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(user, f"sku-{(u + j) % 5}", 1_700_000_000 + 60 * j) for u, user in enumerate(RAW_USERS) for j in range(3)]
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(folder / "events.csv")
    genders = ["F", "M", "M", "F"]
    pl.DataFrame({"user_id": RAW_USERS, "gender": genders}).write_csv(folder / "users.csv")
    return EventLogConfig(interactions=str(folder / "events.csv"), users=str(folder / "users.csv"))


def test_pseudonymize_replaces_each_id_by_its_hmac_sha256_keeping_rows_in_order():
    frame = pl.LazyFrame({"user_id": ["CUST-000123", "alice@example.com", None, "CUST-000123"], "n": [1, 2, 3, 4]})
    out = pseudonymize(frame, "user_id", KEY.encode()).collect()
    assert out.columns == ["user_id", "n"] and out["n"].to_list() == [1, 2, 3, 4]
    assert out["user_id"].to_list() == [hmac_hex(KEY, "CUST-000123"), hmac_hex(KEY, "alice@example.com"), None,
                                        hmac_hex(KEY, "CUST-000123")]


def test_the_same_key_gives_the_same_pseudonyms_and_another_key_other_ones():
    frame = pl.LazyFrame({"user_id": RAW_USERS})
    first = pseudonymize(frame, "user_id", KEY.encode()).collect()["user_id"]
    again = pseudonymize(frame.reverse(), "user_id", KEY.encode()).collect()["user_id"].reverse()
    other = pseudonymize(frame, "user_id", OTHER_KEY.encode()).collect()["user_id"]
    assert first.to_list() == again.to_list()
    assert not set(first.to_list()) & set(other.to_list())
    assert first.n_unique() == len(RAW_USERS)


def test_the_key_comes_from_the_environment_first_then_the_secret_block(monkeypatch):
    monkeypatch.delenv("ITX_PSEUDONYM_KEY", raising=False)
    assert pseudonym_key(PrivacyConfig()) is None  # off: no key needed
    blocks = {"itx-key": "block-key-0123456789abcdef"}
    monkeypatch.setattr(privacy_module, "_secret_block_value", blocks.get)
    with_block = PrivacyConfig(pseudonymize_users=True, key_secret_block="itx-key")
    assert pseudonym_key(with_block) == b"block-key-0123456789abcdef"
    monkeypatch.setenv("ITX_PSEUDONYM_KEY", KEY)
    assert pseudonym_key(with_block) == KEY.encode()
    custom = PrivacyConfig(pseudonymize_users=True, key_env="MY_KEY")
    monkeypatch.setenv("MY_KEY", OTHER_KEY)
    assert pseudonym_key(custom) == OTHER_KEY.encode()


def test_a_missing_or_short_key_fails_naming_where_it_was_looked_for(monkeypatch):
    monkeypatch.delenv("ITX_PSEUDONYM_KEY", raising=False)
    monkeypatch.setattr(privacy_module, "_secret_block_value", lambda name: None)
    with pytest.raises(PseudonymKeyError, match="environment variable ITX_PSEUDONYM_KEY"):
        pseudonym_key(ON)
    with pytest.raises(PseudonymKeyError, match="ITX_PSEUDONYM_KEY or Prefect Secret block 'itx-key'"):
        pseudonym_key(PrivacyConfig(pseudonymize_users=True, key_secret_block="itx-key"))
    monkeypatch.setenv("ITX_PSEUDONYM_KEY", "short")
    with pytest.raises(PseudonymKeyError, match="5 bytes long; use at least 16") as error:
        pseudonym_key(ON)
    assert "'short'" not in str(error.value)  # the message never quotes the key


def test_the_key_id_names_a_key_without_revealing_it():
    assert key_id(None) is None
    ids = key_id(KEY.encode()), key_id(OTHER_KEY.encode())
    assert ids[0] != ids[1] and all(len(i) == 16 and KEY not in i for i in ids)
    assert ids[0] == hmac_hex(KEY, "itx-key-id")[:16]


def test_ingestion_pseudonymises_users_in_events_and_users_table_and_keys_its_folder_by_key_id(
        tmp_path, monkeypatch):
    events = write_dataset(tmp_path / "input")
    config = DataConfig(source="events", events=events)
    plain = ingest_dataset(config, 1, tmp_path / "cache")
    monkeypatch.setenv("ITX_PSEUDONYM_KEY", KEY)
    hidden = ingest_dataset(config, 1, tmp_path / "cache", ON)
    monkeypatch.setenv("ITX_PSEUDONYM_KEY", OTHER_KEY)
    other = ingest_dataset(config, 1, tmp_path / "cache", ON)
    folders = {Path(raw.users.path).parent for raw in (plain, hidden, other)}
    assert len(folders) == 3 and not any(KEY in str(f) or OTHER_KEY in str(f) for f in folders)

    users = pl.read_parquet(hidden.users.path)
    expected = {hmac_hex(KEY, u): g for u, g in zip(RAW_USERS, ["F", "M", "M", "F"])}
    assert dict(zip(users["user_id"], users["gender"])) == expected  # attributes stay with their users
    interactions = pl.read_parquet(hidden.interactions.path)
    assert set(interactions["user_id"]) == set(expected)
    assert interactions.drop("user_id").equals(pl.read_parquet(plain.interactions.path).drop("user_id"))
    for path in Path(hidden.users.path).parent.iterdir():
        assert not any(raw.encode() in path.read_bytes() for raw in RAW_USERS)


def test_new_events_are_pseudonymised_with_the_store_key_and_a_store_never_mixes_keys(tmp_path, monkeypatch):
    events = write_dataset(tmp_path / "input")
    data = DataConfig(source="events", events=events)
    monkeypatch.setenv("ITX_PSEUDONYM_KEY", KEY)
    base = ingest_dataset(data, 1, tmp_path / "cache", ON)
    batch = tmp_path / "input" / "new.csv"
    pl.DataFrame({"user_id": ["CUST-000123", "carol@example.com"], "item_id": ["sku-9", "sku-1"],
                  "timestamp": [1_700_100_000, 1_700_100_060]}).write_csv(batch)
    store = tmp_path / "store"
    update = update_store(store, base, [EventLogConfig(interactions=str(batch))], ON)
    assert update.added == 2 and update.new_users == 1
    stored = pl.read_parquet(store / "interactions.parquet")
    assert stored.filter(pl.col("item_id") == "sku-9")["user_id"].to_list() == [hmac_hex(KEY, "CUST-000123")]
    assert stored.filter(pl.col("user_id") == hmac_hex(KEY, "CUST-000123")).height == 4  # joins the known user
    assert set(pl.read_parquet(store / "users.parquet")["user_id"]) == {
        hmac_hex(KEY, u) for u in [*RAW_USERS, "carol@example.com"]}
    manifest = json.loads((store / MANIFEST).read_text())
    assert manifest["pseudonym_key_id"] == key_id(KEY.encode())
    for path in store.iterdir():
        content = path.read_bytes()
        assert b"example.com" not in content and b"CUST-" not in content and KEY.encode() not in content

    monkeypatch.setenv("ITX_PSEUDONYM_KEY", OTHER_KEY)
    with pytest.raises(ValueError, match="holds pseudonyms of key id .* gives pseudonyms of key id"):
        update_store(store, base, [], ON)
    with pytest.raises(ValueError, match="gives raw user ids"):
        update_store(store, base, [], PrivacyConfig())


def pseudonymous_run(tmp_path: Path, monkeypatch) -> Path:
    """A run folder as a pseudonymised run leaves it: config.yaml and recommendations with pseudonyms."""
    events = write_dataset(tmp_path / "input")
    preset = tmp_path / "private.yaml"
    preset.write_text(yaml.safe_dump({
        "extends": str(preset_path("experiments/tiny.yaml")),
        "data": {"source": "events", "events": events.model_dump(mode="json", exclude_defaults=True)},
        "privacy": {"pseudonymize_users": True}, "output": {"root": str(tmp_path / "outputs")},
    }))
    config = load_config(preset)
    run_dir = tmp_path / "outputs" / "run-1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    recommendations = pl.DataFrame({"user_id": [u for u in RAW_USERS for _ in range(2)],
                                    "item_id": ["sku-1", "sku-2"] * 4, "rank": [1, 2] * 4, "score": [0.5, 0.25] * 4})
    pseudonymize(recommendations.lazy(), "user_id", KEY.encode()).collect().write_parquet(
        run_dir / "recommendations.parquet")
    return run_dir


def test_reidentify_maps_recommendations_back_only_with_the_right_key(tmp_path, monkeypatch):
    run_dir = pseudonymous_run(tmp_path, monkeypatch)
    monkeypatch.delenv("ITX_PSEUDONYM_KEY", raising=False)
    with pytest.raises(PseudonymKeyError, match="ITX_PSEUDONYM_KEY"):
        reidentify_run(run_dir)
    monkeypatch.setenv("ITX_PSEUDONYM_KEY", OTHER_KEY)
    with pytest.raises(ValueError, match="4 of 4 users' pseudonyms have no raw id.*not the one the run used"):
        reidentify_run(run_dir)
    monkeypatch.setenv("ITX_PSEUDONYM_KEY", KEY)
    with pytest.raises(ValueError, match="never overwritten"):
        reidentify_run(run_dir, run_dir / "recommendations.parquet")
    before = (run_dir / "recommendations.parquet").read_bytes()
    result = reidentify_run(run_dir, tmp_path / "raw.csv")
    mapped = pl.read_csv(result.path)
    assert mapped["user_id"].to_list() == [u for u in RAW_USERS for _ in range(2)]
    assert mapped.columns == ["user_id", "item_id", "rank", "score"] and result.users == 4 and result.rows == 8
    assert (run_dir / "recommendations.parquet").read_bytes() == before
    default = reidentify_run(run_dir)
    assert default.path == run_dir.resolve() / "recommendations_reidentified.parquet"
    assert pl.read_parquet(default.path)["user_id"].to_list() == mapped["user_id"].to_list()


def test_itx_reidentify_exits_2_naming_the_variable_without_the_key(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    run_dir = pseudonymous_run(tmp_path, monkeypatch)
    monkeypatch.delenv("ITX_PSEUDONYM_KEY", raising=False)
    assert main(["reidentify", str(run_dir)]) == 2
    assert "ITX_PSEUDONYM_KEY" in capsys.readouterr().err
    assert not (run_dir / "recommendations_reidentified.parquet").exists()
    monkeypatch.setenv("ITX_PSEUDONYM_KEY", KEY)
    assert main(["reidentify", str(run_dir), "--out", str(tmp_path / "raw.parquet")]) == 0
    assert "8 rows" in capsys.readouterr().out
    assert pl.read_parquet(tmp_path / "raw.parquet")["user_id"].n_unique() == 4
