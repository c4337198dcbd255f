"""Training-step speed on the CPU: what each fast path buys, per extractor, on a preset's data.

For every model of the preset (ML-1M by default) it times training steps (forward, full-softmax
loss, backward, Adam) under four settings, in this process and one after another:
  baseline    random batches of left-padded windows, torch's dropout (the GRU is today's, run from
              the first item; the rest as the loop was before these paths)
  cheap mask  random batches, dropout masks from models.dropout (one 64-bit draw per 8 elements)
  by_length   + length-sorted batches with their padding columns cut (train.batching: by_length)
  bf16        + torch.autocast to bfloat16 (train.precision: bf16-mixed; needs a CPU with bf16 units)
Each repeat times `--batches` batches after `--warmup` ones; the cost is seconds per 1,000 labelled
positions (a batch's time over its labelled positions), and `epoch s` scales it to one epoch of
the preset's training windows (validation not included). Medians over repeats, and the ratio to
the baseline, measured in this one run.

  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train_speed.py [--config conf/ml1m.yaml]
      [--set data.recbole.path=/work/shared/datasets/ml-1m] [--models gru,caser,sasrec] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = ("baseline", "cheap mask", "by_length", "bf16")


@contextmanager
def torch_dropout():
    """Draw every dropout mask with torch's own kernels, as the loop did before models.dropout."""
    import torch.nn.functional as F

    import models.attention as attention
    import models.dropout as dropout_module

    def torch_kernel(x, p, training=True):
        return F.dropout(x, p, training=training)

    saved = dropout_module.dropout, attention.dropout
    dropout_module.dropout = attention.dropout = torch_kernel
    try:
        yield
    finally:
        dropout_module.dropout, attention.dropout = saved


def time_steps(model, windows, setting: str, batch_size: int, batches: int, warmup: int, seed: int) -> float:
    """Seconds per 1,000 labelled positions over `batches` timed training steps."""
    import torch

    by_length = setting in ("by_length", "bf16")
    windows.trim_padding = by_length
    loader = windows.loader(batch_size, torch.Generator().manual_seed(seed), by_length=by_length)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    seconds, positions = 0.0, 0
    for index, (inputs, targets) in enumerate(loader):
        if index == warmup + batches:
            break
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setting == "bf16"):
            labelled = targets > 0
            scores = model.item_scores(model.encode(inputs)[labelled])
            loss = torch.nn.functional.cross_entropy(scores.float(), targets[labelled])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if index >= warmup:
            seconds += time.perf_counter() - started
            positions += int(labelled.sum())
    return 1000 * seconds / positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "conf" / "ml1m.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--models", default="gru,caser,sasrec")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    import flows  # noqa: F401
    import torch

    from conf.loading import load_config
    from models.data import NextItemWindows
    from models.kinds import build_model
    from tasks.data.ingestion import ingest_dataset
    from tasks.data.prepare import prepare_data
    from tasks.data.preprocessing import load_sequence_data
    from tasks.modelling.training import model_options

    config = load_config(args.config, ["train.progress_bar=false", *args.overrides])
    batch_size = config.train.batch_size
    with tempfile.TemporaryDirectory(prefix="itx-speed-") as folder:
        cache = Path(folder)
        raw = ingest_dataset(config.data, config.seed, cache, config.privacy)
        prepared = prepare_data(raw, config.preprocess, config.split, config.scenario,
                                config.evaluation.group_attribute, cache, config.seed)
        data = load_sequence_data(prepared)
    windows = NextItemWindows(data.train, config.train.max_seq_len)
    epoch_positions = int(windows.labelled_counts().sum())
    padding = 1 - float((windows.padded[:, :-1] > 0).float().mean())
    rows = []
    for planned in [p for p in config.model_plan() if p.model.name in args.models.split(",")]:
        options = model_options(planned, config, None)
        costs: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
        for repeat in range(args.repeats):
            for setting in SETTINGS:
                torch.manual_seed(repeat)
                model = build_model(planned.model.kind, data.n_items, options)
                with torch_dropout() if setting == "baseline" else nullcontext():
                    cost = time_steps(model, windows, setting, batch_size, args.batches, args.warmup, seed=repeat)
                costs[setting].append(cost)
                print(f"{planned.model.name} repeat {repeat} {setting}: {cost:.3f} s per 1k positions", flush=True)
        baseline = statistics.median(costs["baseline"])
        for setting in SETTINGS:
            median = statistics.median(costs[setting])
            rows.append((planned.model.name, options.get("embedding_dim"), setting, median,
                         median * epoch_positions / 1000, baseline / median))

    print(f"\n{config.name}: {len(windows)} training windows of {config.train.max_seq_len}, {epoch_positions:,} "
          f"labelled positions, {padding:.0%} of random-batch positions are padding; batch {batch_size}; "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch threads "
          f"{torch.get_num_threads()}; {args.repeats} repeats × {args.batches} batches")
    print("| model | d | setting | median s / 1k positions | epoch s (training only) | speed-up vs baseline |")
    print("|---|---:|---|---:|---:|---:|")
    for name, dim, setting, median, epoch_seconds, speedup in rows:
        print(f"| {name} | {dim} | {setting} | {median:.3f} | {epoch_seconds:.1f} | {speedup:.2f}× |")


if __name__ == "__main__":
    main()
