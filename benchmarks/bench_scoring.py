"""Full-catalogue scoring and export at scale, in bounded memory: synthetic users × a large catalogue.

Scores every user against the whole catalogue with a GRU-sized model (untrained weights: speed does
not depend on them), takes the top K unseen items, explains each with its reasons
(`models/explain.py`) and appends the rows to a Parquet file, one batch of users at a time, through
the export's own functions (`tasks.modelling.export`: `rankable_scores` masking, `recommendation_frame`,
`RecommendationWriter`). Users' histories are generated batch by batch from a seeded generator, so
no more than one batch of users, scores or rows is ever held: peak memory should not depend on the
number of users, and running at two sizes shows whether it does.

Reports, per run: users/s end to end and per phase (generate, score = score_all + masking, top-k,
reasons, frame + Parquet write), the one-time cost of the reasons' per-item table, peak RSS (VmHWM)
and RSS after start-up (imports, model, catalogue), and the machine's measured matmul rate: a
[B, D] × [D, N] float32 matmul of the scoring step's own shape (nn.Linear's addmm, bias included)
timed alone every --probe-every batches during the run (so under the same load), in GFLOP/s,
against the FLOP rate the scoring achieves (GRU over the history + the output layer), for the score
phase alone and end to end (top-k, masking, reasons and writing count as time, not FLOPs).

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scoring.py --users 100000 --items 100000
  ... --users 1000000 --out-csv benchmarks/results/bench_scoring.csv   (appends one row per run)
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "HF_HUB_OFFLINE": "1",
                   # Each batch's [B, n_items] scores are a fresh ~400 MB allocation; on the CPU, faulting in
                   # its 4 KB pages cost about as much as the matmul here. PyTorch's CPU allocator backs large
                   # allocations with transparent huge pages under this switch (set it for exports too).
                   "THP_MEM_ALLOC_ENABLE": "1"}.items():
    os.environ.setdefault(key, value)

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import peak_rss_mb  # noqa: E402
from models.base import rankable_scores  # noqa: E402
from models.data import EvalBatch  # noqa: E402
from models.explain import evidence_for, explain  # noqa: E402
from models.extractors import GRURecommender  # noqa: E402
from tasks.modelling.export import RankedBatch, RecommendationWriter, recommendation_frame  # noqa: E402


def current_rss_mb() -> float:
    """This process's resident memory now (VmRSS), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MatmulProbe:
    """The machine's matmul rate on the scoring step's own shape: addmm of [batch, dim] × [dim, n_items] +
    bias into a preallocated output (nn.Linear's kernel, without the allocation), timed alone.

    Sampled during the run (`sample`, between batches), not once before it: on a shared machine the
    rate drifts with the load, and the ratio should compare scoring and matmul under the same load.
    """

    def __init__(self, batch: int, dim: int, n_items: int, device: torch.device):
        generator = torch.Generator(device="cpu").manual_seed(0)
        self.x = torch.randn(batch, dim, generator=generator).to(device)
        self.weight = torch.randn(n_items, dim, generator=generator).to(device)
        self.bias = torch.randn(n_items, generator=generator).to(device)
        self.out = torch.empty(batch, n_items, device=device)
        self.device, self.flops = device, 2 * batch * dim * n_items
        self.seconds, self.samples = 0.0, 0
        self.sample()  # warm-up (first touch of the output, kernel choice): not counted
        self.seconds, self.samples = 0.0, 0

    def sample(self) -> float:
        """Time one matmul; its seconds."""
        synchronize(self.device)
        started = time.perf_counter()
        torch.addmm(self.bias, self.x, self.weight.T, out=self.out)
        synchronize(self.device)
        elapsed = time.perf_counter() - started
        self.seconds, self.samples = self.seconds + elapsed, self.samples + 1
        return elapsed

    def gflops(self) -> float:
        """Mean rate over the samples, GFLOP/s."""
        return self.flops * self.samples / self.seconds / 1e9


def gru_flops_per_user(history: int, embedding_dim: int, hidden_dim: int, n_items: int) -> tuple[float, float]:
    """(GRU FLOPs over the history, output-layer FLOPs) per user: multiply-adds counted as 2."""
    gru = history * 2 * 3 * (embedding_dim * hidden_dim + hidden_dim * hidden_dim)
    head = 2 * hidden_dim * n_items
    return float(gru), float(head)


