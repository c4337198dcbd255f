"""SASRec settings sweep on ML-1M on a GPU: which settings reach the highest NDCG@10 at convergence,
and after how many epochs (to choose what the 30-minute CPU benchmark, benchmarks/bench_ml1m.py, runs).

Reads .gpu/ml1m.npz (benchmarks/prepare_gpu_data.py) and imports only models/ and conf/ (run it with
PYTHONPATH pointing at a snapshot of both when the working tree is being edited). Each variant
trains with the pipeline's loop (early stopping on validation NDCG@10, best epoch kept) and is
scored on test with seen items removed. Prints one line per variant and a table; writes --out CSV.

  python benchmarks/sweep_sasrec_gpu.py --data .gpu --minutes 1.2 --out sweep.csv
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from benchmarks.bench_gpu import read_npz, score_test_users  # noqa: E402
from conf.schema import TrainConfig  # noqa: E402
from models.attention import SASRecRecommender  # noqa: E402
from models.device import scoring_device  # noqa: E402

# (label, SASRec options, training settings) on top of the ML-1M preset's.
VARIANTS = [
    ("d64 drop0.2 lr3e-3", {}, {}),
    ("d64 drop0.2 lr3e-3 decay", {}, {"lr_decay_factor": 0.3, "lr_decay_patience": 2}),
    ("d64 drop0.3 lr3e-3 decay", {"dropout": 0.3}, {"lr_decay_factor": 0.3, "lr_decay_patience": 2}),
    ("d128 drop0.2 lr3e-3 decay", {"embedding_dim": 128}, {"lr_decay_factor": 0.3, "lr_decay_patience": 2}),
    ("d128 h2 drop0.3 lr2e-3 decay", {"embedding_dim": 128, "num_heads": 2, "dropout": 0.3},
     {"learning_rate": 0.002, "lr_decay_factor": 0.3, "lr_decay_patience": 2}),
    ("d64 b3 drop0.2 lr3e-3 decay", {"num_blocks": 3}, {"lr_decay_factor": 0.3, "lr_decay_patience": 2}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu")
    parser.add_argument("--minutes", type=float, default=1.2, help="training cap per variant")
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--accelerator", default="cuda")
    parser.add_argument("--only", type=int, default=None, help="run only the first N variants (a dry run)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data, meta = read_npz(args.data / "ml1m.npz")
    base_options = meta["models"]["sasrec"]["options"]
    device = scoring_device(args.accelerator)
    rows = []
    for label, options, settings in VARIANTS[:args.only]:
        train = TrainConfig(**(meta["train"] | {"max_epochs": 300, "patience": args.patience, "progress_bar": False,
                                                "max_minutes": args.minutes, "accelerator": args.accelerator}
                               | settings))
        model_options = base_options | options | {"learning_rate": train.learning_rate}
        pl.seed_everything(meta["seed"], workers=True)
        model = SASRecRecommender(n_items=data.n_items, **model_options)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as checkpoints:
            summary = model.fit(data, train, meta["seed"], checkpoint_dir=Path(checkpoints))
        _, _, test_ndcg = score_test_users(model, data, device, 1024, exclude_seen=True)
        row = {"variant": label, "epochs": summary.epochs, "best_valid_ndcg10": round(summary.best_valid_ndcg or 0.0, 4),
               "test_ndcg10": round(test_ndcg, 4), "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(row, flush=True)
        if args.out:
            with open(args.out, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(row))
                writer.writeheader()
                writer.writerows(rows)
    print("| variant | epochs | best valid NDCG@10 | test NDCG@10 | s |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['epochs']} | {row['best_valid_ndcg10']} | {row['test_ndcg10']} | "
              f"{row['seconds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
