"""Helpers the benchmark scripts share: one training in a fresh process, so its peak memory is its own."""
from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) in MB.

    Not getrusage's ru_maxrss: Linux carries that high-water mark across fork and exec, so a spawned
    child would report at least its parent's memory at the time it was started.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _train_worker(args: tuple) -> tuple:
    import flows  # noqa: F401  (environment defaults)
    from tasks.modelling.training import train_recommender

    started = time.perf_counter()
    trained = train_recommender(*args)
    return trained, time.perf_counter() - started, peak_rss_mb()


def train_in_process(*args):
    """(TrainedModel, seconds, peak RSS MB) of `train_recommender(*args)` run in a fresh (spawned) process.

    A pool of one, not a bare Process: an error in the training is raised here instead of leaving the
    benchmark waiting for a result that never comes.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_train_worker, args).result()


def parse_seeds(text: str) -> list[int]:
    """Seeds from a comma-separated list ("42,43,44")."""
    try:
        return [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: expected comma-separated integers such as 42,43,44, got {text!r}") from None


def over_seeds(values: list[float], digits: int = 4) -> str:
    """'mean ± sample sd (v1, v2, ...)' of per-seed values; the value alone for one seed."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.{digits}f} ± {spread:.{digits}f} ({', '.join(f'{v:.{digits}f}' for v in values)})"
