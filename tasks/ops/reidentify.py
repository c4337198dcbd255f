"""`itx reidentify`: a pseudonymised run's recommendations with raw user ids, where the key is present.

The pseudonyms of the configured data's user ids (and of the event batches appended since) are
recomputed under the key and joined back; the run's own export is never overwritten.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from conf.loading import load_config
from conf.schema import EventLogConfig, PipelineConfig
from tasks.data.adapters import events as event_log
from tasks.data.event_store import read_manifest, store_dir
from tasks.data.ingestion import load_frames
from tasks.data.pseudonyms import _PSEUDONYM, _RAW, key_sources, pseudonym_key, pseudonym_table
from tasks.io import write_csv, write_parquet
from tasks.modelling.export import CSV_LIST_SEPARATOR
from tasks.schemas import DataError

log = logging.getLogger(__name__)

REIDENTIFIED_NAME = "recommendations_reidentified.parquet"
EXPORT_NAMES = ("recommendations.parquet", "recommendations.csv")


@dataclass(frozen=True)
class Reidentified:
    """Where `reidentify_run` wrote the recommendations with raw ids, and how many users it mapped."""

    path: Path
    users: int
    rows: int


def raw_user_ids(config: PipelineConfig) -> pl.Series:
    """Every raw user id the run can have seen: the configured dataset's, plus those of the event batches
    appended to its event store (incremental runs) whose files are still readable."""
    frames = [load_frames(config.data, config.seed)]
    for batch in read_manifest(store_dir(config.output.root, config.name))["batches"]:
        try:  # batches are read as `itx retrain --new-events` reads them: the default column names
            frames.append(event_log.load(EventLogConfig(interactions=batch["file"])))
        except DataError as error:
            log.warning("event batch %s left out: %s", batch["file"], error)
    parts = [table.select(pl.col("user_id").cast(pl.String)) for f in frames for table in (f.interactions, f.users)]
    return pl.concat(parts).unique().collect(engine="streaming")["user_id"]


def reidentify_run(run_dir: Path, out: Path | None = None) -> Reidentified:
    """Write a run's recommendations with raw user ids to `out` (default: <run_dir>/recommendations_reidentified
    .parquet; .csv by extension), recomputing the pseudonyms of the configured data's ids under the key.

    Raises PseudonymKeyError without the key, ValueError when the run is not pseudonymous, when `out` is the
    run's own export, or when some pseudonym has no raw id under this key (wrong key, or the data changed).
    """
    run_dir = Path(run_dir).resolve()
    config_file, export = run_dir / "config.yaml", run_dir / "recommendations.parquet"
    for required in (config_file, export):
        if not required.is_file():
            raise FileNotFoundError(f"{required}: not found; RUN_DIR must be a finished run folder with "
                                    "config.yaml and recommendations.parquet")
    config = load_config(str(config_file), [])
    if not config.privacy.pseudonymize_users:
        raise ValueError(f"{config_file}: privacy.pseudonymize_users is off for this run: its recommendations "
                         "already hold raw user ids")
    out = (Path(out) if out is not None else run_dir / REIDENTIFIED_NAME).resolve()
    if out.parent == run_dir and out.name in EXPORT_NAMES:
        raise ValueError(f"--out {out}: is the run's pseudonymous export, which is never overwritten; "
                         "choose another file")
    if out.suffix not in (".parquet", ".csv"):
        raise ValueError(f"--out {out}: expected a .parquet or .csv file name")
    key = pseudonym_key(config.privacy)
    recommendations = pl.read_parquet(export)
    table = pseudonym_table(raw_user_ids(config), key)
    mapped = recommendations.join(table, left_on="user_id", right_on=_PSEUDONYM, how="left", maintain_order="left")
    users = recommendations["user_id"].n_unique()
    unknown = mapped.filter(pl.col(_RAW).is_null())["user_id"].n_unique()
    if unknown:
        hint = ("no user matches: the key is not the one the run used" if unknown == users else
                "the raw data changed since the run, or the key is not the one it used")
        raise ValueError(f"{run_dir}: {unknown} of {users} users' pseudonyms have no raw id in the configured "
                         f"data under the key from the {key_sources(config.privacy)} ({hint})")
    result = mapped.with_columns(pl.col(_RAW).alias("user_id")).select(recommendations.columns)
    if out.suffix == ".csv":  # list columns (explanations) joined as in the run's own CSV
        lists = [name for name, dtype in result.schema.items() if isinstance(dtype, pl.List)]
        write_csv(result.with_columns(pl.col(name).list.eval(pl.element().cast(pl.String)).list.join(
            CSV_LIST_SEPARATOR) for name in lists), out)
    else:
        write_parquet(result, out)
    return Reidentified(out, users, result.height)
