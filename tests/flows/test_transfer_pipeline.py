"""Transfer runs end to end on the synthetic shop: real Prefect flow runs, MLflow runs and report files.

The shop plants what transfer needs (topics shared by groups and domains, sequels, topic drift), so with
5% of the target's data, pre-training on the source must beat training on the target alone, and a
cold-start mapping from books must beat target popularity for users with no movie history.
"""
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from conf.loading import load_config, preset_path
from flows.pipeline import pipeline_flow
from tasks.modelling.transfer_report import TRANSFER_GAIN_COLUMNS

SMALL_SHOP = ["data.synthetic.n_users=1500", "data.synthetic.n_items=300", "data.synthetic.n_topics=6",
              "data.synthetic.mean_events_per_user=20", "train.max_epochs=4", "train.batch_size=128",
              "train.progress_bar=false", "transfer.target_fractions=[0.05]", "transfer.bootstrap_samples=500",
              "export.top_k=10"]


def build(tmp_path_factory, preset: str, models: str, *overrides: str):
    root = tmp_path_factory.mktemp("transfer")
    return load_config(preset_path(preset), [
        *SMALL_SHOP, f"models={models}", f"output.root={root / 'outputs'}",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}", *overrides])


@pytest.fixture(scope="module")
def cross_group(tmp_path_factory):
    models = ("[{kind: popularity, name: pop_target, train_on: target},"
              " {kind: rnn, name: gru_target, train_on: target},"
              " {kind: rnn, name: gru_pooled, train_on: pooled},"
              " {kind: rnn, name: gru_finetune, train_on: source_then_target},"
              " {kind: bert_transfer, name: bert_finetune, train_on: source_then_target, init: scratch,"
              "  hidden_dim: 32, num_layers: 1}]")
    # Two fractions: every model is trained (and logged to MLflow) once per fraction, as `name:fraction`.
    config = build(tmp_path_factory, "shop_cross_group.yaml", models, "transfer.target_fractions=[0.05,1.0]")
    return config, pipeline_flow(config)


@pytest.fixture(scope="module")
def cross_domain(tmp_path_factory):
    models = ("[{kind: popularity, name: pop_target, train_on: target},"
              " {kind: rnn, name: gru_target, train_on: target},"
              " {kind: rnn, name: gru_pooled, train_on: pooled},"
              " {kind: emcdr, name: emcdr_gru, extractor: {kind: rnn}},"
              " {kind: ptupcdr, name: ptupcdr_gru, extractor: {kind: rnn}}]")
    # Cold start is about users, not data scarcity: every other user's movie history may be learnt from.
    config = build(tmp_path_factory, "shop_cross_domain.yaml", models, "transfer.cold_start_fraction=0.3",
                   "transfer.target_fractions=[1.0]")
    return config, pipeline_flow(config)


def gain_rows(result, metric="ndcg", k=10, baseline="gru_target", subset="all", fraction=None) -> dict[str, dict]:
    table = pl.read_csv(result.run_dir / "transfer_gain.csv")
    rows = table.filter((pl.col("metric") == metric) & (pl.col("k") == k) & (pl.col("subset") == subset)
                        & (pl.col("baseline_model") == baseline))
    if fraction is not None:
        rows = rows.filter(pl.col("target_fraction") == fraction)
    assert rows["model"].n_unique() == rows.height, "one row per model expected"
    return {row["model"]: row for row in rows.to_dicts()}


def test_transfer_gain_csv_is_tidy_and_logged_with_its_plot(cross_group):
    config, result = cross_group
    table = pl.read_csv(result.run_dir / "transfer_gain.csv")
    assert table.columns == TRANSFER_GAIN_COLUMNS
    assert set(table["baseline_model"].drop_nulls()) == {"gru_target", "gru_pooled"}
    roles = table.drop_nulls("baseline_model").select("baseline_model", "baseline_role").unique()
    assert dict(roles.iter_rows()) == {"gru_target": "target_only", "gru_pooled": "pooled"}
    model_roles = dict(table.select("model", "model_role").unique().iter_rows())
    assert model_roles["gru_finetune"] == "transfer" and model_roles["gru_pooled"] == "baseline"
    assert set(table["metric"]) == {"precision", "recall", "f1", "ndcg", "hit", "mrr"}
    assert set(table["target_fraction"]) == {0.05, 1.0}
    metrics = pl.read_csv(result.run_dir / "metrics.csv")
    assert {"gru_finetune:0.05", "gru_finetune:1"} <= set(metrics["model"])
    assert (result.run_dir / "transfer_gain_all.png").read_bytes().startswith(b"\x89PNG")
    artifacts = {a.path for a in MlflowClient(result.tracking_uri).list_artifacts(result.mlflow_run_id)}
    assert {"transfer_gain.csv", "transfer_gain_all.png", "transfer_gain.json"} <= artifacts
    client = MlflowClient(result.tracking_uri)
    children = client.search_runs([client.get_run(result.mlflow_run_id).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'")
    assert {run.data.tags["model"] for run in children} == {planned.label for planned in config.model_plan()}
    assert all("test/ndcg_at_10" in run.data.metrics for run in children)


def test_with_5_percent_target_data_transfer_beats_target_only(cross_group):
    _, result = cross_group
    rows = gain_rows(result, fraction=0.05)
    for model in ("gru_finetune", "bert_finetune"):
        assert rows[model]["ci_low"] > 0, rows[model]  # the whole 95% interval above the target-only GRU
    n_target_users = rows["gru_target"]["n_users"]
    users = pl.read_parquet(result.run_dir / "data" / "users.parquet")
    assert n_target_users == users.filter(pl.col("role") == "target").height  # every target user ranked


def test_cold_start_mapping_beats_target_popularity_for_cold_users(cross_domain):
    _, result = cross_domain
    cold = gain_rows(result, baseline="gru_target", subset="cold_start")
    assert set(cold) >= {"emcdr_gru", "ptupcdr_gru", "pop_target"}
    best_mapping = max(cold["emcdr_gru"]["value"], cold["ptupcdr_gru"]["value"])
    assert best_mapping > cold["pop_target"]["value"] * 1.2, cold
    assert cold["pop_target"]["n_users"] > 20


def test_cross_domain_ranks_users_whose_held_out_item_is_a_movie(cross_domain):
    _, result = cross_domain
    rows = gain_rows(result)
    metrics = pl.read_csv(result.run_dir / "metrics.csv")
    assert set(metrics["group"]) >= {"movies"}
    assert rows["gru_target"]["n_users"] > 0 and rows["gru_pooled"]["n_users"] == rows["gru_target"]["n_users"]
