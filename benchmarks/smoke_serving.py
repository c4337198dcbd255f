"""Serving smoke test: a tiny registered champion behind `mlflow models serve`, queried over HTTP.

Trains a tiny GRU on a small synthetic shop, registers it in a temporary MLflow store as
models:/itx-smoke@champion, starts the scoring server on a free port, sends one good request
(printed, with the equivalent curl command; every item must come with reasons from the request's
history) and bad ones that must come back 4xx with a readable message (not a traceback). Exits
non-zero on any failure; the server's process group is always stopped.

  .venv/bin/python benchmarks/smoke_serving.py [--keep]     (about a minute on 2 CPUs)
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore"}.items():
    os.environ.setdefault(key, value)
os.environ.pop("MLFLOW_TRACKING_URI", None)

NAME, ALIAS = "itx-smoke", "champion"
PING_TIMEOUT_S = 60


def build_champion(root: Path) -> tuple[str, list[str]]:
    """(tracking URI, catalogue item ids) of a tiny GRU registered as NAME@ALIAS in a sqlite store under root."""
    import numpy as np
    import polars as pl

    from conf.schema import SyntheticConfig, TrainConfig
    from models.data import SequenceData
    from models.kinds import build_model
    from tasks.ops import tracking
    from tasks.io import TableRef, write_parquet
    from tasks.data.preprocessing import PreparedData
    from tasks.ops.registry import log_recommender, package_model, register, set_alias
    from tasks.data.synthetic import generate_shop
    from tasks.modelling.training import TrainedModel

    shop = generate_shop(SyntheticConfig(n_users=80, n_items=40, mean_events_per_user=10), seed=1)
    items = shop.items.select("item_id").with_row_index("item_idx", offset=1).with_columns(
        pl.col("item_idx").cast(pl.Int32), pl.lit("shop").alias("domain"), pl.lit("all").alias("role"))
    index = dict(zip(items["item_id"].to_list(), items["item_idx"].to_list()))
    sequences = (shop.interactions.sort("user_id", "timestamp")
                 .unique(["user_id", "item_id"], keep="first", maintain_order=True)
                 .group_by("user_id", maintain_order=True).agg(pl.col("item_id")))
    histories = [np.array([index[i] for i in seq]) for seq in sequences["item_id"].to_list() if len(seq) >= 4]
    data = SequenceData(items.height + 1, [h[:-2] for h in histories], [h[-2:-1] for h in histories],
                        [h[-1:] for h in histories])
    model = build_model("rnn", data.n_items, {"embedding_dim": 8, "hidden_dim": 16, "max_seq_len": 10})
    model.fit(data, TrainConfig(max_epochs=1, batch_size=64, progress_bar=False, accelerator="cpu"), seed=0,
              checkpoint_dir=root / "checkpoints")
    model.save(root / "rnn.pt")

    unused = TableRef(str(root / "unused"), "-")
    prepared = PreparedData(events=unused, sequences=unused, users=unused,
                            items=write_parquet(items, root / "items.parquet"), n_users=len(histories),
                            n_items=data.n_items, n_events=0, dropped_events=0)
    trained = TrainedModel(name="gru", kind="rnn", model_file=TableRef(str(root / "rnn.pt"), "-"), epochs=1,
                           best_valid_ndcg=None, seconds=0.0, training_run_id=None)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_id = tracking.start_run(uri, "itx-smoke", "smoke", {}, {})
    model_uri = log_recommender(uri, run_id, package_model(trained, prepared, 10, root / "package"))
    set_alias(uri, NAME, ALIAS, register(uri, model_uri, NAME, {"purpose": "smoke"}))
    tracking.end_run(uri, run_id)
    return uri, items["item_id"].to_list()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: str) -> tuple[int, str]:
    """(HTTP status, response text) of a JSON POST."""
    request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for_ping(base: str, server: subprocess.Popen, log_file: Path) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < PING_TIMEOUT_S:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n{log_file.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no /ping answer within {PING_TIMEOUT_S} s:\n{log_file.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """Stop the server's whole process group (uvicorn workers included): SIGTERM, then SIGKILL."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)


def message_of(text: str) -> str:
    try:
        return str(json.loads(text).get("message", text))
    except (json.JSONDecodeError, AttributeError):
        return text


