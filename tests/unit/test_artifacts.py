"""The run summary's rendering (Prefect artifacts), the metrics bar chart, and the pre-training schedule."""
from pathlib import Path

import polars as pl
import pytest

from conf.schema import PipelineConfig
from flows.runners import pretraining_leaders
from tasks.ops.artifacts import artifact_key, markdown_table, metric_rows, mlflow_run_url, render_run_summary
from tasks.modelling.export import ExportedRecommendations
from tasks.io import TableRef
from tasks.ops.plots import plot_model_metrics
from tasks.modelling.transfer_report import TRANSFER_GAIN_COLUMNS

METRICS = ["precision", "recall", "f1", "ndcg", "hit", "mrr"]


def tidy_metrics(values: dict[str, float], ks=(5, 10), groups=("F", "M")) -> pl.DataFrame:
    """metrics.csv rows: each model's value is its base times (1 + metric index / 10) times k / 10; groups 0.9x/1.1x."""
    rows = []
    for model, base in values.items():
        for split in ("valid", "test"):
            for k in ks:
                for i, metric in enumerate(METRICS):
                    value = base * (1 + i / 10) * k / 10
                    rows.append(("pooled", model, split, "all", metric, k, value))
                    rows += [("pooled", model, split, group, metric, k, value * factor)
                             for group, factor in zip(groups, (0.9, 1.1))]
    return pl.DataFrame(rows, schema={"scenario": pl.String, "model": pl.String, "split": pl.String,
                                      "group": pl.String, "metric": pl.String, "k": pl.Int32, "value": pl.Float64},
                        orient="row")


def test_artifact_key_keeps_only_lowercase_letters_digits_and_single_dashes():
    assert artifact_key("itx", "Shop_Cross group@v2") == "itx-shop-cross-group-v2"
    assert artifact_key("itx", "tiny", "metrics") == "itx-tiny-metrics"
    assert artifact_key("--") == "run"


def test_metric_rows_give_one_row_per_model_with_the_test_values_at_k_and_group_ndcg():
    rows = metric_rows(tidy_metrics({"popularity": 0.1, "gru": 0.2}), k=10)
    assert [row["model"] for row in rows] == ["popularity", "gru"]
    gru = rows[1]
    assert list(gru) == ["model", "NDCG", "HR", "MRR", "P", "R", "F1", "NDCG F", "NDCG M"]
    assert gru["P"] == pytest.approx(0.2)  # precision: metric index 0, k=10
    assert gru["NDCG"] == pytest.approx(0.26)  # ndcg: index 3
    assert gru["NDCG F"] == pytest.approx(0.234) and gru["NDCG M"] == pytest.approx(0.286)


def test_metric_rows_without_k_cover_every_k_of_the_test_split():
    rows = metric_rows(tidy_metrics({"gru": 0.2}))
    assert [(row["model"], row["k"]) for row in rows] == [("gru", 5), ("gru", 10)]
    assert rows[0]["P"] == pytest.approx(0.1)


def test_markdown_table_right_aligns_numbers_and_shows_missing_values_as_dashes():
    text = markdown_table([{"model": "gru", "NDCG": 0.12345, "HR": None}, {"model": "a|b", "NDCG": 0.5, "HR": 1.0}])
    assert text.splitlines() == ["| model | NDCG | HR |", "|---|---:|---:|", "| gru | 0.1235 | - |",
                                 "| a\\|b | 0.5000 | 1.0000 |"]


def summary(gain: pl.DataFrame | None = None, tracking_uri: str = "sqlite:////srv/itx-stores/mlflow.db") -> str:
    exported = ExportedRecommendations("gru", TableRef("/runs/r1/recommendations.parquet", "f"),
                                       TableRef("/runs/r1/recommendations.csv", "f"), 200)
    return render_run_summary("tiny-r1", Path("/runs/r1"), PipelineConfig(name="tiny"),
                              tidy_metrics({"popularity": 0.1, "gru": 0.2}), exported, "abc123", tracking_uri,
                              ("7", "interest-transfer"), gain)


