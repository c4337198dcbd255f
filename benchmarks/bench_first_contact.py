"""A newcomer's first contact, timed: how long the commands a new user types first take, as processes.

    .venv/bin/python benchmarks/bench_first_contact.py [--repeats 3] [--demo]

Rows (median wall seconds over --repeats, each in fresh folders with a fresh Prefect home and MLflow store):
- bad data file: `itx run` on an event log with an unparsable time, until its one `itx: error:` line;
- import: `python -c "import flows.pipeline"` (Prefect, MLflow, torch, Lightning);
- tiny run: `itx run conf/experiments/tiny.yaml`, the whole pipeline on a 800-user shop;
- tiny rerun: the same command again in the same folders, every cached stage reused: what a run costs
  besides its training and evaluation (start-up, the temporary Prefect server, MLflow, export, registry);
- `make demo` (with --demo): `itx demo`, once.
Run it alone on the machine: it measures wall time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ITX = str(Path(sys.executable).with_name("itx"))
TINY = str(ROOT / "conf" / "experiments" / "tiny.yaml")


def timed(command: list[str], folder: Path, expect: int = 0) -> float:
    """Wall seconds of one command run in `folder` with its own Prefect home; fails loudly on a wrong exit."""
    env = os.environ | {"PREFECT_HOME": str(folder / "prefect-home")}
    env.pop("PREFECT_API_URL", None), env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != expect:
        raise SystemExit(f"{' '.join(command)}: exit {result.returncode}, expected {expect}\n{result.stderr[-3000:]}")
    return seconds


def fresh_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="itx-first-contact-"))


def bad_data(folder: Path) -> float:
    events = folder / "events.csv"
    events.write_text("user_id,item_id,timestamp\nu1,i1,1000\nu1,i2,yesterday\n")
    return timed([ITX, "run", TINY, "--set", "data.source=events", "--set", f"data.events={{interactions: {events}}}"],
                 folder, expect=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo", action="store_true", help="also time `itx demo` once")
    args = parser.parse_args()
    samples: dict[str, list[float]] = {"bad data file -> error line": [], "import flows.pipeline": [],
                                       "itx run tiny": [], "itx run tiny, cached rerun": []}
    for _ in range(args.repeats):
        folder = fresh_folder()
        try:
            samples["bad data file -> error line"].append(bad_data(folder))
            samples["import flows.pipeline"].append(timed([sys.executable, "-c", "import flows.pipeline"], folder))
            samples["itx run tiny"].append(timed([ITX, "run", TINY], folder))
            samples["itx run tiny, cached rerun"].append(timed([ITX, "run", TINY], folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if args.demo:
        folder = fresh_folder()
        try:
            samples["itx demo (make demo, venv present)"] = [timed([ITX, "demo"], folder)]
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    tiny = statistics.median(samples["itx run tiny"])
    print(f"{os.cpu_count()} CPUs; median of {args.repeats} (demo: 1); seconds")
    print("| what | median s | runs (s) | ratio to `itx run tiny` |")
    print("|---|---|---|---|")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {median / tiny:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
