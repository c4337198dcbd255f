"""GPU benchmark: training speed, full-catalogue scoring speed and quality of the sequential models,
on CUDA or on the CPU, at 32-true or mixed precision.

Built for a GPU machine without polars, MLflow or Prefect: it reads the prepared sequences from the
.npz files that benchmarks/prepare_gpu_data.py writes here with the pipeline's own ingestion and
preprocessing, and imports only models/ and conf/schema.py (pydantic). Each run trains one model
with `SequentialRecommender.fit` (the pipeline's Lightning loop: validation NDCG@10 every epoch, best
epoch kept) for a fixed number of epochs (early stopping cannot trigger), then ranks every test user
against the whole catalogue on the run's device.

A run is `dataset:model[:accelerator[:precision[:epochs]]]`; omitted parts take --accelerator,
--precision and --epochs. Per run it reports seconds per epoch (median over the epochs after the
first, which pays for kernel selection and warm-up; training part alone and with validation and
checkpointing), training windows and labelled events per second, scoring throughput, valid and test
NDCG@10, and peak GPU memory. The CSV is rewritten after every run, so a run cut short by a timeout
still leaves the finished ones.

  python benchmarks/bench_gpu.py --data .gpu --runs demo:gru,demo:sasrec,ml1m:gru --accelerator cuda \\
      --precision 32-true --epochs demo=5,ml1m=3 --max-minutes 3 --out gpu.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf.schema import TrainConfig  # noqa: E402
from models.attention import SASRecRecommender  # noqa: E402
from models.base import SequentialRecommender, rankable_scores  # noqa: E402
from models.data import NextItemWindows, SequenceData, split_loader  # noqa: E402
from models.device import on_device, pins_memory, scoring_device  # noqa: E402
from models.extractors import CaserRecommender, GRURecommender  # noqa: E402
from models.metrics import ndcg_at_k  # noqa: E402

# Only the neural sequence models: the registry would also import scipy (item-kNN) and transformers.
MODEL_CLASSES: dict[str, type[SequentialRecommender]] = {
    cls.kind: cls for cls in (GRURecommender, CaserRecommender, SASRecRecommender)
}
SPLITS = ("train", "valid", "test", "context")
# The pipeline's heavy dependencies, absent on the GPU machine: importing one there would fail.
FORBIDDEN_MODULES = ("polars", "mlflow", "prefect")
COLUMNS = ("dataset", "model", "device", "device_name", "precision", "epochs", "s_per_epoch", "train_s_per_epoch",
           "first_epoch_s", "train_windows_per_s", "train_events_per_s", "fit_s", "eval_users_per_s",
           "score_users_per_s", "valid_ndcg10", "test_ndcg10", "peak_gpu_mb", "users", "items", "windows",
           "parameters", "deterministic", "note")


# --- the prepared sequences ----------------------------------------------------------------------

def write_npz(path: Path, data: SequenceData, meta: dict) -> None:
    """Write the per-user item_idx arrays of every split (concatenated, with lengths) and `meta` (JSON)."""
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
    for split in SPLITS:
        sequences = getattr(data, split)
        arrays[f"{split}_lengths"] = np.array([len(s) for s in sequences], np.int32)
        arrays[f"{split}_items"] = (np.concatenate(sequences) if sequences else np.empty(0)).astype(np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(temporary, **arrays)
    temporary.replace(path)


def read_npz(path: Path) -> tuple[SequenceData, dict]:
    """The SequenceData and meta written by `write_npz`."""
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(str(stored["meta"]))

        def arrays(split: str) -> list[np.ndarray]:
            items, lengths = stored[f"{split}_items"].astype(np.int64), stored[f"{split}_lengths"]
            return np.split(items, np.cumsum(lengths)[:-1]) if len(lengths) else []

        splits = {split: arrays(split) for split in SPLITS}
    return SequenceData(meta["n_items"], splits["train"], splits["valid"], splits["test"], splits["context"]), meta


# --- timing ----------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock times include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(Callback):
    """Wall-clock seconds of each training epoch: the training batches alone, and with validation and checkpointing."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.train_seconds: list[float] = []
        self._start: float | None = None
        self._train_end: float | None = None

    def _now(self, trainer: pl.Trainer) -> float:
        synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start, self._train_end = self._now(trainer), None

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._start is not None and self._train_end is None:
            self._train_end = self._now(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        end = self._now(trainer)
        self.epoch_seconds.append(end - self._start)
        self.train_seconds.append((self._train_end or end) - self._start)


def steady(seconds: list[float]) -> float:
    """Median over the epochs after the first (the first alone when there is one), NaN when none."""
    if not seconds:
        return math.nan
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


# --- scoring ---------------------------------------------------------------------------------------

def score_test_users(model: SequentialRecommender, data: SequenceData, device: torch.device, batch_size: int,
                     exclude_seen: bool) -> tuple[float, float, float]:
    """(eval users/s, scoring users/s, test NDCG@10) of ranking every test user against the whole catalogue.

    eval: as the evaluation task does it: batches built on the CPU, copied to the device, scored, masked,
    NDCG on the device; only per-user NDCG comes back. scoring: the same batches already on the
    device, scores and top-10 only: what the device itself sustains.
    """
    model = on_device(model, device).eval()
    pinned = pins_memory(device)
    loader = split_loader(data, "test", model.max_seq_len, batch_size, pin_memory=pinned)
    with torch.inference_mode():
        warm_up = next(iter(loader)).to(device)
        rankable_scores(model, warm_up, exclude_seen).topk(10, dim=1)
        synchronize(device)
        started = time.perf_counter()
        values = []
        for batch in loader:
            batch = batch.to(device, non_blocking=pinned)
            scores = rankable_scores(model, batch, exclude_seen)  # [B, n_items]
            values.append(ndcg_at_k(scores, batch.mask(batch.target_rows, batch.target_items, model.n_items), k=10))
        ndcg = torch.cat(values).cpu()
        eval_seconds = time.perf_counter() - started
        staged = [batch.to(device) for batch in loader]
        score_seconds = math.inf
        for _ in range(3 if device.type == "cuda" else 1):  # best of 3 where a pass takes milliseconds
            synchronize(device)
            started = time.perf_counter()
            top = [rankable_scores(model, batch, exclude_seen).topk(10, dim=1).indices for batch in staged]
            torch.cat(top).cpu()
            score_seconds = min(score_seconds, time.perf_counter() - started)
    return len(ndcg) / eval_seconds, len(ndcg) / score_seconds, float(ndcg.mean())


# --- one run ---------------------------------------------------------------------------------------

def parse_run(spec: str, args: argparse.Namespace, epochs: dict[str, int]) -> dict:
    """A run spec `dataset:model[:accelerator[:precision[:epochs]]]` with the defaults filled in."""
    parts = spec.split(":")
    if not 2 <= len(parts) <= 5:
        raise SystemExit(f"--runs: '{spec}' is not dataset:model[:accelerator[:precision[:epochs]]]")
    dataset, model = parts[:2]
    accelerator = parts[2] if len(parts) > 2 and parts[2] else args.accelerator
    precision = parts[3] if len(parts) > 3 and parts[3] else args.precision
    n_epochs = int(parts[4]) if len(parts) > 4 and parts[4] else epochs.get(dataset, epochs.get("*", 3))
    return {"dataset": dataset, "model": model, "accelerator": accelerator, "precision": precision, "epochs": n_epochs}


def run_one(run: dict, data: SequenceData, meta: dict, args: argparse.Namespace, deterministic: bool) -> dict:
    """Train and score one (dataset, model, accelerator, precision); the table row."""
    settings = meta["models"].get(run["model"])
    if settings is None:
        raise ValueError(f"model '{run['model']}' is not prepared for {run['dataset']}; "
                         f"prepared: {sorted(meta['models'])}")
    device = scoring_device(run["accelerator"])
    train = TrainConfig(**meta["train"], max_epochs=run["epochs"], patience=run["epochs"] + 1,
                        max_minutes=args.max_minutes, accelerator=run["accelerator"], precision=run["precision"],
                        deterministic=deterministic, progress_bar=False)
    pl.seed_everything(meta["seed"], workers=True)  # before building: initialisation draws from it too
    model = MODEL_CLASSES[settings["kind"]](n_items=data.n_items, **settings["options"])
    timer = EpochTimer()
    model.configure_callbacks = lambda: [timer]  # Lightning merges a module's own callbacks into the Trainer's
    windows = NextItemWindows(data.train, model.max_seq_len)
    events = int(windows.collate(windows.padded)[1].gt(0).sum())
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="itx-gpu-") as checkpoints:
        summary = model.fit(data, train, meta["seed"], checkpoint_dir=Path(checkpoints))
    score_batch = args.score_batch or meta["eval_batch_size"]
    eval_rate, score_rate, test_ndcg = score_test_users(model, data, device, score_batch, meta["exclude_seen"])
    train_epoch = steady(timer.train_seconds)
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "epochs": len(timer.epoch_seconds),
        "s_per_epoch": steady(timer.epoch_seconds),
        "train_s_per_epoch": train_epoch,
        "first_epoch_s": timer.epoch_seconds[0] if timer.epoch_seconds else math.nan,
        "train_windows_per_s": len(windows) / train_epoch,
        "train_events_per_s": events / train_epoch,
        "fit_s": summary.seconds,
        "eval_users_per_s": eval_rate,
        "score_users_per_s": score_rate,
        "valid_ndcg10": summary.best_valid_ndcg,
        "test_ndcg10": test_ndcg,
        "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else math.nan,
        "users": len(data.train),
        "items": data.n_items - 1,
        "windows": len(windows),
        "parameters": sum(p.numel() for p in model.parameters()),
        "deterministic": deterministic,
    }


