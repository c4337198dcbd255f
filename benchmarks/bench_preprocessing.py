"""Preprocessing benchmark: our Polars preprocessing next to a straightforward pandas version.

For each size (raw events from the synthetic shop, default 1M, 10M and 50M) the raw tables are
generated once and written to Parquet in a temporary folder; generation is timed and reported,
but is not the measured thing. Then, each run in a fresh spawned process so its peak RSS
(`ru_maxrss`) is its own, and timed around the preprocessing call only:

- memory: `tasks.data.preprocessing.prepare_data_in_memory` itself, as the pipeline runs it (scan_parquet,
  dedupe user_item, 5-core, contiguous ids, leave-one-out split, sequences; writes the events,
  sequences, users and items tables with their fingerprints);
- streaming: the same call with `preprocess.engine: streaming` (tasks/data/streaming.py:
  every pass over all events streamed through Parquet, per-user steps one bucket at a time);
- pandas: the same steps and the same four output tables written idiomatically in pandas
  (`prepare_with_pandas` below).

On the smallest size the pandas outputs are checked against the memory engine's (same users,
items and sequence lists); on every size the streaming engine's four tables are checked to equal
the memory engine's. Pandas is skipped, with the reason printed, above --pandas-max-events or when
its peak projected linearly from the previous size exceeds 80% of the memory available; a run past
--pandas-timeout-s is stopped. --address-space-gib caps every measured process's address space
(RLIMIT_AS, set as the worker starts): a run that needs more fails, and is reported so.
Prints one markdown table of medians over the repeats (wall and CPU seconds: the machine may be
shared), ratios to the memory engine, and whether the largest size fitted in the machine's memory.

  .venv/bin/python benchmarks/bench_preprocessing.py [--sizes 1M,10M,50M] [--repeats 3,2,1]
      [--engines memory,streaming,pandas] [--pandas-max-events 50M] [--pandas-timeout-s 900]
      [--memory-gib 24] [--address-space-gib 5.5]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import queue as queue_module
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

K_CORE = 5
HOLDOUT = 1  # leave_one_out: last event test, second last valid
SEED = 0
LIBRARIES = {"memory": "polars memory (prepare_data)", "streaming": "polars streaming (prepare_data)",
             "pandas": "pandas"}


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _parse_count(text: str) -> int:
    """'1M' -> 1_000_000, '500k' -> 500_000, '2500' -> 2500."""
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if factor > 1 else text) * factor)


def _label(events: int) -> str:
    return f"{events / 1e6:g}M" if events >= 1_000_000 else f"{events / 1e3:g}k"


# ----------------------------------------------------------------------------------------------
# Workers: each runs in its own spawned process and puts ("ok", payload) or ("error", text).


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measured(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """call()'s result with its wall and CPU seconds, the peak RSS, and the RSS before it (imports)."""
    baseline = _peak_rss_gib()
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    result = call()
    return {**result, "seconds": time.perf_counter() - started, "cpu_seconds": _cpu_seconds() - cpu_started,
            "peak_gib": _peak_rss_gib(), "baseline_gib": baseline}


def _cap_address_space(gib: float | None) -> None:
    """Limit this process's address space (virtual memory, not RSS) to `gib`; allocations past it fail."""
    if gib is not None:
        limit = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _guarded(work: Callable[[], dict[str, Any]], queue) -> None:
    try:
        queue.put(("ok", work()))
    except BaseException:  # the parent reports it; a dead worker must not leave it waiting
        queue.put(("error", traceback.format_exc()))


