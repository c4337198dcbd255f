"""Pseudonymous user ids end to end: a real pipeline run and an incremental update on an event log with
distinctive raw user ids, then a scan of everything they left (run folders, caches, event store, MLflow
store and registry, Prefect API and database, result storage, console output) for any raw id or the key;
then `itx reidentify` maps the recommendations back with the key and refuses without it."""
from __future__ import annotations

import hmac
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from conf.loading import load_config, preset_path
from conf.schema import PrivacyConfig, SyntheticConfig
from flows.cli import main
from tasks.data.pseudonyms import pseudonym_key
from tasks.data.synthetic import generate_shop

pytestmark = pytest.mark.slow

KEY = "flow-test-pseudonym-key-5f1d0c9a7e"
NEW_USER = "dave.newcomer@example.com"  # appears only in the incremental batch
# Every raw id of the fixture carries one of these markers, so finding none finds no raw id, whole or cut.
# (Not "example.com" alone: Prefect's own block schemas hold example URLs.)
LEAK = re.compile(rf"@example|user\d{{4}}@|CUST-|{re.escape(KEY)}")
ROOT = Path(__file__).resolve().parents[2]


def raw_id(index: int) -> str:
    return f"user{index:04d}@example.com" if index % 2 else f"CUST-{index:06d}"


def pseudonym(raw: str) -> str:
    return hmac.new(KEY.encode(), raw.encode(), "sha256").hexdigest()[:32]


def write_inputs(folder: Path) -> tuple[Path, Path, list[str]]:
    """The synthetic shop's events and users (with gender) under distinctive raw ids, as CSV files."""
    folder.mkdir(parents=True)
    shop = generate_shop(SyntheticConfig(n_users=300, n_items=120, n_topics=4, mean_events_per_user=15), 3)
    ids = {f"u{i:07d}": raw_id(i) for i in range(shop.users.height)}
    rename = pl.col("user_id").replace_strict(ids)
    shop.interactions.select(rename, "item_id", "timestamp").write_csv(folder / "events.csv")
    shop.users.select(rename, "gender").write_csv(folder / "users.csv")
    return folder / "events.csv", folder / "users.csv", list(ids.values())


def new_events(folder: Path, raw_users: list[str], items: list[str], after: int) -> Path:
    """Three new events for 40 known users and six for a user never seen before, with raw ids."""
    rng = np.random.default_rng(1)
    rows = [(user, items[rng.integers(len(items))], after + 60 * i + j)
            for i, user in enumerate([*raw_users[:40], NEW_USER]) for j in range(6 if user == NEW_USER else 3)]
    path = folder / "batch.csv"
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(path)
    return path


def texts_of_file(path: Path) -> list[str]:
    """A file's bytes as text, plus the string values of every column when it is a Parquet table (values
    in compressed or dictionary-encoded pages are invisible to a byte scan)."""
    texts = [path.read_bytes().decode("latin-1")]
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path)
        texts.append(" ".join(frame.columns))
        for column in frame.columns:
            values = frame[column]
            if values.dtype == pl.String or isinstance(values.dtype, pl.List):
                texts.append("\n".join(str(v) for v in values.to_list()))
    return texts


def leaks_in_tree(root: Path) -> dict[str, list[str]]:
    """Every file under root (names included) where a raw id or the key shows: path -> matches."""
    found = {}
    for path in sorted(root.rglob("*")):
        texts = [str(path.relative_to(root))] + (texts_of_file(path) if path.is_file() else [])
        hits = sorted({m for text in texts for m in LEAK.findall(text)})
        if hits:
            found[str(path)] = hits
    return found


def leaks_in(label: str, payload) -> dict[str, list[str]]:
    hits = sorted(set(LEAK.findall(payload if isinstance(payload, str) else json.dumps(payload, default=str))))
    return {label: hits} if hits else {}


def mlflow_leaks(tracking_uri: str, download: Path) -> tuple[dict[str, list[str]], int]:
    """Raw ids in the MLflow store through its API: runs' params, tags, metric names and every artifact
    downloaded; logged models; registered models, their versions and their files. Also returns how many
    runs were read."""
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    found: dict[str, list[str]] = {}
    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL, max_results=1000)
    for run in runs:
        data = run.data
        found |= leaks_in(f"run {run.info.run_id} params/tags/metrics",
                          [data.params, data.tags, sorted(data.metrics), run.info.run_name])
        target = download / run.info.run_id
        target.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(target), tracking_uri=tracking_uri)
    for model in client.search_logged_models([e.experiment_id for e in experiments]):
        found |= leaks_in(f"logged model {model.model_id}", [model.params, model.tags, model.name])
    for registered in client.search_registered_models():
        found |= leaks_in(f"registered model {registered.name}",
                          [registered.description, registered.tags, registered.aliases])
        for version in client.search_model_versions(f"name='{registered.name}'"):
            found |= leaks_in(f"model version {version.version}",
                              [version.description, version.tags, version.source, version.run_id])
            target = download / f"registered-{version.version}"
            target.mkdir(parents=True)
            source = client.get_model_version_download_uri(registered.name, version.version)
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target), tracking_uri=tracking_uri)
    found |= leaks_in_tree(download)
    return found, len(runs)


