"""Helpers the benchmark scripts share: one training in a fresh process, so its peak memory is its own."""
from __future__ import annotations

import multiprocessing
import resource
import time


def _train_worker(args: tuple, queue) -> None:
    import flows  # noqa: F401  (environment defaults)
    from tasks.training import train_recommender

    started = time.perf_counter()
    trained = train_recommender(*args)
    queue.put((trained, time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def train_in_process(*args):
    """(TrainedModel, seconds, peak RSS MB) of `train_recommender(*args)` run in a fresh (spawned) process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_train_worker, args=(args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result
