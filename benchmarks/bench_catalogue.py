"""Training and scoring at catalogue scale: full vs sampled softmax on synthetic catalogues of 100k and 1M items.

Each (catalogue size, loss) row runs in a fresh spawned process, so its peak memory is its own. The
process generates its data from the seed (nothing is pickled across): --users users with power-law
sequence lengths (at least 5 items, --events in all) over items drawn from a Zipf popularity
(--zipf, item_idx shuffled against rank), so the popularity sampler has something to find; each
user's last item is test, the one before valid, the rest train. It builds the preset's model
(--model of --preset, Food–Kitchen by default: SASRec d=64, 2 blocks) and its training windows
(max_seq_len, batch size and batching of the preset), then times --steps training steps after
--warmup ones: forward, `model.next_item_loss`, backward and the model's own Adam, under bf16
autocast where the CPU computes bf16 (--precision). A manual loop, not Lightning's: it measures the
step, not the trainer. Columns:
  steps_per_s          1 / the median step time
  epoch_s              extrapolated, not timed: batches in one epoch × the median step time
  peak_rss_gib         the process's VmHWM after training (data, model, optimizer, steps), before scoring;
                       none for a skipped row
  scoring_users_per_s  full ranking, `score_all` + top-10 over every item, batches of 256 users (fp32,
                       inference mode), median over --score-batches; measured in every row with that
                       row's model: it does not depend on the loss
A full-softmax row whose logits would need more than --max-gib per step (the epoch's largest batch's
labelled positions × items × 4 bytes × 3: logits, their softmax and gradient) is not trained; it is
reported as skipped with that estimate, and its scoring is still measured. Threads: torch's default
(the CPUs) or --threads; on a machine shared with other work use fewer (2 threads on 2 busy CPUs ran 20×
slower than 1 here: OpenMP threads wait on each other).

  .venv/bin/python benchmarks/bench_catalogue.py [--items 100000,1000000] [--losses full,sampled]
      [--events 10000000] [--users 500000] [--threads 2] [--out benchmarks/results/catalogue_scale.csv]
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ["items", "loss", "steps_per_s", "epoch_s", "peak_rss_gib", "scoring_users_per_s",
           "model", "negatives", "sampler", "precision", "events", "gen_s", "windows_s", "threads", "status"]
MIN_LENGTH = 5  # items per user: 3 to train on (2 labelled positions), then valid and test
SEQUENCE_KINDS = ("rnn", "cnn", "sasrec")  # models trained on item windows alone (no text, no mapping)
LOGIT_COPIES = 3  # a full-softmax step holds the [positions, items] logits, their softmax and their gradient


def synthetic_sequences(n_users: int, n_events: int, n_items: int, zipf: float, seed: int):
    """SequenceData of n_users power-law-long sequences (n_events in all) over n_items Zipf-popular items."""
    import numpy as np

    from models.data import SequenceData

    rng = np.random.default_rng(seed)
    spare = rng.pareto(2.0, n_users)  # heavy-tailed like real activity: most users short, a few very long
    spare = spare / spare.sum() * (n_events - MIN_LENGTH * n_users)
    lengths = MIN_LENGTH + np.floor(spare).astype(np.int64)
    lengths[rng.choice(n_users, n_events - lengths.sum(), replace=False)] += 1  # exactly n_events
    popularity = np.cumsum(1.0 / np.arange(1, n_items + 1) ** zipf)  # by popularity rank
    ranks = np.searchsorted(popularity, rng.random(n_events) * popularity[-1])
    items = (rng.permutation(n_items)[ranks] + 1).astype(np.int32)  # item_idx 1..n_items, 0 is padding
    ends = np.cumsum(lengths)
    starts = ends - lengths
    train = [items[s:e - 2] for s, e in zip(starts, ends)]
    valid = [items[e - 2:e - 1] for e in ends]
    test = [items[e - 1:e] for e in ends]
    return SequenceData(n_items + 1, train, valid, test)


def measure(spec: dict) -> dict:
    """One row: generate the data, time training steps of spec's loss, then time full-ranking scoring."""
    import numpy as np
    import torch

    from benchmarks.common import peak_rss_mb
    from conf.schema import TrainConfig
    from models.data import NextItemWindows, left_pad
    from models.losses import build_loss
    from models.kinds import build_model

    row = {key: spec[key] for key in ("items", "loss", "model", "precision", "threads")}
    train = TrainConfig.model_validate(spec["train"])
    row |= {"negatives": train.negatives if train.loss != "full" else "",
            "sampler": train.negative_sampler if train.loss != "full" else ""}
    torch.set_num_threads(spec["threads"])
    started = time.perf_counter()
    data = synthetic_sequences(spec["users"], spec["events"], spec["items"], spec["zipf"], spec["seed"])
    row["events"], row["gen_s"] = spec["events"], round(time.perf_counter() - started, 1)

    torch.manual_seed(spec["seed"])
    model = build_model(spec["kind"], data.n_items, spec["options"])
    by_length = train.batching == "by_length" and not model.reads_padding
    started = time.perf_counter()
    windows = NextItemWindows(data.train, train.max_seq_len, trim_padding=by_length)
    loader = windows.loader(train.batch_size, torch.Generator().manual_seed(spec["seed"]), by_length=by_length)
    batches = list(loader.sampler)  # one epoch's windows per batch, in training order
    row["windows_s"] = round(time.perf_counter() - started, 1)
    labelled = windows.labelled_counts()
    positions = max(int(labelled[batch].sum()) for batch in batches)
    logits_gib = positions * data.n_items * 4 * LOGIT_COPIES / 2**30
    if train.loss == "full" and logits_gib > spec["max_gib"]:
        row["status"] = f"skipped: logits need {logits_gib:.1f} GiB per step (--max-gib {spec['max_gib']:g})"
    else:
        model.next_item_loss = build_loss(train, data.train, data.n_items)
        optimizer = model.make_optimizer()
        model.train()
        seconds = []
        for index, batch in enumerate(batches[:spec["warmup"] + spec["steps"]]):
            inputs, targets = windows.collate(windows.padded[batch])  # [B, T] each
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["precision"] == "bf16"):
                labelled_positions = targets > 0
                interest = model.encode(inputs)[labelled_positions]  # [M, H]
                loss = model.next_item_loss(model, interest, targets[labelled_positions])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if index >= spec["warmup"]:
                seconds.append(time.perf_counter() - started)
        step_s = statistics.median(seconds)
        row |= {"steps_per_s": round(1 / step_s, 3), "epoch_s": round(len(batches) * step_s),
                "peak_rss_gib": round(peak_rss_mb() / 1024, 2),
                "status": f"ok; logits ≈ {logits_gib:.1f} GiB per step" if train.loss == "full" else "ok"}
        del optimizer, loss, interest  # Adam's state and the graph need not sit beside the scores below

    model.eval()
    users = np.arange(min(len(data.train), 256 * (1 + spec["score_batches"])))
    histories = left_pad([np.concatenate((data.train[u], data.valid[u])) for u in users], train.max_seq_len)
    seconds = []
    with torch.inference_mode():
        for index, history in enumerate(histories.split(256)):
            started = time.perf_counter()
            torch.topk(model.score_all(history), k=10, dim=1)
            if index > 0:  # the first batch warms up
                seconds.append((time.perf_counter() - started) / len(history))
    row["scoring_users_per_s"] = round(1 / statistics.median(seconds)) if seconds else ""
    return row


