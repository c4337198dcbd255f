"""Export: top-K recommendations for every user, in the original id space, as Parquet and CSV."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from prefect import task

from conf.schema import ExportConfig
from models.base import Recommender, rankable_scores
from models.data import SequenceData, ranking_loader
from models.device import on_device, pins_memory, scoring_device
from models.registry import load_model
from tasks import schemas
from tasks.io import TableRef, read_table, write_csv, write_parquet
from tasks.preprocessing import PreparedData
from tasks.training import TrainedModel
from tasks.transfer import input_data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportedRecommendations:
    """The written recommendation files and the model they came from."""

    model: str
    parquet: TableRef
    csv: TableRef
    rows: int


def recommend_top_k(model: Recommender, data: SequenceData, top_k: int, max_seq_len: int, batch_size: int = 1024,
                    device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user position [U·K], item_idx [U·K], score [U·K]) of each user's top_k items, seen ones at -inf.

    The whole history (train, valid and test) is the input: this is the next recommendation to make.
    Scores and ranks on `device` (default: CUDA when available, else the CPU; the model is moved
    there); only the top-k lists come back to the CPU.
    """
    device = device or scoring_device()
    model = on_device(model, device)
    pinned = pins_memory(device)
    users, items, scores = [], [], []
    with torch.inference_mode():
        for batch in ranking_loader(data.history("all"), None, max_seq_len, batch_size, pin_memory=pinned):
            catalogue = rankable_scores(model, batch.to(device, non_blocking=pinned), exclude_seen=True)  # [B, N]
            ranked = catalogue.topk(top_k, dim=1)  # [B, K]
            users.append(batch.users.repeat_interleave(top_k).numpy())
            items.append(ranked.indices.flatten().cpu().numpy())
            scores.append(ranked.values.flatten().cpu().numpy())
    return np.concatenate(users), np.concatenate(items), np.concatenate(scores)


def export_top_k(prepared: PreparedData, trained: TrainedModel, cfg: ExportConfig, max_seq_len: int,
                 run_dir: Path) -> ExportedRecommendations:
    """Write `recommendations.parquet` and `.csv` (user_id, item_id, rank, score) into the run folder."""
    data = input_data(prepared, trained.reads)
    model = load_model(Path(trained.model_file.path))
    user_position, item_idx, score = recommend_top_k(model, data, cfg.top_k, max_seq_len)
    ranks = np.tile(np.arange(1, cfg.top_k + 1, dtype=np.int32), len(data.train))
    # A user with fewer than top_k unseen items gets a shorter list, never a seen item or padding.
    rankable = np.isfinite(score)
    user_position, item_idx, score, ranks = (a[rankable] for a in (user_position, item_idx, score, ranks))
    users = read_table(prepared.users, schemas.USER_INDEX, "users").sort("user_idx")["user_id"]
    items = read_table(prepared.items, schemas.ITEM_INDEX, "items").sort("item_idx")["item_id"]
    recommendations = pl.DataFrame(
        {
            "user_id": users.gather(user_position),
            "item_id": items.gather(item_idx - 1),  # item_idx starts at 1
            "rank": ranks,
            "score": score.astype(np.float64),
        }
    )
    schemas.check_schema(recommendations.schema, schemas.RECOMMENDATIONS, "recommendations", str(run_dir))
    log.info("exported %d recommendations (%d users × top %d) from %s", recommendations.height,
             len(data.train), cfg.top_k, trained.name)
    return ExportedRecommendations(
        model=trained.name,
        parquet=write_parquet(recommendations, run_dir / "recommendations.parquet"),
        csv=write_csv(recommendations, run_dir / "recommendations.csv"),
        rows=recommendations.height,
    )


def best_model(trained: list[TrainedModel], metrics: pl.DataFrame, chosen: str | None) -> TrainedModel:
    """The configured export model, else the one with the highest validation NDCG@10 (all users)."""
    if chosen is None:
        valid = metrics.filter((pl.col("split") == "valid") & (pl.col("group") == "all")
                               & (pl.col("metric") == "ndcg") & (pl.col("k") == 10))
        if valid.is_empty():  # K=10 not evaluated: fall back to the largest K
            valid = metrics.filter((pl.col("split") == "valid") & (pl.col("group") == "all")
                                   & (pl.col("metric") == "ndcg")).filter(pl.col("k") == pl.col("k").max())
        chosen = valid.sort("value", descending=True)["model"][0]
    return next(model for model in trained if model.name == chosen)


@task(name="export")
def export(prepared: PreparedData, trained: list[TrainedModel], metrics: TableRef, cfg: ExportConfig,
           max_seq_len: int, run_dir: Path) -> ExportedRecommendations:
    """Prefect task: export the chosen model's top-K recommendations into the run folder."""
    table = read_table(metrics, schemas.METRICS, "metrics")
    return export_top_k(prepared, best_model(trained, table, cfg.model), cfg, max_seq_len, run_dir)
