"""Paired bootstrap gains, the transfer gain table, and its plot and text rendering."""
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conf.loading import load_config
from conf.schema import BaselineRole
from models.metrics import METRIC_NAMES
from tasks.modelling.transfer_report import (
    TRANSFER_GAIN_COLUMNS,
    TRANSFER_GAIN_SCHEMA,
    format_gain_table,
    format_gain_tables,
    paired_bootstrap_gain,
    plot_gain,
    transfer_gain_table,
)

ROOT = Path(__file__).resolve().parents[2]
KS = (10, 20)
METRIC_COLUMNS = [f"{metric}_at_{k}" for metric in METRIC_NAMES for k in KS]


def make_per_user(models: dict[tuple[float, str], dict[str, float]], n_users: int = 60, seed: int = 0) -> pl.DataFrame:
    """Per-user rows: for each (fraction, subset), each model's values = shared base * its factor."""
    rng = np.random.default_rng(seed)
    frames = []
    for (fraction, subset), factors in models.items():
        base = rng.uniform(0.1, 1.0, size=(n_users, len(METRIC_COLUMNS)))
        for model, factor in factors.items():
            noisy = base * factor + rng.normal(0, 0.05, size=base.shape)
            frames.append(pl.DataFrame({
                "model": [model] * n_users,
                "target_fraction": [fraction] * n_users,
                "subset": [subset] * n_users,
                "user_idx": np.arange(1, n_users + 1, dtype=np.int64),
                **{name: noisy[:, j] for j, name in enumerate(METRIC_COLUMNS)},
            }))
    return pl.concat(frames)


@pytest.fixture
def per_user() -> pl.DataFrame:
    """Two fractions of all users with two baselines; cold_start holds only the transfer model."""
    factors = {"target_only": 1.0, "pop": 0.8, "bert": 1.3}
    return make_per_user({(0.05, "all"): factors, (1.0, "all"): factors, (0.05, "cold_start"): {"bert": 1.0}})


# paired_bootstrap_gain ---------------------------------------------------------------------------

def test_exact_multiple_gives_its_gain_with_a_tight_interval():
    baseline = np.random.default_rng(3).uniform(0, 1, size=500)
    gain = paired_bootstrap_gain(baseline * 1.2, baseline)
    assert gain.rel_gain == pytest.approx(0.2)
    assert gain.ci_low == pytest.approx(0.2, abs=1e-9) and gain.ci_high == pytest.approx(0.2, abs=1e-9)
    assert gain.mean == pytest.approx(1.2 * baseline.mean()) and gain.baseline_mean == pytest.approx(baseline.mean())
    assert gain.n_users == 500


def test_noisy_ten_percent_gain_on_many_users_is_detected():
    rng = np.random.default_rng(4)
    baseline = rng.uniform(0.2, 1.0, size=2000)  # mean 0.6: adding 0.06 is a 10% gain
    values = baseline + 0.06 + rng.normal(0, 0.1, size=2000)
    gain = paired_bootstrap_gain(values, baseline)
    assert gain.ci_low < 0.10 < gain.ci_high
    assert gain.ci_low > 0
    assert gain.ci_high - gain.ci_low < 0.03


def test_identical_arrays_give_zero_gain_and_a_zero_interval():
    baseline = np.random.default_rng(5).uniform(0, 1, size=100)
    gain = paired_bootstrap_gain(baseline.copy(), baseline)
    assert (gain.rel_gain, gain.ci_low, gain.ci_high) == (0.0, 0.0, 0.0)


def test_pure_noise_on_few_users_gives_an_interval_around_zero():
    rng = np.random.default_rng(6)
    baseline = rng.uniform(0, 1, size=30)
    gain = paired_bootstrap_gain(baseline + rng.normal(0, 0.1, size=30), baseline)
    assert gain.ci_low < 0 < gain.ci_high
    assert gain.ci_high - gain.ci_low > 0.02  # an honest interval, not a collapsed one


def test_same_seed_repeats_the_interval_and_another_seed_moves_it_slightly():
    rng = np.random.default_rng(7)
    baseline = rng.uniform(0, 1, size=300)
    values = baseline * 1.05 + rng.normal(0, 0.1, size=300)
    first, again = paired_bootstrap_gain(values, baseline, seed=1), paired_bootstrap_gain(values, baseline, seed=1)
    other = paired_bootstrap_gain(values, baseline, seed=2)
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    assert other.ci_low == pytest.approx(first.ci_low, abs=0.02)
    assert other.ci_high == pytest.approx(first.ci_high, abs=0.02)
    assert other.rel_gain == first.rel_gain  # the point estimate uses no resampling