def synthetic_batch(start: int, size: int, history: int, n_items: int, seed: int) -> tuple[EvalBatch, pl.Series]:
    """Users start..start+size-1: random histories of `history` item_idx (their own generator, so any
    batch is the same whatever ran before) and their ids; positions are local to the batch."""
    rng = np.random.default_rng([seed, start])
    items = torch.as_tensor(rng.integers(1, n_items, size=(size, history)), dtype=torch.long)  # [B, T]
    rows = torch.arange(size).repeat_interleave(history)
    empty = torch.empty(0, dtype=torch.long)
    user_ids = pl.Series("user_id", np.arange(start, start + size)).cast(pl.String).str.zfill(7)
    return EvalBatch(items, rows, items.flatten(), empty, empty, torch.arange(size)), "u" + user_ids


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n_items = args.items + 1  # + padding
    model = GRURecommender(n_items, embedding_dim=args.dim, hidden_dim=args.dim, max_seq_len=args.history,
                           dropout=0.0).eval().to(device)
    item_ids = pl.Series([f"i{i:07d}" for i in range(1, n_items)]).to_arrow()
    evidence = evidence_for(model) if args.reasons > 0 else None
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="itx-bench-scoring-"))
    parquet = out_dir / "recommendations.parquet"

    matmul = MatmulProbe(args.batch, args.dim, n_items, device)
    with torch.inference_mode():
        started = time.perf_counter()
        if evidence is not None:  # the per-item table the reasons need, built once
            evidence.tables(args.history, device)
        synchronize(device)
        table_s = time.perf_counter() - started
    baseline_rss = current_rss_mb()

    phases = dict.fromkeys(["generate", "score", "topk", "reasons", "write"], 0.0)
    rows, probing = 0, 0.0
    started = time.perf_counter()
    with torch.inference_mode(), RecommendationWriter(parquet) as writer:
        for number, start in enumerate(range(0, args.users, args.batch)):
            if number % args.probe_every == 0:
                probing += matmul.sample()  # not part of the scoring's time
            size = min(args.batch, args.users - start)
            tick = time.perf_counter()
            batch, user_ids = synthetic_batch(start, size, args.history, n_items, args.seed)
            batch = batch.to(device)
            phases["generate"] += time.perf_counter() - tick

            tick = time.perf_counter()
            scores = rankable_scores(model, batch, exclude_seen=True)  # [B, N]
            synchronize(device)
            phases["score"] += time.perf_counter() - tick

            tick = time.perf_counter()
            ranked = scores.topk(args.top_k, dim=1)
            del scores
            synchronize(device)
            phases["topk"] += time.perf_counter() - tick

            tick = time.perf_counter()
            if evidence is not None:
                reasons = explain(evidence, batch.history, ranked.indices, args.reasons)
                reason_items, reason_scores = reasons.items.cpu().numpy(), reasons.scores.cpu().numpy()
            else:
                reason_items = np.zeros((size, args.top_k, 0), np.int64)
                reason_scores = np.zeros((size, args.top_k, 0), np.float32)
            phases["reasons"] += time.perf_counter() - tick

            tick = time.perf_counter()
            chunk = RankedBatch(batch.users.cpu().numpy(), ranked.indices.cpu().numpy(), ranked.values.cpu().numpy(),
                                reason_items, reason_scores)
            frame = recommendation_frame(chunk, user_ids, item_ids)
            writer.write(frame)
            rows += frame.height
            phases["write"] += time.perf_counter() - tick
    total_s = time.perf_counter() - started - probing
    file_mb = parquet.stat().st_size / 1e6
    if not args.keep:
        shutil.rmtree(out_dir, ignore_errors=True)

    gru, head = gru_flops_per_user(args.history, args.dim, args.dim, n_items)
    score_gflops = args.users * (gru + head) / phases["score"] / 1e9
    end_to_end_gflops = args.users * (gru + head) / total_s / 1e9
    cpu = f"cpu ({platform.processor() or platform.machine()})"
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "threads": args.threads, "thp": os.environ.get("THP_MEM_ALLOC_ENABLE", "0"), "users": args.users,
        "items": args.items, "history": args.history, "dim": args.dim,
        "top_k": args.top_k, "reasons": args.reasons, "batch": args.batch, "rows": rows,
        "total_s": round(total_s, 1), "users_per_s": round(args.users / total_s),
        "score_users_per_s": round(args.users / phases["score"]),
        **{f"{name}_s": round(seconds, 1) for name, seconds in phases.items()},
        "reason_table_s": round(table_s, 2),
        "matmul_gflops": round(matmul.gflops(), 1), "matmul_samples": matmul.samples,
        "score_gflops": round(score_gflops, 1), "end_to_end_gflops": round(end_to_end_gflops, 1),
        "score_vs_matmul": round(score_gflops / matmul.gflops(), 3),
        "end_to_end_vs_matmul": round(end_to_end_gflops / matmul.gflops(), 3),
        "startup_rss_mb": round(baseline_rss), "peak_rss_mb": round(peak_rss_mb()),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else "",
        "parquet_mb": round(file_mb, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=100_000, help="catalogue size, padding not counted")
    parser.add_argument("--history", type=int, default=20, help="items per user's history (= max_seq_len)")
    parser.add_argument("--dim", type=int, default=64, help="GRU embedding and hidden size")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--reasons", type=int, default=3, help="reasons per recommended item (0: none)")
    parser.add_argument("--batch", type=int, default=1024, help="users per batch: bounds the [B, items] score matrix")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe-every", type=int, default=10, help="time one bare matmul every N batches")
    parser.add_argument("--out-dir", help="where the Parquet file goes (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the Parquet file")
    parser.add_argument("--out-csv", help="append the result row to this CSV")
    args = parser.parse_args()
    result = run(args)
    width = max(len(key) for key in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.out_csv:
        path = Path(args.out_csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(result))
            if new:
                writer.writeheader()
            writer.writerow(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