def _worker(spec: dict, queue) -> None:
    try:
        queue.put(measure(spec))
    except Exception as error:  # reported as the row's status; the other rows go on
        queue.put({"status": f"failed: {type(error).__name__}: {error}"})


def measure_in_process(spec: dict) -> dict:
    """`measure(spec)` in a fresh spawned process; a process that dies (e.g. killed for memory) gives a failed row."""
    import multiprocessing
    import queue as queues

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_worker, args=(spec, results))
    process.start()
    while True:
        try:
            row = results.get(timeout=5)
            break
        except queues.Empty:
            if not process.is_alive():
                row = {"status": f"failed: the process exited with code {process.exitcode}"}
                break
    process.join()
    return {"items": spec["items"], "loss": spec["loss"], "model": spec["model"]} | row


def write_csv(rows: list[dict], path: Path) -> None:
    """Write the rows to path atomically (a temporary name in the same folder, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def print_table(rows: list[dict]) -> None:
    """The markdown table, with each row's steps/s relative to full softmax at the same catalogue size."""
    full = {row["items"]: row.get("steps_per_s") for row in rows if row["loss"] == "full"}
    print("| items | loss | steps/s | epoch s (extrapolated) | peak RSS GiB | scoring users/s | "
          "steps/s vs full | status |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        speed, reference = row.get("steps_per_s"), full.get(row["items"])
        ratio = f"{speed / reference:.2f}×" if speed and reference else "—"
        cells = [f"{row['items']:,}", row["loss"], row.get("steps_per_s", "—"), row.get("epoch_s", "—"),
                 row.get("peak_rss_gib", "—"), row.get("scoring_users_per_s", "—"), ratio, row["status"]]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default="100000,1000000", help="catalogue sizes, padding not counted")
    parser.add_argument("--losses", default="full,sampled", help="train.loss values: full, sampled, gbce")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=500_000, help="mean sequence length = events / users")
    parser.add_argument("--zipf", type=float, default=1.0, help="item popularity ∝ 1 / rank^zipf")
    parser.add_argument("--negatives", type=int, default=1024, help="train.negatives (sampled, gbce)")
    parser.add_argument("--sampler", default="popularity", choices=["uniform", "popularity"],
                        help="train.negative_sampler of loss sampled (gbce always draws uniformly)")
    parser.add_argument("--preset", default=str(ROOT / "conf" / "amazon_food_kitchen.yaml"))
    parser.add_argument("--model", default="sasrec", help="name of one of the preset's sequence models")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--score-batches", type=int, default=5, help="timed batches of 256 users (after one warm-up)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="auto: bf16 autocast where the CPU computes bf16 (models.device.cpu_computes_bf16)")
    parser.add_argument("--max-gib", type=float, default=12.0, help="skip full softmax above this logits estimate")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "catalogue_scale.csv"))
    args = parser.parse_args()
    if args.events < MIN_LENGTH * args.users:
        raise SystemExit(f"--events {args.events} is below {MIN_LENGTH} per user for --users {args.users}")

    import flows  # noqa: F401  (environment defaults)
    import torch

    from conf.loading import load_config
    from conf.schema import PlannedModel
    from models.device import cpu_computes_bf16
    from tasks.modelling.training import model_options

    config = load_config(args.preset, ["train.progress_bar=false"])
    chosen = next((m for m in config.models if m.name == args.model and m.kind in SEQUENCE_KINDS), None)
    if chosen is None:
        names = [m.name for m in config.models if m.kind in SEQUENCE_KINDS]
        raise SystemExit(f"--model {args.model}: not one of {args.preset}'s sequence models {names}")
    options = model_options(PlannedModel(label=chosen.name, model=chosen, target_fraction=None), config, None)
    precision = args.precision if args.precision != "auto" else ("bf16" if cpu_computes_bf16() else "fp32")
    threads = args.threads or torch.get_num_threads()
    rows = []
    for items in [int(value) for value in args.items.split(",")]:
        for loss in args.losses.split(","):
            sampler = args.sampler if loss == "sampled" else "uniform"
            train = config.train.model_dump() | {"loss": loss, "negatives": args.negatives, "negative_sampler": sampler}
            spec = {"items": items, "loss": loss, "model": chosen.name, "kind": chosen.kind, "options": options,
                    "train": train, "users": args.users, "events": args.events, "zipf": args.zipf,
                    "seed": args.seed, "steps": args.steps, "warmup": args.warmup, "max_gib": args.max_gib,
                    "score_batches": args.score_batches, "precision": precision, "threads": threads}
            started = time.perf_counter()
            rows.append(measure_in_process(spec))
            print(f"{items:,} items, {loss}: {rows[-1]['status']} ({time.perf_counter() - started:.0f} s in all)",
                  flush=True)
            write_csv(rows, Path(args.out))  # after every row: a long run leaves what it measured

    mean_length = args.events / args.users
    print(f"\n{args.model} ({chosen.kind}) of {Path(args.preset).name}; {args.users:,} users, {args.events:,} events "
          f"(mean length {mean_length:.1f}, Zipf {args.zipf:g}); batch {config.train.batch_size}, max_seq_len "
          f"{config.train.max_seq_len}, batching {config.train.batching}; {precision}; {threads} torch threads on "
          f"{os.cpu_count()} CPUs; {args.steps} timed steps after {args.warmup}; sampled: {args.negatives} "
          f"{args.sampler} negatives. Epoch time is extrapolated: batches per epoch × median step time.")
    print_table(rows)
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