def test_chunked_draws_cover_every_sample():
    """More samples than one chunk holds: every sample is filled, so the interval is finite."""
    baseline = np.random.default_rng(8).uniform(0, 1, size=50)
    gain = paired_bootstrap_gain(baseline + 0.1, baseline, n_samples=450)
    assert np.isfinite([gain.ci_low, gain.ci_high]).all() and gain.ci_low > 0


def test_interval_covers_the_true_gain_in_most_simulated_datasets():
    rng = np.random.default_rng(9)
    true_gain, covered = 0.10, 0
    for seed in range(100):
        baseline = rng.exponential(0.5, size=200)
        values = baseline * (1 + true_gain) + rng.normal(0, 0.2, size=200)  # E[values]/E[baseline] = 1.1
        gain = paired_bootstrap_gain(values, baseline, n_samples=300, seed=seed)
        covered += gain.ci_low <= true_gain <= gain.ci_high
    assert covered >= 85


def test_zero_baseline_mean_gives_nan_gain_and_interval():
    gain = paired_bootstrap_gain(np.array([0.5, 0.2, 0.1]), np.zeros(3))
    assert np.isnan([gain.rel_gain, gain.ci_low, gain.ci_high]).all()


def test_resamples_with_zero_baseline_are_dropped_not_fatal():
    # A third of resamples miss the one user with a nonzero baseline; the rest still give a CI.
    gain = paired_bootstrap_gain(np.array([0.3, 0.1, 0.2, 2.0]), np.array([0.0, 0.0, 0.0, 1.0]))
    assert gain.rel_gain == pytest.approx(2.6 / 1.0 - 1)
    assert np.isfinite([gain.ci_low, gain.ci_high]).all()


def test_empty_or_unequal_arrays_are_rejected():
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap_gain(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="lengths 3 and 2"):
        paired_bootstrap_gain(np.ones(3), np.ones(2))


# transfer_gain_table -----------------------------------------------------------------------------

def test_table_has_the_documented_columns_and_types(per_user):
    table = transfer_gain_table(per_user, "synthetic", ["target_only", "pop"], n_samples=100)
    assert table.columns == TRANSFER_GAIN_COLUMNS
    assert table.schema == TRANSFER_GAIN_SCHEMA
    assert set(table["scenario"]) == {"synthetic"}
    assert set(zip(table["metric"], table["k"])) == {(m, k) for m in METRIC_NAMES for k in KS}


def test_each_model_gets_a_row_per_baseline_in_baseline_order(per_user):
    table = transfer_gain_table(per_user, "s", ["target_only", "pop"], n_samples=100)
    rows = table.filter((pl.col("subset") == "all") & (pl.col("model") == "bert")
                        & (pl.col("metric") == "ndcg") & (pl.col("k") == 10))
    assert rows["target_fraction"].to_list() == [0.05, 0.05, 1.0, 1.0]
    assert rows["baseline_model"].to_list() == ["target_only", "pop"] * 2  # given order, not alphabetical
    against_target, against_pop = rows.row(0, named=True), rows.row(1, named=True)
    assert against_target["rel_gain"] == pytest.approx(0.3, abs=0.05)
    assert against_pop["rel_gain"] == pytest.approx(1.3 / 0.8 - 1, abs=0.07)
    assert against_target["ci_low"] > 0.2 and against_target["n_users"] == 60


def test_baseline_keeps_its_own_row_with_zero_gain(per_user):
    table = transfer_gain_table(per_user, "s", ["target_only", "pop"], n_samples=100)
    own = table.filter((pl.col("model") == "target_only") & (pl.col("baseline_model") == "target_only"))
    assert own.height == 2 * len(METRIC_COLUMNS)
    assert (own["value"] == own["baseline_value"]).all()
    assert (own["rel_gain"] == 0).all() and (own["ci_low"] == 0).all() and (own["ci_high"] == 0).all()


def test_group_without_baselines_keeps_the_model_with_null_baseline_columns(per_user):
    table = transfer_gain_table(per_user, "s", ["target_only", "pop"], n_samples=100)
    cold = table.filter(pl.col("subset") == "cold_start")
    assert cold.height == len(METRIC_COLUMNS) and set(cold["model"]) == {"bert"}
    for column in ["baseline_model", "baseline_value", "rel_gain", "ci_low", "ci_high"]:
        assert cold[column].null_count() == cold.height, column
    expected = per_user.filter(pl.col("subset") == "cold_start")["ndcg_at_10"].mean()
    assert cold.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10))["value"].item() == pytest.approx(expected)
    assert (cold["n_users"] == 60).all()


