"""Is a transfer model complementary to the pooled model, or only another draw of it?

Blending two models' scores gains over either alone even when both learnt the same thing (their errors
differ by seed). So a blend of the pooled model and a transfer model (the `hybrid` idea) is compared with
the honest control: the same blend of the pooled model and the pooled model trained with another seed.
Only when the first blend beats the second does the transfer model bring something pooling lacks.

Models come from a transfer preset, trained (or reused from --cache) each in a fresh process; every
variant is scored on the first seed's report users with the run's own evaluation (protocol: the
preset's). Scores are blended 50/50 after standardising each model's scores per user (no weight is
fitted, so nothing is chosen on test). The data must not depend on the seed (the preset's own split,
a target fraction of 1): checked.

  .venv/bin/python benchmarks/bench_ensemble.py --config conf/food_kitchen_transfer.yaml \
      --pooled sasrec_pooled --transfer domain_sasrec --seeds 42,43 [--set key=value ...] [--cache DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import parse_seeds, train_in_process  # noqa: E402


class StandardisedBlend:
    """Scores the mean of each model's per-user standardised scores (items a model rules out stay out)."""

    def __init__(self, *models):
        self.models = models
        self.n_items = models[0].n_items

    def score_all(self, history):
        parts = []
        for model in self.models:
            scores = model.score_all(history).float()
            finite = scores.isfinite()
            values = scores.masked_fill(~finite, 0.0)
            count = finite.sum(dim=1, keepdim=True)
            mean = values.sum(dim=1, keepdim=True) / count
            # (a user with one candidate, or a model that scores all alike, has no spread: its scores stay 0)
            spread = (((values - mean) * finite) ** 2).sum(dim=1, keepdim=True).div(count).sqrt().clamp_min(1e-12)
            parts.append(((values - mean) / spread).masked_fill(~finite, float("-inf")))
        return sum(parts) / len(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--pooled", required=True, help="the pooled model's name in the preset")
    parser.add_argument("--transfer", required=True, help="the transfer model's name in the preset")
    parser.add_argument("--seeds", default="42,43", help="two seeds: the scored one, and the pooled control's")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--cache", help="keep the prepared data and trained models here (default: a temporary folder)")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    if len(seeds) != 2:
        raise SystemExit(f"--seeds: expected two seeds, got {args.seeds!r}")

    import flows  # noqa: F401
    import numpy as np
    import polars as pl

    from conf.loading import load_config
    from models.kinds import load_model
    from tasks.data.ingestion import ingest_dataset
    from tasks.data.prepare import prepare_data
    from tasks.modelling.evaluation import score_report_users
    from tasks.modelling.training import training_settings
    from tasks.modelling.transfer_report import paired_bootstrap_gain

    with contextlib.nullcontext(args.cache) if args.cache else tempfile.TemporaryDirectory(prefix="itx-blend-") as folder:
        cache = Path(folder)
        trained, prepared_of, configs = {}, {}, {}
        for seed in seeds:
            config = training_settings(load_config(args.config, ["train.progress_bar=false", *args.overrides,
                                                                 f"seed={seed}"]))
            raw = ingest_dataset(config.data, config.seed, cache)
            prepared = prepare_data(raw, config.preprocess, config.split, config.scenario,
                                    config.evaluation.group_attribute, cache, config.seed)
            plan = {planned.model.name: planned for planned in config.model_plan()}
            for name in (args.pooled, args.transfer) if seed == seeds[0] else (args.pooled,):
                if name not in plan:
                    raise SystemExit(f"--pooled/--transfer: no model {name!r} in {args.config} (has {sorted(plan)})")
                trained[name, seed] = train_in_process(prepared, plan[name], config, cache, None)[0]
            prepared_of[seed], configs[seed] = prepared, config
        first, second = seeds
        if prepared_of[first].sequences.fingerprint != prepared_of[second].sequences.fingerprint:
            raise SystemExit("the prepared data differs between the seeds (a seeded split or target sample): "
                             "models of one seed cannot be scored on the other's users")
        config, prepared = configs[first], prepared_of[first]
        if trained[args.transfer, first].reads != trained[args.pooled, first].reads:
            raise SystemExit(f"--transfer {args.transfer} reads the {trained[args.transfer, first].reads} items and "
                             f"--pooled {args.pooled} the {trained[args.pooled, first].reads} ones: a blend ranks both on "
                             "the same histories, so both must read the same items")
        models = {key: load_model(Path(record.model_file.path)).eval() for key, record in trained.items()}
        pooled, transfer, pooled_again = models[args.pooled, first], models[args.transfer, first], models[args.pooled, second]
        variants = {
            f"{args.pooled} (seed {first})": pooled,
            f"{args.transfer} (seed {first})": transfer,
            f"{args.pooled} (seed {second})": pooled_again,
            f"blend: {args.pooled} + {args.transfer}": StandardisedBlend(pooled, transfer),
            f"control: {args.pooled} + {args.pooled} (seed {second})": StandardisedBlend(pooled, pooled_again),
        }
        values = {}
        for label, model in variants.items():
            frame = score_report_users(prepared, trained[args.pooled, first], config.scenario, config.transfer,
                                       config.evaluation, config.train.max_seq_len, config.seed, model=model)
            for subset, part in frame.filter(pl.col("split") == "test").sort("user_idx").group_by(
                    "subset", maintain_order=True):
                values[label, subset[0]] = part["ndcg_at_10"].to_numpy()

    labels = list(variants)
    blend, control, single = labels[3], labels[4], labels[0]
    print(f"{config.scenario.name}: NDCG@10 on the test users of seed {first} (protocol: {args.config}); "
          f"gains with paired bootstrap 95% CIs over users")
    print("| subset | " + " | ".join(labels) + " | blend vs single | control vs single | blend vs control |")
    print("|---" * (len(labels) + 4) + "|")
    for subset in sorted({subset for _, subset in values}):
        means = [f"{np.mean(values[label, subset]):.4f}" for label in labels]
        gains = []
        for a, b in ((blend, single), (control, single), (blend, control)):
            gain = paired_bootstrap_gain(values[a, subset], values[b, subset], n_samples=1000, seed=0)
            gains.append(f"{gain.rel_gain:+.1%} [{gain.ci_low:+.1%}, {gain.ci_high:+.1%}]")
        print(f"| {subset} | " + " | ".join(means + gains) + " |")


if __name__ == "__main__":
    main()
