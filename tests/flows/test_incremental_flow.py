"""The registry and the incremental flow end to end: a pipeline run registers the champion, new events are
appended and the champion fine-tuned and gated, the same events again change nothing, and a worse
candidate is not promoted."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from conf.schema import EventLogConfig
from flows.pipeline import pipeline_flow
from flows.retrain import retrain_flow
from tasks.ops.registry import champion_version, registered_name

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def champion_run(tiny_config_factory):
    config = tiny_config_factory("train.max_epochs=2")
    return config, pipeline_flow(config)


def new_events_file(run_dir: Path, folder: Path) -> tuple[Path, int]:
    """150 users' next 4 events (one of them on a brand-new item), plus 20 events the store already holds."""
    events = pl.read_parquet(run_dir / "data" / "events.parquet")
    users = pl.read_parquet(run_dir / "data" / "users.parquet").sort("user_idx")["user_id"].to_list()
    items = pl.read_parquet(run_dir / "data" / "items.parquet").sort("item_idx")["item_id"].to_list()
    rng = np.random.default_rng(0)
    start = int(events["timestamp"].max()) + 100
    rows = [(user, items[rng.integers(len(items))] if j < 3 else f"new-item-{i % 7}", start + 10 * i + j)
            for i, user in enumerate(users[:150]) for j in range(4)]
    fresh = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")
    known = events.head(20).select(
        pl.col("user_idx").map_elements(lambda u: users[u - 1], return_dtype=pl.String).alias("user_id"),
        pl.col("item_idx").map_elements(lambda i: items[i - 1], return_dtype=pl.String).alias("item_id"),
        pl.col("timestamp"),
    )
    path = folder / "new_events.csv"
    pl.concat([fresh, known]).write_csv(path)
    return path, fresh.height


def test_the_pipeline_registers_its_exported_model_as_champion(champion_run):
    config, result = champion_run
    gate = json.loads((result.run_dir / "gate.json").read_text())
    assert gate["promoted"] and gate["reason"] == "no champion yet" and gate["registered_version"] == "1"
    version = champion_version(result.tracking_uri, registered_name(config), "champion")
    assert version is not None and str(version.version) == "1"
    assert (result.run_dir / "model" / "model.pt").exists()  # the served package, also in the run folder


def test_retrain_appends_new_events_finetunes_and_gates_then_skips_a_repeat(champion_run, tmp_path):
    config, first = champion_run
    batch, n_new = new_events_file(first.run_dir, tmp_path)
    result = retrain_flow(config, EventLogConfig(interactions=str(batch)), finetune_epochs=2)
    assert result.appended == n_new  # the 20 known events were skipped
    summary = json.loads((result.run_dir / "run.json").read_text())
    assert summary["event_store"]["new_items"] == 7
    decision = result.decision
    assert decision.champion is not None and decision.users > 0
    assert decision.promoted == (decision.candidate >= decision.champion)
    client = MlflowClient(first.tracking_uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["gate.decision"] == ("promoted" if decision.promoted else "rejected")
    assert run.data.metrics["gate/candidate"] == pytest.approx(decision.candidate)
    # The model's own curves show the fine-tune (at most 2 epochs) in its nested run.
    curves = client.get_metric_history(summary["model_run_ids"]["gru"], "curve/valid_ndcg_at_10")
    assert 1 <= len(curves) <= 2
    again = retrain_flow(config, EventLogConfig(interactions=str(batch)), finetune_epochs=2)
    assert again.appended == 0 and again.run_dir is None


def test_a_worse_candidate_is_not_promoted(champion_run, tiny_config_factory):
    config, first = champion_run
    before = champion_version(first.tracking_uri, registered_name(config), "champion").version
    # A learning rate this large wrecks the fine-tune: the gate must keep the champion.
    worse = config.model_copy(update={"train": config.train.model_copy(update={"learning_rate": 30.0})})
    result = retrain_flow(worse, None, finetune_epochs=1, force=True)
    assert not result.decision.promoted and result.version is None
    assert "worse than champion" in result.decision.reason
    assert champion_version(first.tracking_uri, registered_name(config), "champion").version == before
    assert json.loads((result.run_dir / "run.json").read_text())["recommendations"] is None


def test_retraining_a_title_reading_champion_gives_new_items_their_title_embeddings(tiny_config_factory, tmp_path):
    import torch

    from models.kinds import load_model

    config = tiny_config_factory("train.max_epochs=1", "models=[{kind: sasrec, name: sasrec, embedding_dim: 16, "
                                 "tie_output: true, item_text: true}]")
    first = pipeline_flow(config)
    batch, _ = new_events_file(first.run_dir, tmp_path)
    retrain_flow(config, EventLogConfig(interactions=str(batch)), finetune_epochs=1)
    [path] = Path(config.output.root).rglob("finetune-*/model.pt")
    candidate = load_model(path)
    items = pl.read_parquet(first.run_dir / "data" / "items.parquet").height  # the champion's catalogue
    assert candidate.n_items - 1 == items + 7  # the 7 new items
    new_rows = candidate.item_text[items + 1:]
    # Embedded like every other item (not left at the warm start's zeros) and on the same scale.
    assert (new_rows.norm(dim=1) > 0.5).all(), new_rows.norm(dim=1)
    assert torch.allclose(new_rows.norm(dim=1), candidate.item_text[1:items + 1].norm(dim=1).mean(), atol=0.5)
