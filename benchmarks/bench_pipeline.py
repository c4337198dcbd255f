"""Pipeline benchmark: wall time and peak memory of every stage, and of the whole run.

Each stage runs as its plain function in a fresh process, so its peak RSS is its own; the
end-to-end row is the real `itx run` (Prefect flow runs and MLflow tracking included) as a user
starts it. Prints one table of medians over --repeats runs; `share` is the stage's median time
over the end-to-end median.

  .venv/bin/python benchmarks/bench_pipeline.py [--config conf/base.yaml] [--repeats 1] [--scales 10,100]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import peak_rss_mb  # noqa: E402


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def _stage_worker(stage: str, args: tuple, queue) -> None:
    import flows  # noqa: F401  (environment defaults)
    from tasks.modelling.evaluation import evaluate_trained
    from tasks.modelling.export import export_top_k
    from tasks.data.ingestion import ingest_dataset
    from tasks.data.prepare import prepare_data
    from tasks.modelling.training import train_recommender

    functions = {"ingest": ingest_dataset, "preprocess": prepare_data, "train": train_recommender,
                 "evaluate": evaluate_trained, "export": export_top_k}
    started = time.perf_counter()
    result = functions[stage](*args)
    queue.put((result, time.perf_counter() - started, peak_rss_mb()))


def run_stage(stage: str, *args):
    """(result, seconds, peak RSS MB) of one stage function run in a fresh process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_stage_worker, args=(stage, args, queue))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"stage {stage} failed with exit code {process.exitcode}")
    return result


def end_to_end(config: str, workdir: Path) -> tuple[float, float]:
    """(seconds, peak RSS MB) of `itx run CONFIG` in a subprocess."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", "run", config, "--output-dir", str(workdir / "outputs"),
                    "--refresh-cache", "--set", "train.progress_bar=false"],
                   cwd=workdir, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - started, _peak_rss_mb(resource.RUSAGE_CHILDREN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "conf" / "base.yaml"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--scales", default="", help="extra synthetic scales for ingest+preprocess, e.g. 10,100")
    args = parser.parse_args()

    from conf.loading import load_config
    from tasks.modelling.training import TrainedModel  # noqa: F401

    config = load_config(args.config, ["train.progress_bar=false"])
    timings: dict[str, list[tuple[float, float]]] = {}

    def record(name: str, seconds: float, peak: float) -> None:
        timings.setdefault(name, []).append((seconds, peak))

    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="itx-bench-") as folder:
            cache, run_dir = Path(folder) / "cache", Path(folder) / "run"
            raw, seconds, peak = run_stage("ingest", config.data, config.seed, cache, config.privacy)
            record("ingest (synthetic)", seconds, peak)
            prepared, seconds, peak = run_stage("preprocess", raw, config.preprocess, config.split, config.scenario,
                                                config.evaluation.group_attribute, cache)
            record("preprocess", seconds, peak)
            trained = []
            for planned in config.model_plan():
                result, seconds, peak = run_stage("train", prepared, planned, config, cache)
                record(f"train {planned.label} ({result.epochs} epochs)", seconds, peak)
                trained.append(result)
            for model in trained:
                _, seconds, peak = run_stage("evaluate", prepared, model, config.evaluation, config.scenario.name,
                                             config.train.max_seq_len, cache)
                record(f"evaluate {model.name}", seconds, peak)
            _, seconds, peak = run_stage("export", prepared, trained[1 if len(trained) > 1 else 0], config.export,
                                         config.train.max_seq_len, run_dir)
            record("export", seconds, peak)
            seconds, peak = end_to_end(args.config, Path(folder))
            record("end-to-end `itx run` (Prefect + MLflow)", seconds, peak)

        for scale in [float(s) for s in args.scales.split(",") if s]:
            scaled = config.data.model_copy(update={"synthetic": config.data.synthetic.model_copy(update={"scale": scale})})
            with tempfile.TemporaryDirectory(prefix="itx-bench-") as folder:
                raw, seconds, peak = run_stage("ingest", scaled, config.seed, Path(folder), config.privacy)
                import polars as pl

                events = pl.scan_parquet(raw.interactions.path).select(pl.len()).collect().item()
                record(f"ingest scale {scale:g} ({events / 1e6:.1f}M events)", seconds, peak)
                _, seconds, peak = run_stage("preprocess", raw, config.preprocess, config.split, config.scenario,
                                             config.evaluation.group_attribute, Path(folder))
                record(f"preprocess scale {scale:g} ({events / 1e6:.1f}M events)", seconds, peak)

    total = statistics.median(s for s, _ in timings["end-to-end `itx run` (Prefect + MLflow)"])
    print(f"\nconfig {args.config}, {args.repeats} repeat(s), {os.cpu_count()} CPUs, "
          f"torch threads from OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"| {'stage':<48} | {'median s':>9} | {'share':>6} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 50}|{'-' * 11}|{'-' * 8}|{'-' * 13}|")
    for name, values in timings.items():
        seconds = statistics.median(s for s, _ in values)
        peak = statistics.median(p for _, p in values)
        print(f"| {name:<48} | {seconds:>9.2f} | {seconds / total:>6.2f} | {peak:>11.0f} |")


if __name__ == "__main__":
    main()