def test_run_summary_names_the_run_export_and_mlflow_run_and_tabulates_test_metrics_at_10():
    text = summary()
    assert text.startswith("# Run `tiny-r1`")
    assert "`/runs/r1`" in text and "`gru`: top-20 recommendations, 200 rows" in text
    assert "`abc123` in experiment `interest-transfer` (id 7)" in text
    assert ("(http://127.0.0.1:5000/#/experiments/7/runs/abc123?workflowType=machine_learning) (while `mlflow ui --backend-store-uri "
            "sqlite:////srv/itx-stores/mlflow.db` runs)") in text
    assert "## Test metrics at K=10" in text
    assert "| model | NDCG | HR | MRR | P | R | F1 | NDCG F | NDCG M |" in text
    assert "| gru | 0.2600 | 0.2800 | 0.3000 | 0.2000 | 0.2200 | 0.2400 | 0.2340 | 0.2860 |" in text
    assert "Transfer gain" not in text


def test_run_summary_points_at_make_mlflow_ui_for_the_store_in_the_working_folder(tmp_path, monkeypatch):
    # The store beside the Makefile is the one `make mlflow-ui` serves; any other store needs its own command.
    monkeypatch.chdir(tmp_path)
    text = summary(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "(while `make mlflow-ui` runs)" in text and "--backend-store-uri" not in text


def test_run_summary_links_a_tracking_server_to_its_own_ui():
    text = summary(tracking_uri="http://mlflow.internal:5000/")
    assert "(http://mlflow.internal:5000/#/experiments/7/runs/abc123?workflowType=machine_learning)" in text
    assert mlflow_run_url("http://h:1/", "2", "r") == "http://h:1/#/experiments/2/runs/r?workflowType=machine_learning"


def test_run_summary_shows_the_transfer_gain_table_when_there_is_one():
    gain = pl.DataFrame([("cross_group", "gru_finetune", "transfer", 0.05, "all", "ndcg", 10, 0.3, "gru_target",
                          "target_only", 0.2, 0.5, 0.1, 0.9, 100)], schema=TRANSFER_GAIN_COLUMNS, orient="row")
    text = summary(gain)
    assert "## Transfer gain" in text
    assert "gru_finetune (transfer)  0.3000  gru_target  0.2000    +50.0" in text


def test_metrics_bar_chart_is_a_png_written_without_temporary_files(tmp_path):
    path = plot_model_metrics(tidy_metrics({"popularity": 0.1, "gru": 0.2, "caser": 0.15}), tmp_path / "m.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]
    empty = plot_model_metrics(tidy_metrics({}).clear(), tmp_path / "empty.png")
    assert empty.read_bytes().startswith(b"\x89PNG")


def test_later_fractions_of_a_source_then_target_model_wait_for_its_first_pre_training():
    config = PipelineConfig.model_validate({
        "scenario": {"name": "cross_group"},
        "transfer": {"target_fractions": [0.1, 0.5, 1.0]},
        "models": [{"kind": "popularity", "name": "pop", "train_on": "target"},
                   {"kind": "rnn", "name": "ft", "train_on": "source_then_target"},
                   {"kind": "rnn", "name": "tgt", "train_on": "target"}],
    })
    assert pretraining_leaders(config.model_plan()) == {"ft:0.5": "ft:0.1", "ft:1": "ft:0.1"}


def test_summary_line_names_every_model_with_its_test_ndcg_the_export_and_where_the_rest_is(tmp_path):
    from tasks.ops.artifacts import summary_line
    from tasks.io import open_cache_dir
    from tasks.ops.runs import RunContext

    run = RunContext("tiny-1", tmp_path / "tiny-1", open_cache_dir(tmp_path / "cache"), "sqlite:///x.db", "abc123")
    exported = ExportedRecommendations("gru", TableRef("r.parquet", "f"), TableRef("r.csv", "f"), 20)
    line = summary_line(run, tidy_metrics({"popularity": 0.1, "gru": 0.2}), exported, "itx-tiny")
    assert line == (f"run tiny-1 finished: test NDCG@10 popularity 0.1300, gru 0.2600; exported gru; "
                    f"folder {tmp_path / 'tiny-1'}; MLflow run abc123; summary: artifact itx-tiny")