def prefect_leaks() -> tuple[dict[str, list[str]], dict[str, int]]:
    """Raw ids in the Prefect API: flow runs (names, parameters, states), task runs, artifacts and logs;
    also returns how many of each were read."""
    from prefect import get_client
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # logs are sent in batches: make sure every line reached the server
    EventsWorker.drain_all()
    found: dict[str, list[str]] = {}
    counts = {}
    with get_client(sync_client=True) as client:
        def read_all(read) -> list:
            objects = []
            while page := read(limit=200, offset=len(objects)):  # the API's largest page
                objects += page
            return objects

        for kind, read in (("flow run", client.read_flow_runs), ("task run", client.read_task_runs),
                           ("artifact", client.read_artifacts), ("log", client.read_logs)):
            objects = read_all(read)
            counts[kind] = len(objects)
            found |= leaks_in(f"Prefect {kind}s", [o.model_dump_json() for o in objects])
    return found, counts


def itx(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`itx ARGS` in a fresh process with the key in its environment, reporting to this test's Prefect
    server (so its flow runs, task runs, artifacts and logs can be read back here)."""
    from prefect.settings import PREFECT_API_URL

    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "ITX_PSEUDONYM_KEY": KEY, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def private_runs(tmp_path_factory):
    """`itx run` and `itx retrain` on raw ids, pseudonymised with KEY from the environment; their console
    output."""
    root = tmp_path_factory.mktemp("private")
    events, users, raw_users = write_inputs(root / "input")
    preset = root / "input" / "private.yaml"
    preset.write_text(yaml.safe_dump({
        "extends": str(preset_path("experiments/tiny.yaml")),
        "name": "private",
        "data": {"source": "events", "events": {"interactions": str(events), "users": str(users)}},
        "models": [{"kind": "popularity", "name": "popularity"},
                   {"kind": "rnn", "name": "gru", "embedding_dim": 32, "hidden_dim": 32}],
        "train": {"max_epochs": 2},
        "privacy": {"pseudonymize_users": True},
        "output": {"root": str(root / "outputs")},
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
    }))
    first = itx("run", str(preset), "--run-name", "first", cwd=root)
    run_dir = root / "outputs" / "first"
    items = pl.read_parquet(run_dir / "data" / "items.parquet")["item_id"].to_list()
    batch = new_events(root / "input", raw_users, items, pl.read_csv(events)["timestamp"].max() + 1000)
    second = itx("retrain", str(preset), "--new-events", str(batch), "--finetune-epochs", "1", cwd=root)
    update_dirs = [p for p in (root / "outputs").iterdir() if p.name.startswith("private-")]
    return {"root": root, "config": load_config(preset), "run_dir": run_dir, "update_dirs": update_dirs,
            "raw_users": raw_users, "console": first.stdout + first.stderr + second.stdout + second.stderr}


def test_a_pseudonymised_run_leaves_no_raw_user_id_or_key_anywhere(private_runs):
    root = private_runs["root"]
    found = leaks_in("console output of itx run and itx retrain", private_runs["console"])
    # Files: run folders, cache (ingested and preprocessed tables, checkpoints), event store, MLflow's
    # database and artifact folder; only the input folder holds raw ids (where the user put them).
    for folder in (root / "outputs", root / "mlruns"):
        found |= leaks_in_tree(folder)
    found |= leaks_in("mlflow.db", (root / "mlflow.db").read_bytes().decode("latin-1"))
    found |= leaks_in_tree(Path(os.environ["PREFECT_HOME"]))  # Prefect results (e.g. the ingest task's)
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    found |= leaks_in_tree(database.parent)  # the Prefect server's database: logs, parameters, events, artifacts
    mlflow_found, n_runs = mlflow_leaks(f"sqlite:///{root / 'mlflow.db'}", root / "mlflow-download")
    prefect_found, counts = prefect_leaks()
    print(f"scanned {n_runs} MLflow runs, Prefect {counts}")
    assert found | mlflow_found | prefect_found == {}
    # The scan read what it should: both runs' MLflow runs and files, the registry's served package,
    # Prefect's flow and task runs, artifacts and logs.
    assert n_runs >= 4 and counts["flow run"] >= 2 and counts["task run"] > 10, (n_runs, counts)
    assert counts["artifact"] >= 2 and counts["log"] > 10, counts
    # ...and would have seen a raw id: in the input CSV, and in a compressed, dictionary-encoded Parquet file.
    control = root / "control"
    control.mkdir()
    pl.DataFrame({"user_id": private_runs["raw_users"] * 3}).write_parquet(control / "ids.parquet",
                                                                          compression="zstd")
    assert leaks_in_tree(root / "input") and leaks_in_tree(control)
    downloaded = {p.name for p in (root / "mlflow-download").rglob("*")}
    assert {"items.json", "meta.json", "recommendations.parquet", "config.yaml"} <= downloaded
    assert any(p.suffix == ".db" for p in database.parent.iterdir())
    assert any((Path(os.environ["PREFECT_HOME"]) / "storage").iterdir())  # persisted task results were scanned


def test_pseudonyms_are_the_keyed_hash_of_raw_ids_and_stable_across_runs(private_runs):
    run_dir, raw_users = private_runs["run_dir"], private_runs["raw_users"]
    expected = {pseudonym(u) for u in raw_users}
    users = pl.read_parquet(run_dir / "data" / "users.parquet")
    assert set(users["user_id"]) <= expected and users.height > 200
    assert set(users["gender"].drop_nulls()) == {"F", "M"}  # attributes followed their users
    assert {"F", "M"} <= set(pl.read_csv(run_dir / "metrics.csv")["group"])  # so group metrics still work
    assert set(pl.read_parquet(run_dir / "recommendations.parquet")["user_id"]) <= expected
    # The incremental update pseudonymised its raw batch with the same key: known users kept their pseudonym.
    store = Path(private_runs["config"].output.root) / "event_store" / "private"
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["batches"][-1]["added"] == 40 * 3 + 6
    stored = pl.read_parquet(store / "interactions.parquet")
    assert set(stored["user_id"]) <= expected | {pseudonym(NEW_USER)}
    assert pseudonym(NEW_USER) in set(stored["user_id"])
    before = pl.read_csv(private_runs["root"] / "input" / "events.csv").filter(pl.col("user_id") == raw_users[0])
    assert stored.filter(pl.col("user_id") == pseudonym(raw_users[0])).height == before.height + 3


def test_itx_reidentify_maps_back_with_the_key_and_refuses_without_it(private_runs, monkeypatch, capsys):
    root, run_dir = private_runs["root"], private_runs["run_dir"]
    out = root / "mapped" / "recs.parquet"
    monkeypatch.delenv("ITX_PSEUDONYM_KEY", raising=False)
    assert main(["reidentify", str(run_dir), "--out", str(out)]) == 2
    assert "ITX_PSEUDONYM_KEY" in capsys.readouterr().err
    assert not out.exists()

    monkeypatch.setenv("ITX_PSEUDONYM_KEY", KEY)
    export = run_dir / "recommendations.parquet"
    assert main(["reidentify", str(run_dir), "--out", str(export)]) == 2  # never the pseudonymous export
    assert "never overwritten" in capsys.readouterr().err
    assert main(["reidentify", str(run_dir), "--out", str(out)]) == 0
    exported, mapped = pl.read_parquet(export), pl.read_parquet(out)
    assert mapped.columns == exported.columns and mapped.height == exported.height
    assert mapped.drop("user_id").equals(exported.drop("user_id"))
    assert [pseudonym(u) for u in mapped["user_id"]] == exported["user_id"].to_list()
    assert set(mapped["user_id"]) <= set(private_runs["raw_users"])
    promoted = [d for d in private_runs["update_dirs"] if (d / "recommendations.parquet").exists()]
    print(f"incremental update promoted and exported: {bool(promoted)}")
    for update_dir in promoted:  # a promoted update exports recommendations, the batch's new user among them
        assert main(["reidentify", str(update_dir), "--out", str(root / "mapped" / "update.csv")]) == 0
        assert NEW_USER in set(pl.read_csv(root / "mapped" / "update.csv")["user_id"])


def test_the_key_can_come_from_a_prefect_secret_block(monkeypatch):
    from prefect.blocks.system import Secret

    secret = "a-block-held-key-" + "0123456789"  # not KEY: the leak scan above may run after this test
    monkeypatch.delenv("ITX_PSEUDONYM_KEY", raising=False)
    Secret(value=secret).save("itx-test-pseudonym-key", overwrite=True)
    settings = PrivacyConfig(pseudonymize_users=True, key_secret_block="itx-test-pseudonym-key")
    assert pseudonym_key(settings) == secret.encode()
    monkeypatch.setenv("ITX_PSEUDONYM_KEY", KEY)  # the environment variable comes first
    assert pseudonym_key(settings) == KEY.encode()
    monkeypatch.delenv("ITX_PSEUDONYM_KEY")
    with pytest.raises(ValueError, match="Prefect Secret block 'no-such-block'"):
        pseudonym_key(PrivacyConfig(pseudonymize_users=True, key_secret_block="no-such-block"))