def run_cases(base: str, ids: list[str]) -> list[str]:
    """Send the good and bad requests; the failures, as lines."""
    failures, rows = [], []
    good = {"dataframe_records": [{"history": ids[:3]}, {"history": [ids[5]], "source_history": [ids[6]]}],
            "params": {"k": 5}}
    body = json.dumps(good)
    print(f"\nequivalent curl:\ncurl -s -X POST {base}/invocations -H 'Content-Type: application/json' "
          f"-d {shlex.quote(body)}\n")
    status, text = post(f"{base}/invocations", body)
    print(f"good request -> {status}\n{text}\n")
    try:
        predictions = json.loads(text)["predictions"]
        for row, seen in zip(predictions, [ids[:3], ids[5:7]]):
            assert len(row["item_ids"]) == 5 and not set(row["item_ids"]) & set(seen), row
            assert row["scores"] == sorted(row["scores"], reverse=True), row
            # Reasons: per recommended item, items of this request's own history, best first.
            assert len(row["reason_item_ids"]) == len(row["reason_scores"]) == 5, row
            for reasons, evidence in zip(row["reason_item_ids"], row["reason_scores"]):
                assert set(reasons) <= set(seen) and len(reasons) == len(evidence) <= 3, row
                assert evidence == sorted(evidence, reverse=True), row
        assert any(predictions[0]["reason_item_ids"]), "no recommended item carries a reason"
        assert len(predictions) == 2
    except (AssertionError, KeyError, TypeError, json.JSONDecodeError) as error:
        failures.append(f"good request: {status} {text[:300]} ({error!r})")
    rows.append(("good (dataframe_records)", status, text))

    for case, payload in [
        ("good (inputs)", {"inputs": [{"history": ids[:2]}], "params": {"k": 3}}),
        ("good (dataframe_split)", {"dataframe_split": {"columns": ["history"], "data": [[ids[:2]]]}}),
    ]:
        status, text = post(f"{base}/invocations", json.dumps(payload))
        try:
            predictions = json.loads(text)["predictions"]
            assert status == 200 and len(predictions) == 1 and predictions[0]["item_ids"], text
        except (AssertionError, KeyError, TypeError, json.JSONDecodeError) as error:
            failures.append(f"{case}: {status} {text[:300]} ({error!r})")
        rows.append((case, status, text))

    bad = [
        ("unknown item id", json.dumps({"dataframe_records": [{"history": [ids[0], "no-such-item"]}]}), "no-such-item"),
        ("empty history", json.dumps({"dataframe_records": [{"history": []}]}), "empty history"),
        ("k=0", json.dumps({"dataframe_records": [{"history": ids[:2]}], "params": {"k": 0}}), "k"),
        ("k huge", json.dumps({"dataframe_records": [{"history": ids[:2]}], "params": {"k": 10**6}}), "k"),
        ("k not an int", json.dumps({"dataframe_records": [{"history": ids[:2]}], "params": {"k": 2.5}}), "k"),
        ("history not a list", json.dumps({"dataframe_records": [{"history": ids[0]}]}), "list"),
        ("ids not strings", json.dumps({"dataframe_records": [{"history": [1, 2]}]}), "string"),
        ("no history column", json.dumps({"dataframe_records": [{"items": ids[:2]}]}), "history"),
        ("wrong JSON shape", json.dumps({"history": ids[:2]}), ""),
        ("not JSON", "{history: [", ""),
    ]
    for case, body, expected in bad:
        status, text = post(f"{base}/invocations", body)
        message = message_of(text)
        if not 400 <= status < 500:
            failures.append(f"{case}: expected a 4xx status, got {status}: {text[:300]}")
        elif not message.strip() or "Traceback (most recent call last)" in message:
            failures.append(f"{case}: unreadable message: {message[:300]}")
        elif expected and expected not in message:
            failures.append(f"{case}: message does not mention {expected!r}: {message[:300]}")
        rows.append((case, status, text))

    print(f"{'case':<26} {'status':>6}  message (first 100 chars; MLflow's 'Failed to predict data ...' prefix cut)")
    for case, status, text in rows:
        shown = message_of(text).split("Error: ", 1)[-1] if status >= 400 else text
        print(f"{case:<26} {status:>6}  {' '.join(shown.split())[:100]}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary MLflow store and server log")
    args = parser.parse_args()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="itx-smoke-serving-"))
    uri, ids = build_champion(root)
    built = time.perf_counter() - started
    print(f"champion built and registered in {built:.1f} s ({uri})")

    port, venv_bin = free_port(), Path(sys.executable).parent
    env = os.environ | {"MLFLOW_TRACKING_URI": uri,
                        # `mlflow models serve` execs uvicorn through a shell: the venv's bin must be on PATH.
                        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(venv_bin / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@{ALIAS}", "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log_file = root / "server.log"
    base = f"http://127.0.0.1:{port}"
    failures: list[str] = []
    with open(log_file, "w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                  start_new_session=True)  # its own process group, stopped as a whole
        try:
            print(f"serving: {' '.join(command)}")
            print(f"/ping answered after {wait_for_ping(base, server, log_file):.1f} s")
            failures = run_cases(base, ids)
        except Exception as error:  # noqa: BLE001 (report, then fail)
            failures.append(f"{type(error).__name__}: {error}")
        finally:
            stop(server)
    print(f"\ntotal {time.perf_counter() - started:.1f} s; {'kept' if args.keep else 'removed'} {root}")
    if not args.keep:
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print("OK" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