def _generate_worker(scale: float, folder: str, queue) -> None:
    def work() -> dict[str, Any]:
        from conf.schema import SyntheticConfig
        from tasks.data.ingestion import RawTables
        from tasks.io import write_parquet
        from tasks.data.synthetic import generate_shop

        started = time.perf_counter()
        shop = generate_shop(SyntheticConfig(scale=scale), SEED)
        generated = time.perf_counter() - started
        raw = RawTables(
            interactions=write_parquet(shop.interactions, Path(folder) / "interactions.parquet"),
            items=write_parquet(shop.items, Path(folder) / "items.parquet"),
            users=write_parquet(shop.users, Path(folder) / "users.parquet"),
        )
        return {"raw": raw, "events": shop.interactions.height, "seconds": generated,
                "write_seconds": time.perf_counter() - started - generated, "peak_gib": _peak_rss_gib()}

    _guarded(work, queue)


def _polars_worker(raw, out_dir: str, engine: str, address_space_gib: float | None, queue) -> None:
    _cap_address_space(address_space_gib)

    def work() -> dict[str, Any]:
        from conf.schema import PreprocessConfig, ScenarioConfig, SplitConfig
        from tasks.data.prepare import prepare_data

        def call() -> dict[str, Any]:
            prepared = prepare_data(
                raw,
                PreprocessConfig(dedupe="user_item", min_rating=None, k_core=K_CORE, engine=engine),
                SplitConfig(protocol="leave_one_out"),
                ScenarioConfig(),  # user_group partition on gender, M -> F
                None,
                Path(out_dir),
            )
            return {"kept_events": prepared.n_events, "events": prepared.events.path,
                    "sequences": prepared.sequences.path, "users": prepared.users.path, "items": prepared.items.path}

        return _measured(call)

    _guarded(work, queue)


def _pandas_worker(raw, out_dir: str, splits: list[str], address_space_gib: float | None, queue) -> None:
    _cap_address_space(address_space_gib)

    def work() -> dict[str, Any]:
        import numpy  # noqa: F401  (imported before the baseline, as polars' worker imports its modules)
        import pandas  # noqa: F401

        return _measured(lambda: prepare_with_pandas(raw.interactions.path, raw.users.path, raw.items.path,
                                                     Path(out_dir), splits))

    _guarded(work, queue)


def _check_worker(check: Callable[[dict[str, Any], dict[str, Any]], str], first: dict[str, Any],
                  second: dict[str, Any], queue) -> None:
    # In its own process: reading the outputs in the parent would raise the peak RSS that later
    # workers report, as Linux carries ru_maxrss over fork and exec.
    _guarded(lambda: {"text": check(first, second)}, queue)