def test_row_order_of_per_user_does_not_change_the_table(per_user):
    table = transfer_gain_table(per_user, "s", ["target_only", "pop"], n_samples=100)
    shuffled = per_user.sample(fraction=1.0, shuffle=True, seed=11)
    assert shuffled["user_idx"].to_list() != per_user["user_idx"].to_list()
    assert transfer_gain_table(shuffled, "s", ["target_only", "pop"], n_samples=100).equals(table)


def test_users_pair_by_user_idx_and_unpaired_users_are_ignored(per_user):
    group = per_user.filter((pl.col("target_fraction") == 1.0) & (pl.col("subset") == "all"))
    extra = group.filter((pl.col("model") == "bert") & (pl.col("user_idx") == 1)).with_columns(
        pl.lit(999, dtype=pl.Int64).alias("user_idx"), pl.lit(50.0).alias("ndcg_at_10"))
    table = transfer_gain_table(pl.concat([group, extra]), "s", ["target_only"], n_samples=200, seed=3)
    row = table.filter((pl.col("model") == "bert") & (pl.col("metric") == "ndcg") & (pl.col("k") == 10)).row(
        0, named=True)
    bert = group.filter(pl.col("model") == "bert").sort("user_idx")["ndcg_at_10"].to_numpy()
    target = group.filter(pl.col("model") == "target_only").sort("user_idx")["ndcg_at_10"].to_numpy()
    expected = paired_bootstrap_gain(bert, target, n_samples=200, seed=3)
    assert row["n_users"] == 60
    assert row["value"] == pytest.approx(bert.mean())  # the outlier user 999 would pull this above 0.8
    assert (row["rel_gain"], row["ci_low"], row["ci_high"]) == pytest.approx(
        (expected.rel_gain, expected.ci_low, expected.ci_high))


def test_missing_metric_columns_are_named(per_user):
    with pytest.raises(ValueError, match=r"mrr_at_20.*"):
        transfer_gain_table(per_user.drop("mrr_at_20", "hit_at_20"), "s", ["target_only"])
    with pytest.raises(ValueError, match="hit_at_20"):
        transfer_gain_table(per_user.drop("mrr_at_20", "hit_at_20"), "s", ["target_only"])


def test_missing_key_columns_are_named(per_user):
    with pytest.raises(ValueError, match="user_idx"):
        transfer_gain_table(per_user.drop("user_idx"), "s", ["target_only"])


def test_duplicate_users_are_rejected(per_user):
    with pytest.raises(ValueError, match="cannot be paired"):
        transfer_gain_table(pl.concat([per_user, per_user.head(1)]), "s", ["target_only"])


def with_split(frame: pl.DataFrame, split: str) -> pl.DataFrame:
    return frame.with_columns(pl.lit(split).alias("split"))


def pooled_contest() -> pl.DataFrame:
    """Two pooled candidates whose validation and test disagree, in opposite ways at the two fractions."""
    test = make_per_user({(0.05, "all"): {"target_only": 1.0, "gru_pooled": 1.2, "sasrec_pooled": 1.5, "dsr": 1.6},
                          (1.0, "all"): {"target_only": 1.0, "gru_pooled": 1.5, "sasrec_pooled": 1.2, "dsr": 1.6}})
    valid = make_per_user({(0.05, "all"): {"gru_pooled": 1.4, "sasrec_pooled": 1.0},
                           (1.0, "all"): {"gru_pooled": 1.0, "sasrec_pooled": 1.4}}, seed=1)
    return pl.concat([with_split(test, "test"), with_split(valid, "valid")])


def test_the_pooled_baseline_is_the_best_candidate_on_target_validation_per_fraction_never_on_test():
    roles = [BaselineRole("target_only", ("target_only",)), BaselineRole("pooled", ("gru_pooled", "sasrec_pooled"))]
    table = transfer_gain_table(pooled_contest(), "s", roles, n_samples=100, transfer_models={"dsr"})
    rows = table.filter((pl.col("model") == "dsr") & (pl.col("metric") == "ndcg") & (pl.col("k") == 10))
    chosen = {(r["target_fraction"], r["baseline_role"]): r["baseline_model"] for r in rows.iter_rows(named=True)}
    # Validation picks gru at 5% and sasrec at 100%, although test would have picked the other one each time.
    assert chosen == {(0.05, "target_only"): "target_only", (0.05, "pooled"): "gru_pooled",
                      (1.0, "target_only"): "target_only", (1.0, "pooled"): "sasrec_pooled"}
    assert set(table["subset"]) == {"all"}  # validation rows choose; they are never reported
    assert set(zip(table["model"], table["model_role"])) == {
        ("dsr", "transfer"), ("target_only", "baseline"), ("gru_pooled", "baseline"), ("sasrec_pooled", "baseline")}


