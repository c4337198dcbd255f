"""Export: top-K recommendations for every user, with their reasons, in the original id space, as Parquet and CSV.

Users are scored, ranked and explained one batch at a time and each batch is appended to the files
at once, so memory holds one batch's [B, n_items] scores and rows, whatever the number of users
(`benchmarks/bench_scoring.py` measures it). Reasons (`models/explain.py`): for each recommended
item, up to N_REASONS items of the user's own history (of the domain the model reads) that point to
it most, with their evidence score. Parquet holds them as lists; CSV, which cannot, as `;`-joined
strings (`i1;i7`, `0.52;0.13`; empty when there is no reason).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from prefect import task

from conf.schema import ExportConfig
from models.base import Recommender, rankable_scores
from models.data import EvalBatch, SequenceData, ranking_loader
from models.device import on_device, pins_memory, scoring_device
from models.explain import N_REASONS, Evidence, evidence_for, explain
from models.kinds import load_model
from models.stopping import check_stop
from tasks import schemas
from tasks.io import TableRef, atomic_path, fingerprint_file, read_table
from tasks.data.preprocessing import PreparedData
from tasks.modelling.training import TrainedModel
from tasks.modelling.transfer import input_data

log = logging.getLogger(__name__)

CSV_LIST_SEPARATOR = ";"
LIST_COLUMNS = ("reason_item_ids", "reason_scores")


@dataclass(frozen=True)
class ExportedRecommendations:
    """The written recommendation files and the model they came from."""

    model: str
    parquet: TableRef
    csv: TableRef
    rows: int


@dataclass(frozen=True)
class RankedBatch:
    """One batch of users' top-K items and their reasons, on the CPU."""

    users: np.ndarray  # [B] user positions (user_idx - 1)
    items: np.ndarray  # [B, K] item_idx, best first
    scores: np.ndarray  # [B, K]; -inf past a user's rankable items
    reason_items: np.ndarray  # [B, K, R] item_idx of history items, best first; 0: no more reasons
    reason_scores: np.ndarray  # [B, K, R] evidence; -inf where reason_items is 0


def rank_batch(model: Recommender, batch: EvalBatch, top_k: int, evidence: Evidence | None,
               n_reasons: int = N_REASONS) -> RankedBatch:
    """Top-k unseen items of a batch (on the batch's device) and, given `evidence`, their reasons."""
    catalogue = rankable_scores(model, batch, exclude_seen=True)  # [B, N]
    ranked = catalogue.topk(top_k, dim=1)  # [B, K]
    if evidence is not None and n_reasons > 0:
        reasons = explain(evidence, batch.history, ranked.indices, n_reasons)
        reason_items, reason_scores = reasons.items.cpu().numpy(), reasons.scores.cpu().numpy()
    else:
        reason_items = np.zeros((*ranked.indices.shape, 0), np.int64)
        reason_scores = np.zeros((*ranked.indices.shape, 0), np.float32)
    return RankedBatch(batch.users.cpu().numpy(), ranked.indices.cpu().numpy(), ranked.values.cpu().numpy(),
                       reason_items, reason_scores)


def iter_top_k(model: Recommender, data: SequenceData, top_k: int, max_seq_len: int, batch_size: int = 1024,
               device: torch.device | None = None, n_reasons: int = N_REASONS) -> Iterator[RankedBatch]:
    """Each batch of users' top_k items and reasons (none when n_reasons is 0), in user order.

    The whole history (train, valid and test) is the input: this is the next recommendation to make.
    Scores, ranks and explains on `device` (default: CUDA when available, else the CPU; the model is
    moved there); only the top-k lists and reasons come back to the CPU.
    """
    device = device or scoring_device()
    model = on_device(model, device)
    pinned = pins_memory(device)
    evidence = evidence_for(model) if n_reasons > 0 else None
    with torch.inference_mode():
        for batch in ranking_loader(data.history("all"), None, max_seq_len, batch_size, pin_memory=pinned):
            check_stop("export")
            yield rank_batch(model, batch.to(device, non_blocking=pinned), top_k, evidence, n_reasons)