def prepare_with_pandas(interactions_path: str, users_path: str, items_path: str, out_dir: Path,
                        splits: list[str]) -> dict[str, Any]:
    """The steps of `prepare_data` written plainly in pandas; writes the same four tables as Parquet.

    `splits` names the list columns of the sequences table (those of `schemas.SEQUENCES`).
    """
    import numpy as np
    import pandas as pd

    events = pd.read_parquet(interactions_path, columns=["user_id", "item_id", "timestamp"])
    # dedupe 'user_item': a user's first interaction with an item, in time order
    events = events.sort_values(["user_id", "timestamp", "item_id"])
    events = events.drop_duplicates(["user_id", "item_id"], keep="first")
    # iterative k-core on users and items
    while True:
        user_counts = events.groupby("user_id")["user_id"].transform("size")
        item_counts = events.groupby("item_id")["item_id"].transform("size")
        kept = events[(user_counts >= K_CORE) & (item_counts >= K_CORE)]
        if len(kept) == len(events):
            break
        events = kept
    # contiguous ids from 1 in sorted raw-id order
    user_codes, user_ids = pd.factorize(events["user_id"], sort=True)
    item_codes, item_ids = pd.factorize(events["item_id"], sort=True)
    events = pd.DataFrame({
        "user_idx": (user_codes + 1).astype("int32"),
        "item_idx": (item_codes + 1).astype("int32"),
        "timestamp": events["timestamp"].to_numpy(),
    })
    # leave-one-out split by position from the end of each user's time order (ties by item_idx)
    events = events.sort_values(["user_idx", "timestamp", "item_idx"], ignore_index=True)
    events = events[events.groupby("user_idx")["user_idx"].transform("size") > 2 * HOLDOUT]
    from_end = events.groupby("user_idx").cumcount(ascending=False).to_numpy()
    events = events.assign(split=np.select([from_end < HOLDOUT, from_end < 2 * HOLDOUT], ["test", "valid"], "train"))
    # users dropped by the split lose their index, so user_idx stays contiguous
    new_codes, kept_users = pd.factorize(events["user_idx"], sort=True)
    events["user_idx"] = (new_codes + 1).astype("int32")
    user_map = pd.DataFrame({"user_idx": np.arange(1, len(kept_users) + 1, dtype="int32"),
                             "user_id": user_ids[kept_users.to_numpy() - 1]})
    item_map = pd.DataFrame({"item_idx": np.arange(1, len(item_ids) + 1, dtype="int32"), "item_id": item_ids})

    users = user_map.merge(pd.read_parquet(users_path), on="user_id", how="left").sort_values("user_idx")
    users["role"] = np.select([users["gender"] == "M", users["gender"] == "F"], ["source", "target"], "other")
    items = item_map.merge(pd.read_parquet(items_path), on="item_id", how="left").sort_values("item_idx")
    items["role"] = "all"

    all_users = pd.RangeIndex(1, len(kept_users) + 1, name="user_idx")
    sequences = pd.DataFrame({
        name: events[events["split"] == name].groupby("user_idx")["item_idx"].agg(list).reindex(all_users)
        for name in splits
    })
    for name in splits:  # a split a user has no events in (e.g. 'context' under leave-one-out) is an empty list
        if sequences[name].isna().any():
            sequences[name] = [items if isinstance(items, list) else [] for items in sequences[name]]
    sequences = sequences.reset_index()

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: str(out_dir / f"{name}.parquet") for name in ("events", "sequences", "users", "items")}
    events.to_parquet(paths["events"], index=False)
    sequences.to_parquet(paths["sequences"], index=False)
    users.to_parquet(paths["users"], index=False)
    items.to_parquet(paths["items"], index=False)
    return {"kept_events": len(events), "sequences": paths["sequences"], "users": paths["users"],
            "items": paths["items"]}


# ----------------------------------------------------------------------------------------------
# Parent side


class WorkerFailed(RuntimeError):
    """A worker process raised, or died without answering (e.g. killed when out of memory)."""


