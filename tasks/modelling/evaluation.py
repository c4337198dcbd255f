"""Evaluation: full ranking over the whole catalogue, every metric at every K, overall and per group."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from conf.schema import EvaluationConfig, ScenarioConfig, TransferConfig
from models.base import Recommender, rankable_scores
from models.data import EvalBatch, SequenceData, split_loader
from models.device import on_device, pins_memory, scoring_device
from models.metrics import compute_metrics
from models.kinds import load_model
from models.transfer_data import keep_items
from models.stopping import check_stop
from tasks import schemas
from tasks.io import CacheDir, TableRef, fingerprint_text, inside, read_table, write_parquet
from tasks.data.preprocessing import PreparedData
from tasks.modelling.training import TrainedModel
from tasks.modelling.transfer import input_data, load_views, only_users

log = logging.getLogger(__name__)
ALL_USERS = "all"
TARGET_DOMAIN = "target_domain"  # evaluation.group_attribute value: group by the held-out item's domain


def domain_codes(items: pl.DataFrame) -> Tensor:
    """[n_items] int code of each item's domain, padding (index 0) coded -1."""
    codes = items.sort("item_idx")["domain"].cast(pl.Categorical).to_physical().cast(pl.Int64).to_numpy()
    return torch.as_tensor(np.concatenate([[-1], codes]))


def candidate_mask(batch: EvalBatch, n_items: int, item_domains: Tensor | None,
                   cfg: EvaluationConfig) -> Tensor | None:
    """[B, n_items] bool mask of the items each user is ranked among, or None for the whole catalogue.

    candidates=target_domain keeps items of the domain of the user's first held-out item;
    sampled_negatives=n keeps the held-out items plus n negatives drawn uniformly without
    replacement from those candidates (history items may be drawn, as in the sampled protocols
    of the cross-domain papers). Each user's draw depends only on sample_seed and the user, so
    every model is ranked on the same candidates. The mask is on the batch's device.
    """
    if cfg.candidates == "all" and cfg.sampled_negatives is None:
        return None
    n_users, device = batch.history.shape[0], batch.history.device
    targets = batch.mask(batch.target_rows, batch.target_items, n_items)  # [B, N]
    pool = torch.ones_like(targets)
    pool[:, 0] = False  # padding is never a candidate
    if cfg.candidates == "target_domain":
        # Each row's targets are consecutive and in time order: the first of a run of equal rows is the
        # row's first target. (Not a write with duplicate rows: its winner is unspecified on CUDA.)
        rows = batch.target_rows
        starts = torch.ones_like(rows, dtype=torch.bool)
        starts[1:] = rows[1:] != rows[:-1]
        first_target = torch.zeros(n_users, dtype=torch.long, device=device)
        first_target[rows[starts]] = batch.target_items[starts]
        domains = item_domains.to(device)
        pool &= domains[None, :] == domains[first_target][:, None]
    if cfg.sampled_negatives is None:
        return pool
    # The draws use CPU generators (the same on every device), so they are made on the CPU.
    kept = targets.cpu()
    negatives = (pool & ~targets).cpu()
    for row in range(n_users):
        choices = negatives[row].nonzero().flatten()
        generator = torch.Generator().manual_seed(cfg.sample_seed * 1_000_003 + int(batch.users[row]))
        drawn = choices[torch.randperm(len(choices), generator=generator)[: cfg.sampled_negatives]]
        kept[row, drawn] = True
    return kept.to(device)


def score_users(model: Recommender, data: SequenceData, split: str, cfg: EvaluationConfig,
                max_seq_len: int, item_domains: Tensor | None = None,
                device: torch.device | None = None) -> tuple[np.ndarray, pl.DataFrame]:
    """Users ranked for `split` (positions in `data`) and their metric values, one column per `<metric>_at_<k>`.

    item_domains [n_items] holds each item's domain code; needed when evaluation.candidates or
    sampled_negatives restrict the ranking. Scores on `device` (default: CUDA when available, else the
    CPU; the model is moved there); only the per-user metric values come back to the CPU.
    """
    device = device or scoring_device()
    model = on_device(model, device)
    columns: dict[str, list[torch.Tensor]] = {}
    users = data.users_with_targets(split)
    pinned = pins_memory(device)
    with torch.inference_mode():
        for batch in split_loader(data, split, max_seq_len, cfg.batch_size, pin_memory=pinned):
            check_stop(f"evaluation ({split})")
            batch = batch.to(device, non_blocking=pinned)
            scores = rankable_scores(model, batch, cfg.exclude_seen)  # [B, n_items]
            relevant = batch.mask(batch.target_rows, batch.target_items, model.n_items)
            candidates = candidate_mask(batch, model.n_items, item_domains, cfg)
            if candidates is not None:
                scores = scores.masked_fill(~candidates, float("-inf"))
            for (metric, k), values in compute_metrics(scores, relevant, cfg.ks).items():
                columns.setdefault(f"{metric}_at_{k}", []).append(values.cpu())
    return users, pl.DataFrame({name: torch.cat(parts).numpy() for name, parts in columns.items()})


