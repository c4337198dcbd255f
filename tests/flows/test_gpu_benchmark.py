"""benchmarks/bench_gpu.py, the script a lent GPU machine runs: its data files round-trip, and it runs
without Polars, MLflow or Prefect (which that machine lacks), as a subprocess."""
from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.data import SequenceData

ROOT = Path(__file__).resolve().parents[2]


def load_bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_meta(data: SequenceData) -> dict:
    options = {"embedding_dim": 8, "hidden_dim": 8, "max_seq_len": 8, "learning_rate": 0.01, "exclude_seen": True}
    return {"n_items": data.n_items, "seed": 0, "exclude_seen": True, "eval_batch_size": 32,
            "train": {"batch_size": 16, "learning_rate": 0.01, "weight_decay": 0.0, "max_seq_len": 8},
            "models": {"gru": {"kind": "rnn", "options": options}}}


def test_prepared_sequences_survive_the_npz_round_trip(tiny_data, tmp_path):
    bench = load_bench_gpu()
    bench.write_npz(tmp_path / "tiny.npz", tiny_data, tiny_meta(tiny_data))
    data, meta = bench.read_npz(tmp_path / "tiny.npz")
    assert meta == tiny_meta(tiny_data) and data.n_items == tiny_data.n_items
    for split in ("train", "valid", "test", "context"):
        assert [a.tolist() for a in getattr(data, split)] == [a.tolist() for a in getattr(tiny_data, split)]


@pytest.mark.slow
def test_gpu_benchmark_runs_without_polars_mlflow_or_prefect(tiny_data, tmp_path):
    load_bench_gpu().write_npz(tmp_path / "tiny.npz", tiny_data, tiny_meta(tiny_data))
    # The GPU machine has none of them: make importing them fail here too.
    argv = ["bench_gpu.py", "--data", str(tmp_path), "--runs", "tiny:gru", "--accelerator", "cpu", "--epochs", "tiny=2",
            "--out", str(tmp_path / "out.csv")]
    script = str(ROOT / "benchmarks" / "bench_gpu.py")
    blocked = ("import sys, runpy; sys.modules.update(dict.fromkeys(['polars', 'mlflow', 'prefect']));"
               f"sys.argv = {argv!r}; runpy.run_path({script!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert [(r["dataset"], r["model"], r["device"], r["epochs"], r["note"]) for r in rows] == [
        ("tiny", "gru", "cpu", "2", "")]
    assert 0 <= float(rows[0]["test_ndcg10"]) <= 1 and float(rows[0]["s_per_epoch"]) > 0
