"""Evaluation: full ranking over the whole catalogue, every metric at every K, overall and per group."""
from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import torch
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from conf.schema import EvaluationConfig
from models.base import Recommender, rankable_scores
from models.data import SequenceData, ranking_loader
from models.metrics import compute_metrics
from models.registry import load_model
from tasks import schemas
from tasks.io import CacheDir, TableRef, fingerprint_text, read_table, write_parquet
from tasks.preprocessing import PreparedData
from tasks.training import TrainedModel, load_sequence_data

log = logging.getLogger(__name__)
ALL_USERS = "all"


def score_users(model: Recommender, data: SequenceData, split: str, cfg: EvaluationConfig,
                max_seq_len: int) -> pl.DataFrame:
    """Per-user metric values for `split`: one row per user, one column per `<metric>_at_<k>`."""
    columns: dict[str, list[torch.Tensor]] = {}
    loader = ranking_loader(data.history(split), data.targets(split), max_seq_len, cfg.batch_size)
    with torch.inference_mode():
        for batch in loader:
            scores = rankable_scores(model, batch, cfg.exclude_seen)  # [B, n_items]
            relevant = batch.mask(batch.target_rows, batch.target_items, model.n_items)
            for (metric, k), values in compute_metrics(scores, relevant, cfg.ks).items():
                columns.setdefault(f"{metric}_at_{k}", []).append(values.cpu())
    return pl.DataFrame({name: torch.cat(parts).numpy() for name, parts in columns.items()})


def summarize(per_user: pl.DataFrame, groups: pl.Series | None, scenario: str, model: str,
              split: str) -> pl.DataFrame:
    """Tidy rows (scenario, model, split, group, metric, k, value): means over all users and per group."""
    frame = per_user.with_columns(
        (groups if groups is not None else pl.Series([ALL_USERS] * per_user.height)).cast(pl.String).alias("group")
    )
    overall = frame.drop("group").mean().with_columns(pl.lit(ALL_USERS).alias("group"))
    by_group = frame.group_by("group").mean() if groups is not None else overall.clear()
    long = pl.concat([overall, by_group.select(overall.columns)]).unpivot(index="group", variable_name="name")
    return long.select(
        pl.lit(scenario).alias("scenario"),
        pl.lit(model).alias("model"),
        pl.lit(split).alias("split"),
        pl.col("group"),
        pl.col("name").str.extract(r"^(.*)_at_\d+$").alias("metric"),
        pl.col("name").str.extract(r"_at_(\d+)$").cast(pl.Int32).alias("k"),
        pl.col("value").cast(pl.Float64),
    ).sort("split", "group", "metric", "k")


def evaluate_trained(prepared: PreparedData, trained: TrainedModel, cfg: EvaluationConfig, scenario: str,
                     max_seq_len: int, cache_root: Path) -> TableRef:
    """Metrics of one saved model on the valid and test splits, written as a tidy Parquet table."""
    data = load_sequence_data(prepared)
    model = load_model(Path(trained.model_file.path))
    users = read_table(prepared.users, schemas.USER_INDEX, "users").sort("user_idx")
    groups = users[cfg.group_attribute] if cfg.group_attribute else None
    tables = [
        summarize(score_users(model, data, split, cfg, max_seq_len), groups, scenario, trained.name, split)
        for split in ("valid", "test")
    ]
    key = fingerprint_text(prepared.sequences.fingerprint, trained.model_file.fingerprint, cfg.model_dump(),
                           scenario, max_seq_len)
    metrics = pl.concat(tables)
    k = 10 if 10 in cfg.ks else max(cfg.ks)
    test_ndcg = metrics.filter((pl.col("split") == "test") & (pl.col("group") == ALL_USERS)
                               & (pl.col("metric") == "ndcg") & (pl.col("k") == k))
    log.info("evaluated %s on %d users: test NDCG@%d %.4f", trained.name, len(data.train), k,
             test_ndcg["value"].item())
    return write_parquet(metrics, cache_root / f"evaluate-{trained.name}-{key}" / "metrics.parquet")


def metric_key(row: dict) -> str:
    """MLflow key of a tidy metrics row: `<split>[/<group>]/<metric>_at_<k>`."""
    group = "" if row["group"] == ALL_USERS else f"{row['group']}/"
    return f"{row['split']}/{group}{row['metric']}_at_{row['k']}"


@task(name="evaluate", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def evaluate(prepared: PreparedData, trained: TrainedModel, cfg: EvaluationConfig, scenario: str,
             max_seq_len: int, cache: CacheDir) -> TableRef:
    """Prefect task: evaluate one trained model."""
    return evaluate_trained(prepared, trained, cfg, scenario, max_seq_len, cache.path)
