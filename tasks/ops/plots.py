"""Figures of a run's metrics, drawn with matplotlib's Agg canvas (no pyplot state: safe in worker threads)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tasks.io import atomic_path

ALL_USERS = "all"  # the group of the rows averaged over every user (tasks.modelling.evaluation.ALL_USERS)
BAR_METRICS = {"ndcg": "NDCG", "hit": "HR"}


def plot_model_metrics(metrics: pl.DataFrame, path: Path, k: int = 10, split: str = "test",
                       metrics_shown: dict[str, str] | None = None) -> Path:
    """Write a PNG of grouped bars, one group per model, of `split` NDCG@k and HR@k over all users; return `path`.

    `metrics` holds tidy metrics.csv rows; models keep their order of first appearance.
    """
    path = Path(path)
    shown = metrics_shown or BAR_METRICS
    rows = metrics.filter((pl.col("split") == split) & (pl.col("group") == ALL_USERS) & (pl.col("k") == k)
                          & pl.col("metric").is_in(list(shown)))
    models = rows["model"].unique(maintain_order=True).to_list()
    figure = Figure(figsize=(max(5.0, 1.2 * len(models) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(f"{split} metrics at K={k}, all users")
    if not models:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes, fontsize=14)
    else:
        positions = np.arange(len(models))
        width = 0.8 / len(shown)
        for offset, (metric, label) in enumerate(shown.items()):
            values = dict(rows.filter(pl.col("metric") == metric).select("model", "value").iter_rows())
            heights = [values.get(model, np.nan) for model in models]
            bars = axes.bar(positions + (offset - (len(shown) - 1) / 2) * width, heights, width,
                            label=f"{label}@{k}")
            axes.bar_label(bars, fmt="%.3f", fontsize="x-small", padding=2)
        axes.set_xticks(positions, labels=models, rotation=30 if len(models) > 4 else 0, ha="right"
                        if len(models) > 4 else "center")
        axes.set_ylabel("value")
        axes.set_ylim(0, min(1.0, max(1e-3, float(np.nanmax(rows["value"].to_numpy()))) * 1.25))
        axes.legend(fontsize="small")
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    return path
