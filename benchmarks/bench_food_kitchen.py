"""Food–Kitchen benchmark: our models on both domains, with the source paper's sampled protocol
and with full within-domain ranking.

Data and split are the benchmark's own (LLMCDSR copy in ../shared/datasets/amazon-food-kitchen):
train users train on their whole sequences; each cold valid/test user's last item is the target
and the earlier items (both domains, last `max_seq_len`) are the input. Protocols:
- sampled (LLMCDSR): the target among 999 negatives drawn uniformly without replacement from the
  target's own domain, excluding only the target (history not excluded), drawn once per user;
- full: every item of the target's domain, history not excluded.
Metrics per target domain (food: 300 test users, kitchen: 637). Models are selected on validation
NDCG@10 over all users (the paper selects per domain on HR@10).

  .venv/bin/python benchmarks/bench_food_kitchen.py [--models popularity,gru,sasrec] [--minutes 5]
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

# Floors quoted from ../shared/anchors/PEERS.md (sampled protocol, test.txt, seed 42), not measured here.
PUBLISHED_FLOORS = {"random": {"food": (0.010, None), "kitchen": (0.010, None)},
                    "popularity (PEERS)": {"food": (0.0467, 0.0228), "kitchen": (0.0455, 0.0196)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "conf" / "amazon_food_kitchen.yaml"))
    parser.add_argument("--models", default="popularity,gru,caser,sasrec")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per model")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    import flows  # noqa: F401
    import polars as pl

    from conf.loading import load_config
    from tasks.evaluation import evaluate_trained
    from tasks.ingestion import ingest_dataset
    from tasks.preprocessing import prepare_data
    from tasks.training import train_recommender

    config = load_config(args.config, ["train.progress_bar=false", f"train.max_minutes={args.minutes}",
                                       *args.overrides])
    protocols = {
        "sampled 1+999": config.evaluation,
        "full in-domain": config.evaluation.model_copy(update={"sampled_negatives": None}),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="itx-fk-") as folder:
        cache = Path(folder)
        raw = ingest_dataset(config.data, config.seed, cache, config.privacy)
        prepared = prepare_data(raw, config.preprocess, config.split, config.scenario,
                                config.evaluation.group_attribute, cache)
        print(f"Food–Kitchen: {prepared.n_users} users, {prepared.n_items - 1} items, {prepared.n_events} events",
              flush=True)
        for planned in [p for p in config.model_plan() if p.model.name in args.models.split(",")]:
            model = planned.model
            started = time.perf_counter()
            trained = train_recommender(prepared, planned, config, cache)
            seconds = time.perf_counter() - started
            for protocol, evaluation in protocols.items():
                table = pl.read_parquet(evaluate_trained(prepared, trained, evaluation, "food_kitchen",
                                                         config.train.max_seq_len, cache / protocol).path)
                test = table.filter(pl.col("split") == "test")
                for domain in ("food", "kitchen"):
                    values = {(m, k): v for m, k, v in test.filter(pl.col("group") == domain)
                              .select("metric", "k", "value").iter_rows()}
                    rows.append((protocol, domain, model.name, values, trained.epochs, seconds))
            print(f"{model.name}: {trained.epochs} epochs, {seconds:.0f} s", flush=True)

    print(f"\nFood–Kitchen test users, {os.cpu_count()} CPUs, budget {args.minutes} min/model, "
          f"max_seq_len {config.train.max_seq_len}, learning rate {config.train.learning_rate}")
    print("| protocol | target domain | model | HR@1 | HR@5 | HR@10 | NDCG@5 | NDCG@10 | epochs | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for protocol, domain, name, values, epochs, seconds in sorted(rows, key=lambda r: (r[0], r[1])):
        print(f"| {protocol} | {domain} | {name} | {values[('hit', 1)]:.4f} | {values[('hit', 5)]:.4f} | "
              f"{values[('hit', 10)]:.4f} | {values[('ndcg', 5)]:.4f} | {values[('ndcg', 10)]:.4f} | {epochs} | "
              f"{seconds:.0f} |")
    for name, domains in PUBLISHED_FLOORS.items():
        for domain, (hit10, ndcg10) in domains.items():
            print(f"| sampled 1+999 (published floor) | {domain} | {name} | - | - | {hit10:.4f} | - | "
                  f"{ndcg10 if ndcg10 is not None else '-'} | - | - |")


if __name__ == "__main__":
    main()
