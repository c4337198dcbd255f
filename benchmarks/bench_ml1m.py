"""ML-1M parity benchmark: our extractors against RecBole's figures, same data and protocol.

Protocol (the published tables'): every rating an interaction, 5-core (6,040 users, 3,416 items),
leave-one-out by time (last item test, second last validation), full ranking over all items;
reported with the user's seen items removed (SASRec/BERT4Rec papers) and kept (RecBole's tables).
Each model trains in a fresh process (its own peak RSS), early-stopped on validation NDCG@10
within the preset's time budget (train.max_minutes), on this machine's CPU cores, once per seed
(`--seeds`; the split does not depend on it unless preprocess.tie_order is shuffle). Metrics are
reported as mean ± sample standard deviation over the seeds, with each seed's value.

  .venv/bin/python benchmarks/bench_ml1m.py [--config conf/ml1m.yaml] [--models gru,caser,sasrec]
                                            [--minutes gru=15,caser=15,sasrec=30] [--seeds 42,43,44]
                                            [--set key=value ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import over_seeds, parse_seeds, train_in_process  # noqa: E402

# Reference figures, quoted from ../shared/anchors/PEERS.md (not measured here).
RECBOLE_PUBLISHED_NDCG10 = {"popularity": None, "gru": 0.1545, "caser": 0.1061, "sasrec": 0.1286}  # seen kept
RECBOLE_2CORE_SECONDS_PER_EPOCH = {"popularity": 1, "gru": 335, "caser": 3900, "sasrec": 1800}
PUBLISHED_SEEN_REMOVED_NDCG10 = {"sasrec": 0.1821}  # SASRec + full CE, Klenitskiy & Vasilev 2023


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "conf" / "ml1m.yaml"))
    parser.add_argument("--models", default="popularity,gru,caser,sasrec")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--minutes", default="", help="per-model training budgets, e.g. gru=15,caser=15,sasrec=30")
    parser.add_argument("--seeds", default="42", help="comma-separated seeds, one training per model and seed")
    args = parser.parse_args()

    import flows  # noqa: F401
    import polars as pl

    from conf.loading import load_config
    from tasks.modelling.evaluation import evaluate_trained
    from tasks.data.ingestion import ingest_dataset
    from tasks.data.prepare import prepare_data
    from tasks.modelling.training import model_training

    config = load_config(args.config, ["train.progress_bar=false", *args.overrides])
    wanted = args.models.split(",")
    budgets = {name: float(m) for name, m in (item.split("=") for item in args.minutes.split(",") if item)}
    used_budgets: dict[str, float | None] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="itx-ml1m-") as folder:
        cache = Path(folder)
        raw = ingest_dataset(config.data, config.seed, cache, config.privacy)
        prepared = prepare_data(raw, config.preprocess, config.split, config.scenario,
                                config.evaluation.group_attribute, cache, config.seed)
        print(f"ML-1M after preprocessing: {prepared.n_users} users, {prepared.n_items - 1} items, "
              f"{prepared.n_events} interactions", flush=True)
        for planned in [p for p in config.model_plan() if p.model.name in wanted]:
            model = planned.model
            if model.name in budgets and hasattr(model, "max_minutes"):  # the model's own budget, as a preset sets it
                model = model.model_copy(update={"max_minutes": budgets[model.name]})
                planned = planned.model_copy(update={"model": model})
            used_budgets[model.name] = model_training(planned, config).max_minutes
            runs = []
            for seed in parse_seeds(args.seeds):
                trained, seconds, peak = train_in_process(prepared, planned, config.model_copy(update={"seed": seed}),
                                                          cache)
                metrics = {}
                for exclude_seen in (True, False):
                    evaluation = config.evaluation.model_copy(update={"exclude_seen": exclude_seen})
                    table = pl.read_parquet(evaluate_trained(prepared, trained, evaluation, "ml1m",
                                                             config.train.max_seq_len,
                                                             cache / f"{seed}-{exclude_seen}").path)
                    at10 = table.filter((pl.col("split") == "test") & (pl.col("group") == "all") & (pl.col("k") == 10))
                    metrics[exclude_seen] = dict(at10.select("metric", "value").iter_rows())
                runs.append((metrics, trained.epochs, seconds, peak, trained.stopped_by or "-"))
                print(f"{model.name} seed {seed}: {trained.epochs} epochs, {seconds:.0f} s, stopped by "
                      f"{trained.stopped_by or '-'}, test NDCG@10 "
                      f"{metrics[True]['ndcg']:.4f} (seen removed) / {metrics[False]['ndcg']:.4f} (seen kept)",
                      flush=True)
            rows.append((model.name, runs))

    print(f"\nML-1M, LOO by time, full ranking, 5-core, tie order {config.preprocess.tie_order}; "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, budgets (min) "
          f"{used_budgets}, loss {config.train.loss}, precision {config.train.precision}, "
          f"max_seq_len {config.train.max_seq_len}, learning rate {config.train.learning_rate}, "
          f"batch {config.train.batch_size}, seeds {args.seeds}: mean ± sd (per seed)")
    print("| model | NDCG@10 | HR@10 | MRR@10 | NDCG@10 seen kept | HR@10 seen kept | epochs | stopped by | s/epoch | train min "
          "| peak RSS MB | RecBole NDCG@10 (published, seen kept) | RecBole s/epoch (2-core) | epoch speed-up vs RecBole |")
    print("|---" * 14 + "|")
    for name, runs in rows:
        def metric(exclude_seen: bool, key: str) -> str:
            return over_seeds([metrics[exclude_seen][key] for metrics, *_ in runs])

        epochs = [e for _, e, _, _, _ in runs]
        seconds = [s for _, _, s, _, _ in runs]
        per_epoch = sum(seconds) / max(sum(epochs), 1)
        published = RECBOLE_PUBLISHED_NDCG10.get(name)
        recbole_epoch = RECBOLE_2CORE_SECONDS_PER_EPOCH.get(name)
        speedup = f"{recbole_epoch / per_epoch:.0f}×" if sum(epochs) and recbole_epoch else "-"
        print(f"| {name} | {metric(True, 'ndcg')} | {metric(True, 'hit')} | {metric(True, 'mrr')} | "
              f"{metric(False, 'ndcg')} | {metric(False, 'hit')} | {'/'.join(map(str, epochs))} | "
              f"{'/'.join(r[4] for r in runs)} | {per_epoch:.1f} | "
              f"{sum(seconds) / 60 / len(runs):.1f} | {max(r[3] for r in runs):.0f} | "
              f"{published if published is not None else '-'} | {recbole_epoch or '-'} | {speedup} |")
    print("Published seen-removed reference: SASRec with full cross-entropy NDCG@10 0.1821 (Klenitskiy & Vasilev 2023).")


if __name__ == "__main__":
    main()
