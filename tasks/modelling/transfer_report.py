"""Transfer gains: each model's metrics relative to target-only baselines, with paired bootstrap CIs.

Models at the same (target_fraction, subset) are scored on the same users, so gains are estimated
per user-paired resamples: a user drawn into a resample brings both their model value and their
baseline value, which removes the between-user variance that unpaired intervals would carry.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from conf.schema import BaselineRole
from models.metrics import METRIC_NAMES
from tasks.io import atomic_path

logger = logging.getLogger(__name__)

TRANSFER_GAIN_COLUMNS = ["scenario", "model", "model_role", "target_fraction", "subset", "metric", "k", "value",
                         "baseline_model", "baseline_role", "baseline_value", "rel_gain", "ci_low", "ci_high",
                         "n_users"]
TRANSFER_GAIN_SCHEMA = pl.Schema({
    "scenario": pl.String, "model": pl.String, "model_role": pl.String, "target_fraction": pl.Float64,
    "subset": pl.String, "metric": pl.String, "k": pl.Int32, "value": pl.Float64, "baseline_model": pl.String,
    "baseline_role": pl.String, "baseline_value": pl.Float64, "rel_gain": pl.Float64, "ci_low": pl.Float64,
    "ci_high": pl.Float64, "n_users": pl.Int64,
})
KEY_COLUMNS = ["model", "target_fraction", "subset", "user_idx"]
VALID_SPLIT, TEST_SPLIT = "valid", "test"  # per-user rows' `split`: valid rows only choose among baseline candidates
METRIC_COLUMN = re.compile(r"^(?P<metric>.+)_at_(?P<k>\d+)$")
# Index matrices are drawn in chunks of at most this many samples and this many cells, so memory
# stays bounded (~32 MB per buffer) however many users or samples are asked for.
MAX_CHUNK_SAMPLES = 200
MAX_CHUNK_CELLS = 1 << 22


@dataclass(frozen=True)
class GainEstimate:
    """Relative gain mean(values)/mean(baseline) - 1, its percentile CI, and the means behind it."""

    rel_gain: float
    ci_low: float
    ci_high: float
    mean: float
    baseline_mean: float
    n_users: int


def paired_bootstrap_gain(values: np.ndarray, baseline: np.ndarray, n_samples: int = 1000, seed: int = 0,
                          level: float = 0.95) -> GainEstimate:
    """Relative gain of `values` over `baseline` (same users, same order) with a paired bootstrap CI.

    Resamples that leave the baseline mean at 0 are undefined and dropped from the percentiles; when
    more than half are undefined the CI is nan. A baseline mean of 0 gives a nan gain.
    """
    values = np.asarray(values, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    if values.ndim != 1 or baseline.ndim != 1:
        raise ValueError(f"values and baseline must be 1-D arrays; got shapes {values.shape} and {baseline.shape}")
    gains = _paired_bootstrap_gains(values[:, None], baseline[:, None], n_samples, seed, level)
    return gains[0]


def _paired_bootstrap_gains(values: np.ndarray, baseline: np.ndarray, n_samples: int, seed: int,
                            level: float) -> list[GainEstimate]:
    """One GainEstimate per column of values/baseline [N, M], all columns sharing the same resamples.

    Column j equals paired_bootstrap_gain(values[:, j], baseline[:, j]) for the same seed: the index
    stream depends only on the seed and N, so computing metrics together changes nothing but speed.
    """
    if values.shape != baseline.shape:
        raise ValueError(f"values and baseline must pair user by user; got lengths {values.shape[0]} "
                         f"and {baseline.shape[0]}")
    n_users = values.shape[0]
    if n_users == 0:
        raise ValueError("values and baseline are empty: no users to bootstrap over")
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1; got {n_samples}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1; got {level}")
    if not (np.isfinite(values).all() and np.isfinite(baseline).all()):
        raise ValueError("values and baseline must be finite; found NaN or inf")

    both = np.concatenate([values, baseline], axis=1)  # [N, 2M]
    n_metrics = values.shape[1]
    means = both.mean(axis=0)
    point = _relative_gain(means[:n_metrics], means[n_metrics:])

    rng = np.random.default_rng(seed)
    chunk = max(1, min(MAX_CHUNK_SAMPLES, MAX_CHUNK_CELLS // n_users))
    samples = np.empty((n_samples, n_metrics))
    for start in range(0, n_samples, chunk):
        size = min(chunk, n_samples - start)
        drawn = rng.integers(0, n_users, size=(size, n_users))  # [S, N] user positions
        # How often each user is drawn in each resample; counts @ values gives resampled sums.
        offsets = (np.arange(size) * n_users)[:, None]
        counts = np.bincount((drawn + offsets).ravel(), minlength=size * n_users).reshape(size, n_users)
        sums = counts.astype(np.float64) @ both  # [S, 2M]
        samples[start:start + size] = _relative_gain(sums[:, :n_metrics], sums[:, n_metrics:])

    tail = 100 * (1 - level) / 2
    estimates = []
    for j in range(n_metrics):
        column = samples[:, j]
        if np.isnan(column).sum() * 2 > n_samples:
            low = high = math.nan
        else:
            low, high = np.nanpercentile(column, [tail, 100 - tail])
        estimates.append(GainEstimate(float(point[j]), float(low), float(high), float(means[j]),
                                      float(means[n_metrics + j]), n_users))
    return estimates


def _relative_gain(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator - 1, nan where the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator != 0, numerator / np.where(denominator != 0, denominator, 1) - 1, np.nan)


def metric_columns(per_user: pl.DataFrame) -> list[tuple[str, str, int]]:
    """(column, metric, k) of every `<metric>_at_<k>` column, checking each metric exists at each k.

    Raises ValueError naming the missing columns when some metric lacks a k that another has.
    """
    found = [(name, match["metric"], int(match["k"]))
             for name in per_user.columns if (match := METRIC_COLUMN.match(name))]
    ks = sorted({k for _, _, k in found})
    expected = [f"{metric}_at_{k}" for metric in METRIC_NAMES for k in ks] if ks else \
        [f"{metric}_at_<k>" for metric in METRIC_NAMES]
    missing = [name for name in expected if name not in per_user.columns]
    if missing:
        raise ValueError(f"per_user lacks metric columns {missing}; found columns {per_user.columns}")
    return sorted(found, key=lambda found_column: (found_column[1], found_column[2]))


def transfer_gain_table(per_user: pl.DataFrame, scenario: str, baselines: list[BaselineRole | str],
                        n_samples: int = 1000, seed: int = 0, transfer_models: Collection[str] = ()) -> pl.DataFrame:
    """Tidy TRANSFER_GAIN_COLUMNS rows: each model's mean per metric against each baseline in its group.

    Groups are (target_fraction, subset). Each baseline is a role (`baseline_role`) played by one of its
    candidate models: with several, by the candidate with the best mean NDCG@10 (or the metric's largest K
    under 10) on the target's validation users at that target fraction (per-user rows whose `split` is
    valid); without validation rows, by the first candidate present. A plain name is a role of its own
    name. Users pair by user_idx (inner join): `value` and `baseline_value` are means over the paired
    users and `n_users` counts them. A baseline against itself keeps its row (gain 0, CI [0, 0]) so its
    own value appears. In a group holding none of the baselines, each model gets one row per metric with
    null baseline columns and `n_users` its own user count; a model sharing no users with a baseline gets
    null gains and `n_users` 0. `baselines[0]` is the primary baseline. `model_role` is transfer for the
    models in `transfer_models`, baseline otherwise. Every comparison uses the same seed, so models are
    compared on common resamples.
    """
    missing = [name for name in KEY_COLUMNS if name not in per_user.columns]
    if missing:
        raise ValueError(f"per_user lacks columns {missing}; found columns {per_user.columns}")
    if not baselines:
        raise ValueError("baselines is empty: name at least the target-only model")
    roles = [BaselineRole(b, (b,)) if isinstance(b, str) else b for b in baselines]
    columns = metric_columns(per_user)
    names = [name for name, _, _ in columns]
    valid = per_user.filter(pl.col("split") == VALID_SPLIT) if "split" in per_user.columns else per_user.clear()
    test = per_user.filter(pl.col("split") != VALID_SPLIT) if "split" in per_user.columns else per_user
    frame = test.select(KEY_COLUMNS + names).with_columns(
        pl.col("target_fraction").cast(pl.Float64), pl.col(names).cast(pl.Float64))
    nulls = [name for name in KEY_COLUMNS + names if frame[name].null_count()]
    if nulls:
        raise ValueError(f"per_user has nulls in columns {nulls}")
    duplicates = frame.filter(pl.struct(KEY_COLUMNS).is_duplicated())
    if duplicates.height:
        raise ValueError(f"per_user has {duplicates.height} rows sharing (model, target_fraction, subset, user_idx), "
                         f"so users cannot be paired; first: {duplicates.row(0, named=True)}")
    selection = selection_metric(columns)

    rows: list[dict] = []
    for (fraction, subset), group in frame.partition_by("target_fraction", "subset", as_dict=True).items():
        by_model = {model: part.drop("model", "target_fraction", "subset").sort("user_idx")
                    for (model,), part in group.partition_by("model", as_dict=True).items()}
        present = [(role.role, chosen) for role in roles
                   if (chosen := best_candidate(role, by_model, valid, fraction, selection)) is not None]
        context = {"scenario": scenario, "target_fraction": fraction, "subset": subset}
        for model, users in by_model.items():
            model_role = "transfer" if model in transfer_models else "baseline"
            if not present:
                for (name, metric, k), mean in zip(columns, users.select(names).mean().row(0)):
                    rows.append({**context, "model": model, "model_role": model_role, "metric": metric, "k": k,
                                 "value": mean, "n_users": users.height, "_rank": 0})
            for rank, (role, baseline) in enumerate(present):
                rows.extend({**context, "model": model, "model_role": model_role, "metric": metric, "k": k,
                             "baseline_model": baseline, "baseline_role": role, **estimate, "_rank": rank}
                            for (metric, k), estimate in _compare(
                                users, by_model[baseline], columns, n_samples, seed,
                                f"{baseline} (model {model}, target_fraction={fraction}, subset={subset})").items())
        if not present:
            logger.warning("no baseline of %s in target_fraction=%s subset=%s; rows carry null baselines",
                           [role.role for role in roles], fraction, subset)
    table = pl.DataFrame(rows, schema={**TRANSFER_GAIN_SCHEMA, "_rank": pl.Int64})
    return (table.sort("scenario", "target_fraction", "subset", "model", "metric", "k", "_rank")
            .select(TRANSFER_GAIN_COLUMNS))


def selection_metric(columns: list[tuple[str, str, int]]) -> str:
    """The per-user column that chooses among baseline candidates: NDCG@10, else NDCG at the largest K."""
    ndcg = sorted(k for _, metric, k in columns if metric == "ndcg")
    return "ndcg_at_10" if 10 in ndcg else f"ndcg_at_{ndcg[-1]}"


def best_candidate(role: BaselineRole, by_model: dict[str, pl.DataFrame], valid: pl.DataFrame, fraction: float,
                   metric: str) -> str | None:
    """The candidate that plays `role` in a group: the best on target validation at `fraction`, else the first
    present; None when no candidate is in the group."""
    present = [name for name in role.candidates if name in by_model]
    if len(present) <= 1:
        return present[0] if present else None
    scores = (valid.filter(pl.col("model").is_in(present) & (pl.col("target_fraction").cast(pl.Float64) == fraction))
              .group_by("model").agg(pl.col(metric).mean()))
    if scores.height < len(present):
        logger.warning("no target validation rows for all of %s at target_fraction=%s; %s plays %s", present, fraction,
                       present[0], role.role)
        return present[0]
    best = dict(zip(scores["model"], scores[metric]))
    # Ties go to the earlier candidate in the config, not to whichever a sort happens to put first.
    return max(present, key=lambda name: (best[name], -present.index(name)))


def _compare(users: pl.DataFrame, baseline: pl.DataFrame, columns: list[tuple[str, str, int]], n_samples: int,
             seed: int, where: str) -> dict[tuple[str, int], dict]:
    """Row fields per (metric, k) of one model against one baseline over their shared users."""
    names = [name for name, _, _ in columns]
    paired = users.join(baseline, on="user_idx", how="inner", suffix="__baseline").sort("user_idx")
    if paired.height == 0:
        logger.warning("a model shares no user_idx with baseline %s; its gains are left null", where)
        means = users.select(names).mean().row(0)
        return {(metric, k): {"value": mean, "n_users": 0} for (_, metric, k), mean in zip(columns, means)}
    estimates = _paired_bootstrap_gains(paired.select(names).to_numpy(),
                                        paired.select(f"{name}__baseline" for name in names).to_numpy(),
                                        n_samples, seed, 0.95)
    return {(metric, k): {"value": e.mean, "baseline_value": e.baseline_mean, "rel_gain": e.rel_gain,
                          "ci_low": e.ci_low, "ci_high": e.ci_high, "n_users": e.n_users}
            for (_, metric, k), e in zip(columns, estimates)}


def rows_against(table: pl.DataFrame, baseline: str | None = None) -> pl.DataFrame:
    """One row per (scenario, fraction, subset, model, metric, k): the one against `baseline` (a model or a role).

    `baseline` None takes the first row of each key, which in transfer_gain_table's order is the
    highest-priority baseline present in that group (the primary one where it exists). Rows without
    a baseline are kept either way so every model still appears.
    """
    key = ["scenario", "target_fraction", "subset", "model", "metric", "k"]
    if baseline is not None:
        table = table.filter((pl.col("baseline_model") == baseline) | (pl.col("baseline_role") == baseline)
                             | pl.col("baseline_model").is_null())
    return table.unique(subset=key, keep="first", maintain_order=True)


def plot_gain(table: pl.DataFrame, path: Path, metric: str = "ndcg", k: int = 10, subset: str = "all",
              baseline: str | None = None) -> Path:
    """Write a PNG of each model's relative gain (%) over `baseline` against target fraction; return `path`.

    `baseline` None means each group's primary baseline (see rows_against). A baseline's own line is
    the dashed 0 line. Without rows to plot the figure says "no data".
    """
    path = Path(path)
    rows = rows_against(table.filter((pl.col("metric") == metric) & (pl.col("k") == k)
                                     & (pl.col("subset") == subset)), baseline)
    rows = rows.filter(pl.col("baseline_model").is_not_null() & (pl.col("model") != pl.col("baseline_model"))
                       & pl.col("rel_gain").is_not_nan())
    scenarios = table["scenario"].unique(maintain_order=True).to_list()
    against = baseline or ", ".join(rows["baseline_model"].unique(maintain_order=True).to_list()) or "-"
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(f"{', '.join(scenarios) or 'no scenario'}: {metric}@{k} gain over {against}"
                   f" ({subset} users)")
    axes.set_xlabel("target-group training fraction")
    axes.set_ylabel(f"relative {metric}@{k} gain (%)")
    if rows.is_empty():
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes, fontsize=14)
    elif rows["target_fraction"].n_unique() == 1:  # one fraction: a forest plot, one row per model
        rows = rows.sort("rel_gain")
        gain = rows["rel_gain"].to_numpy() * 100
        below = np.nan_to_num(gain - rows["ci_low"].to_numpy() * 100)
        above = np.nan_to_num(rows["ci_high"].to_numpy() * 100 - gain)
        labels = [model if len(scenarios) == 1 else f"{scenario}/{model}"
                  for scenario, model in zip(rows["scenario"], rows["model"])]
        axes.axvline(0, color="grey", linestyle="--", linewidth=1, label=f"{against} (baseline)")
        axes.errorbar(gain, np.arange(len(labels)), xerr=[below, above], fmt="o", capsize=4)
        axes.set_yticks(np.arange(len(labels)), labels=labels)
        axes.set_xlabel(f"relative {metric}@{k} gain (%) at target fraction {rows['target_fraction'][0]:g}, 95% CI")
        axes.set_ylabel("")
        axes.legend(fontsize="small")
    else:
        axes.axhline(0, color="grey", linestyle="--", linewidth=1, label=f"{against} (baseline)")
        for (scenario, model), line in rows.sort("target_fraction").partition_by(
                "scenario", "model", as_dict=True, maintain_order=True).items():
            gain = line["rel_gain"].to_numpy() * 100
            below = np.nan_to_num(gain - line["ci_low"].to_numpy() * 100)  # nan CI: no bar
            above = np.nan_to_num(line["ci_high"].to_numpy() * 100 - gain)
            label = model if len(scenarios) == 1 else f"{scenario}/{model}"
            axes.errorbar(line["target_fraction"].to_numpy(), gain, yerr=[below, above], marker="o", capsize=3,
                          label=label)
        fractions = rows["target_fraction"].unique().sort().to_list()
        if fractions[0] > 0 and fractions[-1] / fractions[0] > 10:
            axes.set_xscale("log")
            axes.minorticks_off()
        axes.set_xticks(fractions, labels=[f"{fraction:g}" for fraction in fractions])
        axes.legend(fontsize="small")
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=path.suffix.lstrip(".") or "png", dpi=120)
    return path


def format_gain_table(table: pl.DataFrame, metric: str = "ndcg", k: int = 10, baseline: str | None = None) -> str:
    """Fixed-width text of value, baseline, gain % and CI per (fraction, subset, model).

    Rows are those of rows_against(table, baseline); "*" marks CIs that exclude 0.
    """
    rows = (rows_against(table.filter((pl.col("metric") == metric) & (pl.col("k") == k)), baseline)
            .sort("scenario", "target_fraction", "subset", "model"))
    header = f"{metric}@{k} relative to {baseline or 'the primary baseline of each group'}"
    if rows.is_empty():
        return f"{header}\n(no rows)"
    multi = rows["scenario"].n_unique() > 1
    heads = (["scenario"] if multi else []) + ["fraction", "subset", "model", "value", "vs", "baseline", "gain %",
                                               "95% CI %", ""]
    lines = []
    for row in rows.iter_rows(named=True):
        low, high = row["ci_low"], row["ci_high"]
        excludes_zero = low is not None and high is not None and (low > 0 or high < 0)
        lines.append(([row["scenario"]] if multi else []) + [
            f"{row['target_fraction']:g}", row["subset"], model_label(row), f"{row['value']:.4f}", row["baseline_model"] or "-",
            _number(row["baseline_value"], "{:.4f}"), _number(row["rel_gain"], "{:+.1%}", percent=True),
            "-" if low is None else f"[{_number(low, '{:+.1%}', True)}, {_number(high, '{:+.1%}', True)}]",
            "*" if excludes_zero else ""])
    widths = [max(len(head), *(len(line[i]) for line in lines)) for i, head in enumerate(heads)]
    text = [header, "  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip()]
    text += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(text)


def format_gain_tables(table: pl.DataFrame, metric: str = "ndcg", k: int = 10) -> str:
    """format_gain_table against each baseline role of the table in turn (the primary first)."""
    if "baseline_role" not in table.columns:  # a table written before baseline roles existed
        return format_gain_table(table, metric, k)
    roles = table.filter(pl.col("baseline_role").is_not_null())["baseline_role"].unique(maintain_order=True).to_list()
    return "\n\n".join(format_gain_table(table, metric, k, baseline=role) for role in roles) if roles \
        else format_gain_table(table, metric, k)


def model_label(row: dict) -> str:
    """The model's name, marked "(transfer)" when the table says it is a transfer method."""
    return f"{row['model']} (transfer)" if row.get("model_role") == "transfer" else row["model"]


def _number(value: float | None, pattern: str, percent: bool = False) -> str:
    """`value` formatted, "-" when null, "nan" when undefined."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    # The column header already says %, so cells drop the trailing "%".
    return pattern.format(value).rstrip("%") if percent else pattern.format(value)
