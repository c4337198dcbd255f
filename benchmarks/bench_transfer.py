"""Transfer benchmark: every model of a transfer preset at every target fraction, with its gain and cost.

For each planned model (a configured model at one target fraction) the training runs in a fresh
process, so its peak memory is its own; then its report users are scored here and timed. The table
is the run's transfer_gain.csv (paired bootstrap 95% CIs on the relative gain, per user), with the
cost columns added. Protocol: the preset's (split, candidates, negatives); see its comments.

  .venv/bin/python benchmarks/bench_transfer.py --config conf/ml1m_transfer.yaml [--minutes 2]
                                                [--models gru_target,gru_finetune] [--seeds 42,43,44]
                                                [--set key=value ...] [--csv out.csv] [--cache DIR]

Every model is compared with each baseline of `transfer.compare_to` (target-only, the best pooled
model on target validation, ItemKNN). With several seeds, each seed's tables are printed, then per
baseline NDCG@10 and its gain as mean ± sd with the per-seed values, in how many seeds the paired CI
lies above zero, and the gain's CI over the users of all seeds pooled (each user paired within its seed).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import over_seeds, parse_seeds, train_in_process  # noqa: E402

SEED_USER_OFFSET = 100_000_000  # added to user_idx per seed when users of several seeds are pooled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--models", default="", help="comma-separated model names (default: all)")
    parser.add_argument("--minutes", type=float, default=None, help="training budget per fit (train.max_minutes)")
    parser.add_argument("--seeds", default="", help="comma-separated seeds (default: the config's seed); "
                                                    "each seed redraws the split's samples and the models' weights")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--csv", help="also write the table here (every seed's rows, with a seed column)")
    parser.add_argument("--cache", help="keep the prepared data and trained models here (default: a temporary "
                                        "folder): a rerun with the same settings reuses every model trained before (its train "
                                        "seconds are then the reuse's, not a training's)")
    args = parser.parse_args()

    import flows  # noqa: F401
    import polars as pl

    from conf.loading import load_config
    from tasks.modelling.training import training_settings
    from tasks.modelling.transfer_report import transfer_gain_table

    overrides = ["train.progress_bar=false", *args.overrides]
    if args.minutes is not None:
        overrides.append(f"train.max_minutes={args.minutes}")
    base = load_config(args.config, overrides)
    seeds = parse_seeds(args.seeds) or [base.seed]
    tables, per_user = [], []
    for index, seed in enumerate(seeds):
        config = training_settings(load_config(args.config, [*overrides, f"seed={seed}"]))
        frame, table, cost = run_one_seed(config, args.models, args.cache)
        print_seed_tables(config, table, cost)
        tables.append(table.join(cost, on=["model", "target_fraction"], how="left").with_columns(pl.lit(seed).alias("seed")))
        # Users of different seeds are different samples: offset their ids so that pooling never pairs across seeds.
        per_user.append(frame.with_columns(pl.col("user_idx") + index * SEED_USER_OFFSET))
    everything = pl.concat(tables, how="diagonal")
    if len(seeds) > 1:
        pooled = transfer_gain_table(pl.concat(per_user, how="diagonal"), config.scenario.name,
                                     config.transfer_baselines(), n_samples=config.transfer.bootstrap_samples,
                                     seed=config.seed, transfer_models=config.transfer_methods())
        for baseline in config.transfer_baselines():
            print_over_seeds(everything, pooled, baseline.role)
    if args.csv:
        everything.write_csv(args.csv)


def run_one_seed(config, models: str, cache_dir: str | None = None):
    """(per-user metrics, transfer_gain table, cost table) of every planned model of `config`, trained with its seed."""
    import polars as pl

    from tasks.modelling.evaluation import score_report_users
    from tasks.data.ingestion import ingest_dataset
    from tasks.data.prepare import prepare_data
    from conf.schema import reads_item_text
    from tasks.modelling.transfer import embed_item_texts
    from tasks.modelling.transfer_report import transfer_gain_table

    wanted = set(models.split(",")) if models else {m.name for m in config.models}
    costs, frames = [], []
    kept = contextlib.nullcontext(cache_dir) if cache_dir else tempfile.TemporaryDirectory(prefix="itx-transfer-")
    with kept as folder:
        cache = Path(folder)
        raw = ingest_dataset(config.data, config.seed, cache, config.privacy)
        prepared = prepare_data(raw, config.preprocess, config.split, config.scenario,
                                config.evaluation.group_attribute, cache, config.seed)
        print(f"{config.scenario.name}, seed {config.seed}: {prepared.n_users} users, {prepared.n_items - 1} items, "
              f"{prepared.n_events} interactions", flush=True)
        item_text = None
        if any(reads_item_text(m) for m in config.models if m.name in wanted):
            started = time.perf_counter()
            item_text = embed_item_texts(prepared, config.text, cache / "text")
            print(f"item texts embedded in {time.perf_counter() - started:.0f} s", flush=True)
        for planned in [p for p in config.model_plan() if p.model.name in wanted]:
            trained, train_seconds, peak = train_in_process(prepared, planned, config, cache, item_text)
            started = time.perf_counter()
            frames.append(score_report_users(prepared, trained, config.scenario, config.transfer, config.evaluation,
                                             config.train.max_seq_len, config.seed))
            score_seconds = time.perf_counter() - started
            costs.append({"model": planned.model.name, "target_fraction": planned.target_fraction,
                          "epochs": trained.epochs, "stopped_by": trained.stopped_by,
                          "train_s": round(train_seconds, 1), "score_s": round(score_seconds, 1), "peak_mb": round(peak)})
            print(f"{planned.label}: {trained.epochs} epochs (stopped by {trained.stopped_by}), "
                  f"train {train_seconds:.0f} s, score {score_seconds:.1f} s, peak {peak:.0f} MB", flush=True)

    frame = pl.concat(frames, how="diagonal")
    table = transfer_gain_table(frame, config.scenario.name, config.transfer_baselines(),
                                n_samples=config.transfer.bootstrap_samples, seed=config.seed,
                                transfer_models=config.transfer_methods())
    return frame, table, pl.DataFrame(costs)


def print_seed_tables(config, table, cost) -> None:
    """One seed's gain tables against every baseline, and NDCG/Recall@10 with the costs."""
    import polars as pl

    from tasks.modelling.transfer_report import format_gain_table

    print(f"\n{config.scenario.name}, seed {config.seed}: {os.cpu_count()} CPUs, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, budget per fit {config.train.max_minutes} min, "
          f"max_seq_len {config.train.max_seq_len}, protocol: split {config.split.protocol}, candidates "
          f"{config.evaluation.candidates}, sampled negatives {config.evaluation.sampled_negatives}, "
          f"seen items {'removed' if config.evaluation.exclude_seen else 'kept'}, "
          f"ties {config.preprocess.tie_order}")
    for baseline in config.transfer_baselines():
        print(format_gain_table(table, baseline=baseline.role))
    primary = config.transfer_baselines()[0].role
    at10 = (table.filter((pl.col("k") == 10) & pl.col("metric").is_in(["ndcg", "recall"])
                         & (pl.col("baseline_role") == primary))
            .pivot(on="metric", index=["target_fraction", "subset", "model", "n_users"],
                   values=["value", "rel_gain", "ci_low", "ci_high"])
            .join(cost, on=["model", "target_fraction"], how="left")
            .sort("target_fraction", "subset", "model"))
    print(f"\n| fraction | subset | model | NDCG@10 | gain vs {primary} [95% CI] | Recall@10 | gain [95% CI] "
          "| users | epochs | stopped by | train s | score s | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in at10.iter_rows(named=True):
        def gain(metric: str) -> str:
            low, high = row[f"ci_low_{metric}"], row[f"ci_high_{metric}"]
            if row[f"rel_gain_{metric}"] is None or low is None:
                return "-"
            return f"{row[f'rel_gain_{metric}']:+.1%} [{low:+.1%}, {high:+.1%}]"

        print(f"| {row['target_fraction']:g} | {row['subset']} | {row['model']} | {row['value_ndcg']:.4f} | "
              f"{gain('ndcg')} | {row['value_recall']:.4f} | {gain('recall')} | {row['n_users']} | "
              f"{row['epochs']} | {row['stopped_by'] or '-'} | {row['train_s']} | {row['score_s']} | {row['peak_mb']} |")


def print_over_seeds(everything, pooled, role: str) -> None:
    """NDCG@10 and its relative gain over the baseline playing `role`, mean ± sd over the seeds with each seed's
    value, in how many seeds the paired 95% CI of the gain lies above zero, and the CI over all seeds' users."""
    import polars as pl

    def at10(table):
        return table.filter((pl.col("k") == 10) & (pl.col("metric") == "ndcg") & (pl.col("baseline_role") == role))

    rows = at10(everything).sort("seed")
    over_users = {(r["target_fraction"], r["subset"], r["model"]): r for r in at10(pooled).iter_rows(named=True)}
    print(f"\nOver {rows['seed'].n_unique()} seeds (NDCG@10; gain relative to the {role} baseline, paired per seed):")
    print(f"| fraction | subset | model | NDCG@10 | {role} model per seed | gain vs {role} | seeds with CI > 0 "
          "| gain over all seeds' users [95% CI] |")
    print("|---|---|---|---|---|---|---|---|")
    for (fraction, subset, model), group in sorted(rows.group_by("target_fraction", "subset", "model"),
                                                   key=lambda item: item[0]):
        gains = [g for g in group["rel_gain"].to_list() if g is not None]
        above = sum(1 for low in group["ci_low"].to_list() if low is not None and low > 0)
        gain_text = over_seeds([100 * g for g in gains], digits=1) + " %" if gains else "-"
        label = f"{model} (transfer)" if group["model_role"][0] == "transfer" else model
        pooled_row = over_users.get((fraction, subset, model))
        pooled_text = "-" if pooled_row is None or pooled_row["ci_low"] is None else \
            f"{pooled_row['rel_gain']:+.1%} [{pooled_row['ci_low']:+.1%}, {pooled_row['ci_high']:+.1%}]"
        print(f"| {fraction:g} | {subset} | {label} | {over_seeds(group['value'].to_list())} | "
              f"{', '.join(group['baseline_model'].to_list())} | {gain_text} | {above}/{group.height} | {pooled_text} |")


if __name__ == "__main__":
    main()