def user_groups(users: pl.DataFrame, items: pl.DataFrame, data: SequenceData, split: str, ranked: np.ndarray,
                attribute: str | None) -> pl.Series | None:
    """The group of each ranked user: a user attribute, or the domain of their first held-out item."""
    if attribute is None:
        return None
    if attribute == TARGET_DOMAIN:
        first_targets = [int(data.targets(split)[u][0]) for u in ranked]
        return items.sort("item_idx")["domain"].gather([i - 1 for i in first_targets])
    return users.sort("user_idx")[attribute].gather(ranked)


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
    """Metrics of one saved model on the valid and test splits, written as a tidy Parquet table.

    Every user is ranked with their whole history as input, restricted to the items the model reads
    (a model trained on one domain only reads that domain's items).
    """
    data = input_data(prepared, trained.reads)
    device = scoring_device()
    model = on_device(load_model(Path(trained.model_file.path)), device)
    users = read_table(prepared.users, schemas.USER_INDEX, "users")
    items = read_table(prepared.items, schemas.ITEM_INDEX, "items")
    item_domains = domain_codes(items)
    tables = []
    for split in ("valid", "test"):
        ranked, per_user = score_users(model, data, split, cfg, max_seq_len, item_domains, device)
        groups = user_groups(users, items, data, split, ranked, cfg.group_attribute)
        tables.append(summarize(per_user, groups, scenario, trained.name, split))
    key = fingerprint_text(prepared.sequences.fingerprint, trained.model_file.fingerprint, cfg.model_dump(),
                           scenario, max_seq_len)
    metrics = pl.concat(tables)
    k = 10 if 10 in cfg.ks else max(cfg.ks)
    test_ndcg = metrics.filter((pl.col("split") == "test") & (pl.col("group") == ALL_USERS)
                               & (pl.col("metric") == "ndcg") & (pl.col("k") == k))
    log.info("evaluated %s on %d test users: test NDCG@%d %.4f", trained.name, len(data.users_with_targets("test")), k,
             test_ndcg["value"].item())
    return write_parquet(metrics, inside(cache_root, f"evaluate-{trained.name}-{key}", setting="models.name")
                         / "metrics.parquet")


def score_report_users(prepared: PreparedData, trained: TrainedModel, scenario: ScenarioConfig,
                       transfer: TransferConfig, cfg: EvaluationConfig, max_seq_len: int, seed: int,
                       model: Recommender | None = None) -> pl.DataFrame:
    """Per-user metrics of one model on the report's subsets: target users ('all') and cold-start users on
    test, and the target's validation users (split valid, subset 'all': what chooses the best pooled baseline).

    Columns: model, target_fraction, split, subset, user_idx, <metric>_at_<k>. Each subset ranks the same
    users with the same input for every model (restricted to the items the model reads). The validation
    users are those whose validation item training may use (the target view's): at a target fraction
    below 1 only the sampled target users, so choosing a baseline uses no more target data than training.
    """
    views = load_views(prepared, scenario, transfer, trained.target_fraction, seed)
    device = scoring_device()
    # `model`: score this one instead of the trained file, on the same users and data views (benchmarks
    # that combine trained models).
    model = on_device(model if model is not None else load_model(Path(trained.model_file.path)), device)
    items = read_table(prepared.items, schemas.ITEM_INDEX, "items")
    item_domains = domain_codes(items)
    mask = views.item_mask(trained.reads)
    target_valid_users = views.target.users_with_targets("valid")
    frames = []
    for split, subset, data, users in (("test", "all", views.evaluation, views.report_users),
                                       ("test", "cold_start", views.cold_evaluation, views.cold_users),
                                       ("valid", "all", views.evaluation, target_valid_users)):
        if len(users) == 0:
            continue
        ranked, per_user = score_users(model, keep_items(only_users(data, users, split), mask), split, cfg,
                                       max_seq_len, item_domains, device)
        if per_user.is_empty():  # none of these users has an item this model reads (e.g. a mapping model)
            continue
        frames.append(per_user.with_columns(
            pl.lit(trained.config_name).alias("model"),
            pl.lit(trained.target_fraction, dtype=pl.Float64).alias("target_fraction"),
            pl.lit(split).alias("split"), pl.lit(subset).alias("subset"),
            pl.Series("user_idx", ranked + 1, dtype=pl.Int64),
        ))
    return pl.concat(frames) if frames else pl.DataFrame()


def metric_key(row: dict) -> str:
    """MLflow key of a tidy metrics row: `<split>[/<group>]/<metric>_at_<k>`."""
    group = "" if row["group"] == ALL_USERS else f"{row['group']}/"
    return f"{row['split']}/{group}{row['metric']}_at_{row['k']}"


@task(name="evaluate", task_run_name="evaluate-{trained.name}", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def evaluate(prepared: PreparedData, trained: TrainedModel, cfg: EvaluationConfig, scenario: str,
             max_seq_len: int, cache: CacheDir) -> TableRef:
    """Prefect task: evaluate one trained model."""
    return evaluate_trained(prepared, trained, cfg, scenario, max_seq_len, cache.path)


@task(name="score-transfer-users", task_run_name="score-transfer-users-{trained.name}", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def score_transfer_users(prepared: PreparedData, trained: TrainedModel, scenario: ScenarioConfig,
                         transfer: TransferConfig, cfg: EvaluationConfig, max_seq_len: int, seed: int) -> pl.DataFrame:
    """Prefect task: per-user test metrics of one model on the report's subsets."""
    return score_report_users(prepared, trained, scenario, transfer, cfg, max_seq_len, seed)