def run_isolated(target: Callable[..., None], *args: Any, timeout_s: float | None = None) -> dict[str, Any]:
    """The payload of `target(*args, queue)` run in a fresh spawned process, killed after `timeout_s`."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    deadline = None if timeout_s is None else time.perf_counter() + timeout_s
    answer = None
    while answer is None:
        try:
            answer = queue.get(timeout=2.0)
        except queue_module.Empty:
            if deadline is not None and time.perf_counter() > deadline:
                process.kill()
                process.join()
                raise WorkerFailed(f"stopped after the {timeout_s:g} s limit (--pandas-timeout-s)") from None
            if not process.is_alive():
                try:
                    answer = queue.get(timeout=2.0)
                except queue_module.Empty:
                    process.join()
                    hint = {-9: " (SIGKILL: out of memory?)", -6: " (SIGABRT: an allocation failed?)"}.get(
                        process.exitcode, "")
                    raise WorkerFailed(f"died with exit code {process.exitcode}{hint}") from None
    process.join()
    status, payload = answer
    if status != "ok":
        raise WorkerFailed(payload.strip().splitlines()[-1])
    return payload


def check_same_engines(memory_run: dict[str, Any], streaming_run: dict[str, Any]) -> str:
    """Raise AssertionError unless both engines wrote equal events, sequences, users and items tables."""
    import polars as pl

    for table in ("events", "sequences", "users", "items"):
        expected = pl.read_parquet(memory_run[table])
        assert pl.read_parquet(streaming_run[table]).equals(expected), f"{table} differ between the engines"
    return (f"streaming and memory engines wrote identical events, sequences, users and items tables "
            f"({memory_run['kept_events']:,} events, same rows in the same order)")


def check_same_outputs(polars_run: dict[str, Any], pandas_run: dict[str, Any]) -> str:
    """Raise AssertionError unless both runs wrote the same sequences, user ids and item ids."""
    import polars as pl

    for table, key in (("sequences", "user_idx"), ("users", "user_idx"), ("items", "item_idx")):
        ours = pl.read_parquet(polars_run[table])
        theirs = pl.read_parquet(pandas_run[table])
        columns = list(ours.columns) if table == "sequences" else [key, key.replace("_idx", "_id")]
        ours, theirs = ours.select(columns).sort(key), theirs.select(columns).sort(key).cast(ours.select(columns).schema)
        assert ours.equals(theirs), f"{table} differ between polars and pandas"
    sequences = pl.read_parquet(polars_run["sequences"])
    lists = "/".join(c for c in sequences.columns if c != "user_idx")
    return (f"polars and pandas wrote identical sequences ({sequences.height:,} users' {lists} lists) and "
            f"identical user and item id maps; both kept {polars_run['kept_events']:,} events")


@dataclass
class Row:
    """The runs of one library on one size."""

    size: str
    events: int
    library: str
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)
    kept_events: int | None = None
    skipped: str | None = None

    def median(self, name: str) -> float:
        return statistics.median(getattr(self, name))


def _available_gib() -> float:
    """MemAvailable from /proc/meminfo: what a new process can use without swapping or evicting others."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**30


