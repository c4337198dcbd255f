"""Prepare the inputs of benchmarks/bench_gpu.py for a GPU machine without polars, MLflow, Prefect or pydantic.

Runs here, with the pipeline's own ingestion and preprocessing: the demo shop (conf/base.yaml) and
ML-1M (conf/ml1m.yaml) become <out>/demo.npz and <out>/ml1m.npz (per-user train/valid/test item_idx
sequences, plus the models' constructor options and training settings exactly as the pipeline would
pass them), and <out>/whl/ receives the wheels of pydantic and its dependencies, at this venv's
versions, for CPython 3.12 on manylinux x86_64 (the GPU machine installs them offline).
The folder is git-ignored through .git/info/exclude, and is carried to the GPU machine by name.

  .venv/bin/python benchmarks/prepare_gpu_data.py [--out .gpu] [--ml1m /work/shared/datasets/ml-1m]
                                                  [--python-version 3.12] [--no-wheels]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_gpu import MODEL_CLASSES, read_npz, write_npz  # noqa: E402

WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
DATASETS = {"demo": ("base.yaml", []), "ml1m": ("ml1m.yaml", ["data.recbole.path={ml1m}"])}


def prepare(name: str, config_file: Path, overrides: list[str], out: Path) -> Path:
    """Ingest and preprocess one configured dataset and write <out>/<name>.npz; its path."""
    from conf.loading import load_config
    from conf.schema import PlannedModel, SASRecConfig
    from tasks.data.ingestion import ingest_dataset
    from tasks.data.prepare import prepare_data
    from tasks.data.preprocessing import load_sequence_data
    from tasks.modelling.training import model_options

    config = load_config(config_file, overrides)
    planned = [p for p in config.model_plan() if p.model.kind in MODEL_CLASSES]
    if not any(p.model.kind == "sasrec" for p in planned):  # the demo preset has none: SASRec's defaults
        planned.append(PlannedModel(label="sasrec", model=SASRecConfig(), target_fraction=None))
    with tempfile.TemporaryDirectory(prefix=f"itx-gpu-{name}-") as folder:
        cache = Path(folder)
        raw = ingest_dataset(config.data, config.seed, cache, config.privacy)
        prepared = prepare_data(raw, config.preprocess, config.split, config.scenario,
                                config.evaluation.group_attribute, cache, config.seed)
        data = load_sequence_data(prepared)
    meta = {
        "name": name, "config": str(config_file.relative_to(ROOT)), "overrides": overrides,
        "n_items": prepared.n_items, "n_users": prepared.n_users, "n_events": prepared.n_events,
        "seed": config.seed, "exclude_seen": config.evaluation.exclude_seen,
        "eval_batch_size": config.evaluation.batch_size,
        "train": config.train.model_dump(include={"batch_size", "learning_rate", "weight_decay", "max_seq_len"}),
        "models": {p.model.name: {"kind": p.model.kind, "options": model_options(p, config, None)} for p in planned},
    }
    path = out / f"{name}.npz"
    write_npz(path, data, meta)
    check, _ = read_npz(path)
    assert all(len(a) == len(b) and all((x == y).all() for x, y in zip(a, b))
               for a, b in ((check.train, data.train), (check.valid, data.valid), (check.test, data.test)))
    print(f"{path}: {prepared.n_users} users, {prepared.n_items - 1} items, {prepared.n_events} interactions, "
          f"models {sorted(meta['models'])}, {path.stat().st_size / 2**20:.1f} MiB", flush=True)
    return path


def download_wheels(out: Path, python_version: str) -> None:
    """Download pydantic and its dependencies at this venv's versions: CPython `python_version` manylinux wheels."""
    out.mkdir(parents=True, exist_ok=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    pins = [f"{name}=={version(name)}" for name in WHEELS]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(out), *pins],
                   check=True)
    print(f"{out}: {', '.join(sorted(p.name for p in out.glob('*.whl')))}", flush=True)


def ignore_in_git(folder: Path) -> None:
    """Add /<folder>/ to .git/info/exclude (this clone only), so git and the device copy skip it unless carried."""
    exclude = ROOT / ".git" / "info" / "exclude"
    entry = f"/{folder.relative_to(ROOT).as_posix()}/"
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if entry not in lines:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("\n".join([*lines, entry]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu")
    parser.add_argument("--ml1m", default="/work/shared/datasets/ml-1m", help="RecBole ml-1m folder")
    parser.add_argument("--datasets", default="demo,ml1m")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python, for the wheels")
    parser.add_argument("--no-wheels", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # plain functions, no flow run
    import flows  # noqa: F401  (offline-safe environment defaults, quiet logs)

    out = args.out.resolve()
    if out.is_relative_to(ROOT):
        ignore_in_git(out)
    for name in args.datasets.split(","):
        config_file, overrides = DATASETS[name]
        prepare(name, ROOT / "conf" / config_file, [o.format(ml1m=args.ml1m) for o in overrides], out)
    if not args.no_wheels:
        download_wheels(out / "whl", args.python_version)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {total / 2**20:.1f} MiB in all")


if __name__ == "__main__":
    main()