# --- report ----------------------------------------------------------------------------------------

def formatted(value: object) -> str:
    """A table cell: floats to 4 significant figures, NaN and None as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, cut to 160 characters."""
    return (str(error).splitlines() or [""])[0][:160]


def write_csv(rows: list[dict], path: Path) -> None:
    """All rows so far as CSV (rewritten after every run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: row.get(c) for c in COLUMNS} for row in rows)


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    shown = ("dataset", "model", "device", "precision", "epochs", "s_per_epoch", "train_s_per_epoch", "first_epoch_s",
             "train_windows_per_s", "eval_users_per_s", "score_users_per_s", "valid_ndcg10", "test_ndcg10",
             "peak_gpu_mb", "note")
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(formatted(row.get(c)) for c in shown) + " |" for row in rows]
    return "\n".join(lines)


def environment() -> str:
    """One line on the software and hardware the runs use."""
    gpu = (f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
           if torch.cuda.is_available() else "no CUDA device")
    return (f"Python {platform.python_version()}, torch {torch.__version__}, pytorch-lightning {pl.__version__}; "
            f"{gpu}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu", help="folder with <dataset>.npz")
    parser.add_argument("--runs", default="demo:gru,demo:caser,demo:sasrec,ml1m:gru,ml1m:sasrec",
                        help="comma-separated dataset:model[:accelerator[:precision[:epochs]]]")
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda", "gpu"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "16-mixed", "bf16-mixed"])
    parser.add_argument("--epochs", default="demo=5,ml1m=3", help="per dataset, e.g. demo=5,ml1m=3 (*=N: any other)")
    parser.add_argument("--max-minutes", type=float, default=3.0, help="training time cap per run (Lightning max_time)")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="skip the remaining runs once this much time has passed")
    parser.add_argument("--score-batch", type=int, default=None, help="users scored at once (default: the config's)")
    parser.add_argument("--nondeterministic", action="store_true",
                        help="train with deterministic=False (default: the pipeline's deterministic=True)")
    parser.add_argument("--matmul-precision", choices=["highest", "high", "medium"], default=None,
                        help="torch.set_float32_matmul_precision (high: TF32 on tensor cores); default unchanged")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="CSV of the results")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=".*Tensor Cores.*")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning_fabric").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.matmul_precision:
        torch.set_float32_matmul_precision(args.matmul_precision)
    epochs = {name: int(n) for name, n in (item.split("=") for item in args.epochs.split(",") if item)}
    runs = [parse_run(spec, args, epochs) for spec in args.runs.split(",") if spec]
    print(environment(), flush=True)

    loaded: dict[str, tuple[SequenceData, dict]] = {}
    rows: list[dict] = []
    started = time.perf_counter()
    for run in runs:
        label = f"{run['dataset']}:{run['model']} on {run['accelerator']} at {run['precision']}, {run['epochs']} epochs"
        row = dict(run)
        if args.budget_minutes and time.perf_counter() - started > args.budget_minutes * 60:
            print(f"skipped {label}: the {args.budget_minutes} min budget is spent", flush=True)
            rows.append(row | {"note": "skipped (budget)"})
            continue
        print(f"\n=== {label}", flush=True)
        try:
            if run["dataset"] not in loaded:
                loaded[run["dataset"]] = read_npz(args.data / f"{run['dataset']}.npz")
            data, meta = loaded[run["dataset"]]
            try:
                row |= run_one(run, data, meta, args, deterministic=not args.nondeterministic)
            except Exception as error:
                if args.nondeterministic or run["accelerator"] == "cpu":
                    raise
                # Most likely an op without a deterministic CUDA kernel (or a deterministic path that
                # fails): measure anyway, and say so.
                traceback.print_exc()
                print("deterministic=True failed; again with deterministic=False", flush=True)
                row |= run_one(run, data, meta, args, deterministic=False)
                row["note"] = f"deterministic=True failed: {type(error).__name__}: {first_line(error)}"
        except Exception as error:  # one failing run must not cost the others
            traceback.print_exc()
            row["note"] = f"error: {type(error).__name__}: {first_line(error)}"
        rows.append(row)
        print(markdown([row]).splitlines()[-1], flush=True)
        if args.out:
            write_csv(rows, args.out)

    print(f"\n{environment()}\nTotal {time.perf_counter() - started:.0f} s\n")
    print(markdown(rows), flush=True)
    if args.out:
        write_csv(rows, args.out)
        print(f"written {args.out}")
    imported = [name for name in FORBIDDEN_MODULES if sys.modules.get(name) is not None]
    if imported:
        print(f"FAIL: imported {imported}, which the GPU machine does not have", file=sys.stderr)
        return 3
    return 1 if any(str(row.get("note", "")).startswith("error") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