def pandas_skip_reason(events: int, limit: int, rows: list[Row], available_gib: float) -> str | None:
    """Why pandas should not run on `events` raw events (None: run it), with a linear projection."""
    measured = [r for r in rows if r.library == "pandas" and r.seconds]
    projection = ""
    projected_peak = None
    if measured:  # linear in events, from the largest size pandas ran
        basis = measured[-1]
        factor = events / basis.events
        projected_peak = basis.median("peaks") * factor
        projection = (f"; linear projection from {basis.size}: ~{basis.median('seconds') * factor:.0f} s, "
                      f"~{projected_peak:.1f} GiB peak RSS")
    if events > limit:
        return f"skipped: {events:,} raw events > --pandas-max-events {limit:,}{projection}"
    if projected_peak is not None and projected_peak > 0.8 * available_gib:
        return f"skipped: would not fit in the {available_gib:.1f} GiB available now{projection}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M,50M", help="raw event counts to generate, e.g. 1M,10M,50M")
    parser.add_argument("--repeats", default="3,2,1",
                        help="runs per library: one number for every size, or one per size (median is reported)")
    parser.add_argument("--pandas-max-events", default="50M",
                        help="skip pandas above this many raw events (it is also skipped when its projected "
                             "peak exceeds 80%% of the memory available, and stopped after --pandas-timeout-s)")
    parser.add_argument("--pandas-timeout-s", type=float, default=900.0, help="stop a pandas run after this long")
    parser.add_argument("--memory-gib", type=float, default=24.0, help="memory of the machine to check the largest size against")
    parser.add_argument("--engines", default="memory,streaming,pandas",
                        help=f"what to run, in order, from {','.join(LIBRARIES)}")
    parser.add_argument("--address-space-gib", type=float, default=None,
                        help="cap each measured process's address space (RLIMIT_AS) to this many GiB")
    parser.add_argument("--workdir", default=None, help="where the temporary folder goes (default: the system's)")
    args = parser.parse_args()

    sizes = [_parse_count(s) for s in args.sizes.split(",") if s.strip()]
    repeats = [int(r) for r in args.repeats.split(",")]
    repeats = repeats * len(sizes) if len(repeats) == 1 else repeats
    if len(repeats) != len(sizes):
        parser.error(f"--repeats: expected 1 or {len(sizes)} values, got {args.repeats}")
    pandas_max = _parse_count(args.pandas_max_events)
    engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    if unknown := set(engines) - set(LIBRARIES):
        parser.error(f"--engines: unknown {sorted(unknown)}; choose from {list(LIBRARIES)}")

    from conf.schema import SyntheticConfig
    from tasks.schemas import SEQUENCES
    from tasks.data.synthetic import generate_shop

    splits = [column for column in SEQUENCES if column != "user_idx"]
    # Events grow linearly with scale; calibrate events per unit of scale on a small shop.
    calibration_scale = 4.0
    per_scale = generate_shop(SyntheticConfig(scale=calibration_scale), SEED).interactions.height / calibration_scale

    started_all = time.perf_counter()
    load_before = os.getloadavg()
    rows: list[Row] = []
    generation: list[tuple[str, float, int, float, float, float]] = []
    equality = "pandas not checked (pandas or the memory engine did not run on the smallest size)"
    engine_checks: list[str] = []
    with tempfile.TemporaryDirectory(prefix="itx-bench-prep-", dir=args.workdir) as tmp:
        for size, n_repeats in zip(sizes, repeats):
            label = _label(size)
            folder = Path(tmp) / label
            scale = size / per_scale
            generated = run_isolated(_generate_worker, scale, str(folder / "raw"))
            raw, events = generated["raw"], generated["events"]
            generation.append((label, scale, events, generated["seconds"], generated["write_seconds"],
                               generated["peak_gib"]))
            print(f"[{label}] generated scale {scale:.2f}: {events:,} events in {generated['seconds']:.1f}s "
                  f"(+{generated['write_seconds']:.1f}s writing Parquet), peak RSS {generated['peak_gib']:.2f} GiB",
                  flush=True)

            size_rows = {name: Row(label, events, LIBRARIES[name]) for name in engines}
            if "pandas" in size_rows:
                size_rows["pandas"].skipped = pandas_skip_reason(events, pandas_max, rows, _available_gib())
                if size_rows["pandas"].skipped:
                    print(f"[{label}] pandas {size_rows['pandas'].skipped}", flush=True)
            for repeat in range(n_repeats):
                outputs: dict[str, dict[str, Any]] = {}
                for name, row in size_rows.items():
                    if row.skipped:  # not run, or failed on an earlier repeat
                        continue
                    out_dir = str(folder / f"{name}-{repeat}")
                    try:
                        if name == "pandas":
                            result = run_isolated(_pandas_worker, raw, out_dir, splits, args.address_space_gib,
                                                  timeout_s=args.pandas_timeout_s)
                        else:
                            result = run_isolated(_polars_worker, raw, out_dir, name, args.address_space_gib)
                    except WorkerFailed as failure:
                        row.skipped = f"failed: {failure}"
                        print(f"[{label}] {name} run {repeat + 1}: {row.skipped}", flush=True)
                        continue
                    row.seconds.append(result["seconds"])
                    row.cpu_seconds.append(result["cpu_seconds"])
                    row.peaks.append(result["peak_gib"])
                    row.kept_events = result["kept_events"]
                    outputs[name] = result
                    print(f"[{label}] {name} run {repeat + 1}/{n_repeats}: {result['seconds']:.2f}s wall, "
                          f"{result['cpu_seconds']:.2f}s CPU, peak RSS {result['peak_gib']:.2f} GiB "
                          f"(after imports {result['baseline_gib']:.2f}), {result['kept_events']:,} events kept",
                          flush=True)
                if size == min(sizes) and repeat == 0 and {"memory", "pandas"} <= outputs.keys():
                    equality = f"[{label}] " + run_isolated(_check_worker, check_same_outputs, outputs["memory"],
                                                            outputs["pandas"])["text"]
                    print(equality, flush=True)
                if repeat == 0 and {"memory", "streaming"} <= outputs.keys():
                    engine_checks.append(f"[{label}] " + run_isolated(_check_worker, check_same_engines,
                                                                      outputs["memory"], outputs["streaming"])["text"])
                    print(engine_checks[-1], flush=True)
                for name in outputs:
                    shutil.rmtree(folder / f"{name}-{repeat}", ignore_errors=True)
            rows += size_rows.values()
            shutil.rmtree(folder, ignore_errors=True)

    total = time.perf_counter() - started_all
    load_after = os.getloadavg()
    memory_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print_report(rows, generation, [equality, *engine_checks] if "pandas" in engines else engine_checks, args.memory_gib)
    cap = (f"; every measured process capped at {args.address_space_gib:g} GiB of address space (RLIMIT_AS)"
           if args.address_space_gib else "")
    print(f"\nMachine: {os.cpu_count()} CPUs, {memory_total:.1f} GiB RAM, POLARS_MAX_THREADS="
          f"{os.environ.get('POLARS_MAX_THREADS', 'unset')}{cap}; load average {load_before[0]:.1f} at start, "
          f"{load_after[0]:.1f} at end: other jobs share the machine, so wall times are inflated and noisy "
          f"(CPU seconds are steadier). Seed {SEED}, k-core {K_CORE}, leave-one-out.")
    print(f"Total benchmark time {total / 60:.1f} min (generation included).")