def recommend_top_k(model: Recommender, data: SequenceData, top_k: int, max_seq_len: int, batch_size: int = 1024,
                    device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user position [U·K], item_idx [U·K], score [U·K]) of each user's top_k items, seen ones at -inf.

    All users at once, without reasons: for tests and small data; the export streams `iter_top_k`.
    """
    users, items, scores = [], [], []
    for ranked in iter_top_k(model, data, top_k, max_seq_len, batch_size, device, n_reasons=0):
        users.append(ranked.users.repeat(top_k))
        items.append(ranked.items.ravel())
        scores.append(ranked.scores.ravel())
    return np.concatenate(users), np.concatenate(items), np.concatenate(scores)


def recommendation_frame(ranked: RankedBatch, user_ids: pl.Series, item_ids: pa.Array) -> pl.DataFrame:
    """The batch's rows in the RECOMMENDATIONS schema: user_ids[position], item_ids[item_idx - 1].

    A user with fewer than K unseen items gets a shorter list, never a seen item or padding.
    """
    batch, top_k = ranked.items.shape
    rankable = np.isfinite(ranked.scores).ravel()  # [B·K]
    reason_items = ranked.reason_items.reshape(batch * top_k, -1)[rankable]  # [M, R]
    reason_scores = ranked.reason_scores.reshape(batch * top_k, -1)[rankable]
    present = reason_items > 0  # a prefix of each row: reasons come best first, missing ones last
    offsets = pa.array(np.concatenate([[0], np.cumsum(present.sum(axis=1))]).astype(np.int32))
    reason_ids = pa.ListArray.from_arrays(offsets, item_ids.take(pa.array(reason_items[present] - 1)))
    reason_values = pa.ListArray.from_arrays(offsets, pa.array(reason_scores[present].astype(np.float64)))
    return pl.DataFrame({
        "user_id": user_ids.gather(np.repeat(ranked.users, top_k)[rankable]),
        "item_id": pl.Series(item_ids.take(pa.array(ranked.items.ravel()[rankable] - 1))),  # item_idx from 1
        "rank": np.tile(np.arange(1, top_k + 1, dtype=np.int32), batch)[rankable],
        "score": ranked.scores.ravel()[rankable].astype(np.float64),
        "reason_item_ids": pl.Series(reason_ids),
        "reason_scores": pl.Series(reason_values),
    }, schema=schemas.RECOMMENDATIONS)


def csv_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with its list columns as `;`-joined strings, which CSV can hold."""
    return frame.with_columns(pl.col(column).list.eval(pl.element().cast(pl.String)).list.join(CSV_LIST_SEPARATOR)
                              for column in LIST_COLUMNS)


class RecommendationWriter:
    """Appends recommendation frames to a Parquet file (and optionally a CSV file) one batch at a time.

    Both are written under temporary names and renamed into place only when the `with` block ends
    without an error, so a recommendations file that exists is complete.
    """

    def __init__(self, parquet: Path, csv: Path | None = None):
        self.parquet_path, self.csv_path = Path(parquet), Path(csv) if csv is not None else None
        self.rows, self.csv_header_written = 0, False

    def __enter__(self) -> RecommendationWriter:
        self.stack = ExitStack().__enter__()
        try:
            self.parquet_temporary = self.stack.enter_context(atomic_path(self.parquet_path))
            self.csv_handle = None
            if self.csv_path is not None:
                csv_temporary = self.stack.enter_context(atomic_path(self.csv_path))
                self.csv_handle = self.stack.enter_context(open(csv_temporary, "wb"))
            self.parquet_writer: pq.ParquetWriter | None = None
            # Closed first on exit (LIFO), before atomic_path renames or removes the file.
            self.stack.callback(self._close_parquet)
        except BaseException:
            self.stack.__exit__(None, None, None)
            raise
        return self

    def write(self, frame: pl.DataFrame) -> None:
        """Append the frame's rows (RECOMMENDATIONS schema) to both files."""
        table = frame.to_arrow()
        if self.parquet_writer is None:
            self.parquet_writer = pq.ParquetWriter(self.parquet_temporary, table.schema)
        self.parquet_writer.write_table(table)
        if self.csv_handle is not None:
            csv_frame(frame).write_csv(self.csv_handle, include_header=not self.csv_header_written)
            self.csv_header_written = True
        self.rows += frame.height

    def _close_parquet(self) -> None:
        if self.parquet_writer is None:  # no rows at all: still a valid, empty table
            self.write(pl.DataFrame(schema=schemas.RECOMMENDATIONS))
        self.parquet_writer.close()

    def __exit__(self, *exc_info) -> bool:
        return self.stack.__exit__(*exc_info)

    def refs(self) -> tuple[TableRef, TableRef | None]:
        """References of the written files (after the `with` block)."""
        csv = TableRef(str(self.csv_path), fingerprint_file(self.csv_path)) if self.csv_path is not None else None
        return TableRef(str(self.parquet_path), fingerprint_file(self.parquet_path)), csv


def export_top_k(prepared: PreparedData, trained: TrainedModel, cfg: ExportConfig, max_seq_len: int,
                 run_dir: Path, n_reasons: int = N_REASONS, batch_size: int = 1024) -> ExportedRecommendations:
    """Write `recommendations.parquet` and `.csv` (user_id, item_id, rank, score, reason_item_ids,
    reason_scores) into the run folder, one batch of users at a time."""
    data = input_data(prepared, trained.reads)
    model = load_model(Path(trained.model_file.path))
    users = read_table(prepared.users, schemas.USER_INDEX, "users").sort("user_idx")["user_id"]
    items = read_table(prepared.items, schemas.ITEM_INDEX, "items").sort("item_idx")["item_id"].to_arrow()
    explained = 0
    with RecommendationWriter(run_dir / "recommendations.parquet", run_dir / "recommendations.csv") as writer:
        for ranked in iter_top_k(model, data, cfg.top_k, max_seq_len, batch_size, n_reasons=n_reasons):
            frame = recommendation_frame(ranked, users, items)
            explained += int((frame["reason_item_ids"].list.len() > 0).sum())
            writer.write(frame)
    parquet, csv = writer.refs()
    log.info("exported %d recommendations (%d users × top %d) from %s; %d carry reasons (up to %d history items "
             "each)", writer.rows, len(data.train), cfg.top_k, trained.name, explained, n_reasons)
    return ExportedRecommendations(model=trained.name, parquet=parquet, csv=csv, rows=writer.rows)


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