def test_without_validation_rows_the_first_candidate_present_plays_the_role():
    test = with_split(pooled_contest().filter(pl.col("split") == "test"), "test")
    table = transfer_gain_table(test, "s", [BaselineRole("pooled", ("absent", "sasrec_pooled", "gru_pooled"))],
                                n_samples=100)
    assert set(table["baseline_model"]) == {"sasrec_pooled"}


def test_format_gain_tables_prints_one_table_per_baseline_role():
    roles = [BaselineRole("target_only", ("target_only",)), BaselineRole("pooled", ("gru_pooled", "sasrec_pooled"))]
    text = format_gain_tables(transfer_gain_table(pooled_contest(), "s", roles, n_samples=100, transfer_models={"dsr"}))
    assert "relative to target_only" in text and "relative to pooled" in text
    assert "dsr (transfer)" in text


def test_the_config_names_each_baseline_role_and_its_candidates():
    config = load_config(ROOT / "conf" / "ml1m_transfer.yaml")
    roles = {role.role: role.candidates for role in config.transfer_baselines()}
    assert roles["target_only"] == ("gru_target",)
    # No named pooled baseline: every pooled model that is not a transfer method competes, of any kind.
    assert set(roles["pooled"]) == {"itemknn", "gru_pooled", "sasrec_pooled"}
    assert roles["itemknn"] == ("itemknn",)
    assert [role.role for role in config.transfer_baselines()] == ["target_only", "pooled", "itemknn"]
    assert not set(roles["pooled"]) & set(config.transfer_methods())  # a transfer method is never a baseline
    # A named one fixes the role instead of the contest.
    named = config.model_copy(update={"transfer": config.transfer.model_copy(update={"pooled_baseline": "gru_pooled"})})
    assert {role.role: role.candidates for role in named.transfer_baselines()}["pooled"] == ("gru_pooled",)


def test_a_pooled_model_reading_item_text_is_a_transfer_method_not_a_pooled_baseline():
    config = load_config(ROOT / "conf" / "food_kitchen_transfer.yaml",
                         ["models.3.item_text=true", "models.3.name=sasrec_text"])
    assert "sasrec_text" in config.transfer_methods()
    roles = {role.role: role.candidates for role in config.transfer_baselines()}
    assert "sasrec_text" not in roles["pooled"]


# plot_gain and format_gain_table -----------------------------------------------------------------

def test_plot_writes_a_png_and_leaves_no_temporary_file(per_user, tmp_path):
    table = transfer_gain_table(per_user, "s", ["target_only", "pop"], n_samples=50)
    path = plot_gain(table, tmp_path / "plots" / "gain.png")
    assert path == tmp_path / "plots" / "gain.png"
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000
    assert [p.name for p in path.parent.iterdir()] == ["gain.png"]


def test_plot_of_a_single_fraction_is_a_forest_of_models(per_user, tmp_path):
    table = transfer_gain_table(per_user, "s", ["target_only", "pop"], n_samples=50)
    one = table.filter(pl.col("target_fraction") == table["target_fraction"].min())
    path = plot_gain(one, tmp_path / "forest.png")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000


def test_plot_without_data_still_writes_a_figure(tmp_path):
    empty = pl.DataFrame(schema=TRANSFER_GAIN_SCHEMA)
    path = plot_gain(empty, tmp_path / "empty.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["empty.png"]


def test_text_table_marks_intervals_that_exclude_zero(per_user):
    table = transfer_gain_table(per_user, "s", ["target_only", "pop"], n_samples=100)
    lines = format_gain_table(table, metric="ndcg", k=10).splitlines()
    body = {tuple(line.split()[:3]): line for line in lines[2:]}
    assert len(body) == 7  # 3 models x 2 fractions of "all", plus bert on cold_start
    assert body[("0.05", "all", "bert")].endswith("*")        # clear 30% gain over target_only
    assert not body[("0.05", "all", "target_only")].endswith("*")  # CI [0, 0] excludes nothing
    assert "target_only" in body[("1", "all", "pop")] and "-" in body[("0.05", "cold_start", "bert")].split()
    against_pop = format_gain_table(table, metric="ndcg", k=10, baseline="pop")
    assert "target_only" not in " ".join(line.split()[4] for line in against_pop.splitlines()[2:])