def print_report(rows: list[Row], generation: list[tuple[str, float, int, float, float, float]],
                 checks: list[str], memory_gib: float) -> None:
    """Print the generation table, the preprocessing table, the output check and the memory verdict."""
    print("\nGeneration (not the measured thing):\n")
    print("| size | scale | raw events | generate s | write Parquet s | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, scale, events, seconds, write_seconds, peak in generation:
        print(f"| {label} | {scale:.2f} | {events:,} | {seconds:.1f} | {write_seconds:.1f} | {peak:.2f} |")

    print("\nPreprocessing, raw Parquet -> events, sequences, users and items Parquet (medians over the runs):\n")
    print("| size | raw events | kept events | library | runs | median s | median CPU s | peak RSS GiB "
          "| time / memory engine | peak / memory engine |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    memory_by_size = {row.size: row for row in rows if row.library == LIBRARIES["memory"] and row.seconds}
    for row in rows:
        kept = f"{row.kept_events:,}" if row.kept_events is not None else "-"
        start = f"| {row.size} | {row.events:,} | {kept} | {row.library} | {len(row.seconds)} "
        if not row.seconds:
            print(f"{start}| {row.skipped} | | | | |")
            continue
        ratios = "| |"
        memory = memory_by_size.get(row.size)
        if row.library != LIBRARIES["memory"] and memory is not None:
            ratios = (f"| {row.median('seconds') / memory.median('seconds'):.2f}x "
                      f"| {row.median('peaks') / memory.median('peaks'):.2f}x")
        note = f" ({row.skipped} on a later run)" if row.skipped else ""
        print(f"{start}| {row.median('seconds'):.1f}{note} | {row.median('cpu_seconds'):.1f} "
              f"| {row.median('peaks'):.2f} {ratios} |")

    print("\nOutputs:")
    for check in checks:
        print(f"- {check}.")
    largest_events = max(row.events for row in rows)
    for largest in (row for row in rows if row.events == largest_events and row.library.startswith("polars")):
        if largest.peaks:
            peak = max(largest.peaks)
            verdict = "fits within" if peak < memory_gib else "does NOT fit within"
            print(f"{largest.size} ({largest.events:,} raw events): {largest.library} peak RSS {peak:.2f} GiB "
                  f"{verdict} the {memory_gib:g} GiB machine ({memory_gib - peak:.1f} GiB to spare).")
        else:
            print(f"{largest.size}: {largest.library} did not finish ({largest.skipped}); no memory verdict.")


if __name__ == "__main__":
    main()
