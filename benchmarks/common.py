"""Helpers the benchmark scripts share: one training in a fresh process, so its peak memory is its own."""
from __future__ import annotations

import multiprocessing
import time
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


def _train_worker(args: tuple, queue) -> None:
    import flows  # noqa: F401  (environment defaults)
    from tasks.training import train_recommender

    started = time.perf_counter()
    trained = train_recommender(*args)
    queue.put((trained, time.perf_counter() - started, peak_rss_mb()))


def train_in_process(*args):
    """(TrainedModel, seconds, peak RSS MB) of `train_recommender(*args)` run in a fresh (spawned) process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_train_worker, args=(args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result
