"""Transfer benchmark: every model of a transfer preset at every target fraction, with its gain and cost.

For each planned model (a configured model at one target fraction) the training runs in a fresh
process, so its peak memory is its own; then its report users are scored here and timed. The table
is the run's transfer_gain.csv (paired bootstrap 95% CIs on the relative gain, per user), with the
cost columns added. Protocol: the preset's (split, candidates, negatives); see its comments.

  .venv/bin/python benchmarks/bench_transfer.py --config conf/ml1m_transfer.yaml [--minutes 2]
                                                [--models gru_target,gru_finetune] [--set key=value ...]
                                                [--csv out.csv]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import train_in_process  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--models", default="", help="comma-separated model names (default: all)")
    parser.add_argument("--minutes", type=float, default=None, help="training budget per fit (train.max_minutes)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--csv", help="also write the table here")
    args = parser.parse_args()

    import flows  # noqa: F401
    import polars as pl

    from conf.loading import load_config
    from tasks.evaluation import score_report_users
    from tasks.ingestion import ingest_dataset
    from tasks.preprocessing import prepare_data
    from tasks.training import training_settings
    from tasks.transfer import embed_item_texts
    from tasks.transfer_report import format_gain_table, transfer_gain_table

    overrides = ["train.progress_bar=false", *args.overrides]
    if args.minutes is not None:
        overrides.append(f"train.max_minutes={args.minutes}")
    config = training_settings(load_config(args.config, overrides))
    wanted = set(args.models.split(",")) if args.models else {m.name for m in config.models}
    costs, frames = [], []
    with tempfile.TemporaryDirectory(prefix="itx-transfer-") as folder:
        cache = Path(folder)
        raw = ingest_dataset(config.data, config.seed, cache, config.privacy)
        prepared = prepare_data(raw, config.preprocess, config.split, config.scenario,
                                config.evaluation.group_attribute, cache, config.seed)
        print(f"{config.scenario.name}: {prepared.n_users} users, {prepared.n_items - 1} items, "
              f"{prepared.n_events} interactions", flush=True)
        item_text = None
        if any(m.kind == "bert_transfer" for m in config.models if m.name in wanted):
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
                          "epochs": trained.epochs, "train_s": round(train_seconds, 1),
                          "score_s": round(score_seconds, 1), "peak_mb": round(peak)})
            print(f"{planned.label}: {trained.epochs} epochs, train {train_seconds:.0f} s, "
                  f"score {score_seconds:.1f} s, peak {peak:.0f} MB", flush=True)

    table = transfer_gain_table(pl.concat(frames, how="diagonal"), config.scenario.name, config.transfer_baselines(),
                                n_samples=config.transfer.bootstrap_samples, seed=config.seed)
    cost = pl.DataFrame(costs)
    print(f"\n{config.scenario.name}: {os.cpu_count()} CPUs, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, budget per fit {config.train.max_minutes} min, "
          f"max_seq_len {config.train.max_seq_len}, protocol: split {config.split.protocol}, candidates "
          f"{config.evaluation.candidates}, sampled negatives {config.evaluation.sampled_negatives}, "
          f"seen items {'removed' if config.evaluation.exclude_seen else 'kept'}")
    for baseline in config.transfer_baselines():
        print(format_gain_table(table, baseline=baseline))
    at10 = (table.filter((pl.col("k") == 10) & pl.col("metric").is_in(["ndcg", "recall"])
                         & (pl.col("baseline_model") == config.transfer_baselines()[0]))
            .pivot(on="metric", index=["target_fraction", "subset", "model", "n_users"],
                   values=["value", "rel_gain", "ci_low", "ci_high"])
            .join(cost, on=["model", "target_fraction"], how="left")
            .sort("target_fraction", "subset", "model"))
    print("\n| fraction | subset | model | NDCG@10 | gain vs target-only [95% CI] | Recall@10 | gain [95% CI] "
          "| users | epochs | train s | score s | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in at10.iter_rows(named=True):
        def gain(metric: str) -> str:
            low, high = row[f"ci_low_{metric}"], row[f"ci_high_{metric}"]
            if row[f"rel_gain_{metric}"] is None or low is None:
                return "-"
            return f"{row[f'rel_gain_{metric}']:+.1%} [{low:+.1%}, {high:+.1%}]"

        print(f"| {row['target_fraction']:g} | {row['subset']} | {row['model']} | {row['value_ndcg']:.4f} | "
              f"{gain('ndcg')} | {row['value_recall']:.4f} | {gain('recall')} | {row['n_users']} | "
              f"{row['epochs']} | {row['train_s']} | {row['score_s']} | {row['peak_mb']} |")
    if args.csv:
        table.join(cost, on=["model", "target_fraction"], how="left").write_csv(args.csv)


if __name__ == "__main__":
    main()
