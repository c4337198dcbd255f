"""Food–Kitchen benchmark: our models on both domains, with the source paper's sampled protocol
and with full within-domain ranking.

Data and split are the benchmark's own (LLMCDSR copy in ../shared/datasets/amazon-food-kitchen):
train users train on their whole sequences; each cold valid/test user's last item is the target
and the earlier items (both domains, last `max_seq_len`) are the input. Protocols:
- sampled (LLMCDSR): the target among 999 negatives drawn uniformly without replacement from the
  target's own domain, excluding only the target (history not excluded), drawn once per user;
- full: every item of the target's domain, history not excluded.
Metrics per target domain (food: 300 test users, kitchen: 637). Models are selected on validation
NDCG@10 over all users (the paper selects per domain on HR@10). Each model trains once per seed
(`--seeds`; the benchmark's split does not depend on it); metrics are mean ± sample standard
deviation over the seeds, with each seed's value.

  .venv/bin/python benchmarks/bench_food_kitchen.py [--models popularity,gru,sasrec] [--minutes 15]
                                                    [--seeds 42,43,44] [--set key=value ...]
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

from benchmarks.common import over_seeds, parse_seeds  # noqa: E402

# Floors quoted from ../shared/anchors/PEERS.md (sampled protocol, test.txt, seed 42), not measured here.
PUBLISHED_FLOORS = {"random": {"food": (0.010, None), "kitchen": (0.010, None)},
                    "popularity (PEERS)": {"food": (0.0467, 0.0228), "kitchen": (0.0455, 0.0196)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "conf" / "amazon_food_kitchen.yaml"))
    parser.add_argument("--models", default="popularity,gru,caser,sasrec")
    parser.add_argument("--minutes", type=float, default=None, help="training budget per model (default: the preset's)")
    parser.add_argument("--seeds", default="42", help="comma-separated seeds, one training per model and seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    import flows  # noqa: F401
    import polars as pl

    from conf.loading import load_config
    from tasks.modelling.evaluation import evaluate_trained
    from tasks.data.ingestion import ingest_dataset
    from tasks.data.prepare import prepare_data
    from tasks.modelling.training import train_recommender

    budget = [f"train.max_minutes={args.minutes}"] if args.minutes is not None else []
    config = load_config(args.config, ["train.progress_bar=false", *budget, *args.overrides])
    protocols = {
        "sampled 1+999": config.evaluation,
        "full in-domain": config.evaluation.model_copy(update={"sampled_negatives": None}),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="itx-fk-") as folder:
        cache = Path(folder)
        raw = ingest_dataset(config.data, config.seed, cache, config.privacy)
        prepared = prepare_data(raw, config.preprocess, config.split, config.scenario,
                                config.evaluation.group_attribute, cache, config.seed)
        print(f"Food–Kitchen: {prepared.n_users} users, {prepared.n_items - 1} items, {prepared.n_events} events",
              flush=True)
        for planned in [p for p in config.model_plan() if p.model.name in args.models.split(",")]:
            model = planned.model
            for seed in parse_seeds(args.seeds):
                started = time.perf_counter()
                trained = train_recommender(prepared, planned, config.model_copy(update={"seed": seed}), cache)
                seconds = time.perf_counter() - started
                for protocol, evaluation in protocols.items():
                    table = pl.read_parquet(evaluate_trained(prepared, trained, evaluation, "food_kitchen",
                                                             config.train.max_seq_len,
                                                             cache / f"{protocol}-{seed}").path)
                    test = table.filter(pl.col("split") == "test")
                    for domain in ("food", "kitchen"):
                        values = {(m, k): v for m, k, v in test.filter(pl.col("group") == domain)
                                  .select("metric", "k", "value").iter_rows()}
                        rows.append((protocol, domain, model.name, seed, values, trained, seconds))
                print(f"{model.name} seed {seed}: {trained.epochs} epochs, {seconds:.0f} s, stopped by "
                      f"{trained.stopped_by or '-'}", flush=True)

    print(f"\nFood–Kitchen test users, {os.cpu_count()} CPUs, budget {config.train.max_minutes} min/model, "
          f"loss {config.train.loss}, precision {config.train.precision}, max_seq_len {config.train.max_seq_len}, "
          f"learning rate {config.train.learning_rate}, seeds {args.seeds}: mean ± sd (per seed)")
    print("| protocol | target domain | model | HR@1 | HR@5 | HR@10 | NDCG@5 | NDCG@10 | epochs | train s | stopped by |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple[str, str, str], list] = {}
    for protocol, domain, name, seed, values, trained, seconds in rows:
        groups.setdefault((protocol, domain, name), []).append((values, trained, seconds))
    for (protocol, domain, name), runs in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1])):
        cells = [over_seeds([values[key] for values, _, _ in runs])
                 for key in (("hit", 1), ("hit", 5), ("hit", 10), ("ndcg", 5), ("ndcg", 10))]
        epochs = "/".join(str(t.epochs) for _, t, _ in runs)
        seconds = "/".join(f"{s:.0f}" for _, _, s in runs)
        stopped = "/".join(t.stopped_by or "-" for _, t, _ in runs)
        print(f"| {protocol} | {domain} | {name} | {' | '.join(cells)} | {epochs} | {seconds} | {stopped} |")
    for name, domains in PUBLISHED_FLOORS.items():
        for domain, (hit10, ndcg10) in domains.items():
            print(f"| sampled 1+999 (published floor) | {domain} | {name} | - | - | {hit10:.4f} | - | "
                  f"{ndcg10 if ndcg10 is not None else '-'} | - | - | - |")


if __name__ == "__main__":
    main()
