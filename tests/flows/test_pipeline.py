"""The real pipeline end to end on the tiny synthetic shop: Prefect flow runs, MLflow runs, files."""
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal
import pytest
from mlflow.tracking import MlflowClient

from conf.loading import load_config
from flows.pipeline import pipeline_flow
from tasks.io import TableRef

METRICS_COLUMNS = ["scenario", "model", "split", "group", "metric", "k", "value"]


@pytest.fixture(scope="module")
def finished_run(tiny_config_factory):
    config = tiny_config_factory()
    return config, pipeline_flow(config)


def test_run_folder_holds_the_output_contract(finished_run):
    config, result = finished_run
    names = {path.name for path in result.run_dir.iterdir()}
    assert {"config.yaml", "metrics.csv", "recommendations.parquet", "recommendations.csv", "run.json", "data"} <= names
    assert not [p for p in result.run_dir.rglob("*") if p.name.endswith(".tmp")], "half-written files left behind"
    assert load_config(result.run_dir / "config.yaml") == config


def test_metrics_csv_is_tidy_with_every_metric_k_split_and_group(finished_run):
    config, result = finished_run
    metrics = pl.read_csv(result.run_dir / "metrics.csv")
    assert metrics.columns == METRICS_COLUMNS
    assert set(metrics["metric"]) == {"precision", "recall", "f1", "ndcg", "hit", "mrr"}
    assert set(metrics["k"]) == set(config.evaluation.ks)
    assert set(metrics["split"]) == {"valid", "test"}
    assert set(metrics["group"]) == {"all", "F", "M"}
    assert set(metrics["model"]) == set(config.model_names())
    assert metrics["value"].is_between(0, 1).all()


def test_extractors_beat_popularity_on_the_planted_structure(finished_run):
    _, result = finished_run
    metrics = pl.read_csv(result.run_dir / "metrics.csv")
    ndcg = dict(
        metrics.filter((pl.col("split") == "test") & (pl.col("group") == "all") & (pl.col("metric") == "ndcg")
                       & (pl.col("k") == 10)).select("model", "value").iter_rows()
    )
    assert ndcg["gru"] > ndcg["popularity"] + 0.03, ndcg
    assert ndcg["caser"] > ndcg["popularity"] + 0.03, ndcg


def test_export_has_top_k_unseen_items_for_every_user_in_raw_ids(finished_run):
    config, result = finished_run
    recommendations = pl.read_parquet(result.run_dir / "recommendations.parquet")
    data = result.run_dir / "data"
    users, items = pl.read_parquet(data / "users.parquet"), pl.read_parquet(data / "items.parquet")
    seen = (pl.read_parquet(data / "events.parquet").join(users, on="user_idx").join(items, on="item_idx")
            .select("user_id", "item_id"))
    assert recommendations.columns == ["user_id", "item_id", "rank", "score", "reason_item_ids", "reason_scores"]
    assert recommendations["user_id"].n_unique() == users.height
    per_user = recommendations.group_by("user_id").agg(pl.col("rank").sort())
    assert per_user["rank"].to_list() == [list(range(1, config.export.top_k + 1))] * users.height
    assert recommendations.join(seen, on=["user_id", "item_id"]).is_empty(), "a seen item was recommended"
    assert set(recommendations["item_id"]) <= set(items["item_id"])
    assert pl.read_csv(result.run_dir / "recommendations.csv").height == recommendations.height
    # Reasons: items of that user's own history, at most three, best first.
    reasons = recommendations.select("user_id", pl.col("reason_item_ids").alias("item_id")).explode("item_id")
    reasons = reasons.drop_nulls()
    assert reasons.height > 0, "no recommendation carries a reason"
    assert reasons.join(seen, on=["user_id", "item_id"], how="anti").is_empty(), "a reason outside the history"
    assert (recommendations["reason_item_ids"].list.len() <= 3).all()
    assert (recommendations["reason_scores"].list.eval(pl.element().diff() <= 0).list.all()).all()


def test_mlflow_run_has_params_metrics_artifacts_and_nested_model_runs_with_curves(finished_run):
    config, result = finished_run
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["split.protocol"] == config.split.protocol
    assert run.data.metrics["test/gru/ndcg_at_10"] > 0
    assert "test/caser/F/ndcg_at_10" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
    assert {"config.yaml", "metrics.csv", "recommendations.parquet", "run.json"} <= artifacts

    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'")
    by_model = {child.data.tags["model"]: child for child in children}
    assert set(by_model) == set(config.model_names())
    gru = by_model["gru"]
    curve = client.get_metric_history(gru.info.run_id, "curve/valid_ndcg_at_10")
    assert len(curve) == gru.data.metrics["train/epochs"] == config.train.max_epochs
    assert gru.data.metrics["test/ndcg_at_10"] == run.data.metrics["test/gru/ndcg_at_10"]


def test_rerun_with_the_same_config_reuses_cached_stages_and_gives_the_same_metrics(finished_run, tiny_config_factory):
    config, first = finished_run
    again = pipeline_flow(config.model_copy(update={"output": config.output.model_copy(update={"run_name": "again"})}))
    assert again.run_dir != first.run_dir
    assert again.prepared == first.prepared  # same split files, same fingerprints
    assert_frame_equal(pl.read_csv(again.metrics.path), pl.read_csv(first.metrics.path))
    client = MlflowClient(again.tracking_uri)
    gru_run = client.get_run(next(iter(
        r for r in client.search_runs([client.get_run(again.mlflow_run_id).info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{again.mlflow_run_id}'")
        if r.data.tags["model"] == "gru")).info.run_id)
    # Training was a cache hit: the new model run points back to the run that trained it.
    assert gru_run.data.tags["trained_in_run_id"] != gru_run.info.run_id


def test_table_refs_point_at_existing_files(finished_run):
    _, result = finished_run
    for ref in (result.metrics, result.prepared.sequences, result.recommendations.parquet):
        assert isinstance(ref, TableRef) and Path(ref.path).is_file()


def test_deleting_the_output_folder_invalidates_cached_stages(tiny_config_factory):
    import shutil

    config = tiny_config_factory("train.max_epochs=1")
    first = pipeline_flow(config)
    shutil.rmtree(Path(config.output.root))  # what `make clean` does; Prefect's records survive
    second = pipeline_flow(config)  # would fail reading deleted files if the old records matched
    assert Path(second.prepared.sequences.path).is_file()
    assert (second.run_dir / "metrics.csv").is_file()
    assert not first.run_dir.exists()
