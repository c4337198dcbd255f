"""Input that is unusual but meaningful runs to the end, with a warning where something is missing: users
absent from the users table (or with an id that reads as NaN) form their own `unknown` group, extra columns
of an events file are ignored, and items without a title are counted in a warning.

Each case is a real `itx run` of the tiny preset's models on a generated event log, in process."""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import polars as pl
import pytest
import yaml

from conf.loading import preset_path
from flows.cli import main
from tasks.data.preprocessing import UNKNOWN_GROUP

pytestmark = pytest.mark.slow

T0 = 1_700_000_000
N_USERS, N_ITEMS, PER_USER = 60, 30, 8


def event_rows(users: list[str]) -> list[tuple[str, str, int]]:
    return [(user, f"i{(u + j) % N_ITEMS}", T0 + 60 * j) for u, user in enumerate(users) for j in range(PER_USER)]


def users_file(folder: Path) -> str:
    """Every user's gender, which the tiny preset's scenario splits on."""
    path = folder / "users.csv"
    pl.DataFrame({"user_id": [f"u{u}" for u in range(N_USERS)], "gender": ["FM"[u % 2] for u in range(N_USERS)]}
                 ).write_csv(path)
    return str(path)


def run_itx(folder: Path, data: dict, *settings: str) -> tuple[int, str, Path]:
    """(exit code, everything logged, the run folder) of `itx run` on a tiny preset with this data section."""
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({"extends": str(preset_path("experiments/tiny.yaml")), "data": data,
                                      "registry": {"enabled": False}, "train": {"max_epochs": 1}}))
    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stderr(logged):
            code = main(["run", str(config), "--output-dir", str(folder / "out"), "--run-name", "run",
                         "--set", f"tracking.tracking_uri=sqlite:///{folder / 'mlflow.db'}",
                         *[part for setting in settings for part in ("--set", setting)]])
    finally:
        logging.getLogger().removeHandler(handler)
    return code, logged.getvalue(), folder / "out" / "run"


def test_users_without_attributes_form_an_unknown_group_and_the_run_succeeds(tmp_path):
    users = [f"u{u}" for u in range(N_USERS - 1)] + ["NaN"]  # an id that a float parser would read as NaN
    pl.DataFrame(event_rows(users), schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(
        tmp_path / "events.csv")
    # A third of the users have no row, one has an empty gender, "NaN" has one.
    attributes = [(user, "FM"[u % 2]) for u, user in enumerate(users) if u % 3]
    attributes = [(user, None if user == "u1" else gender) for user, gender in attributes]
    pl.DataFrame(attributes, schema=["user_id", "gender"], orient="row").write_csv(tmp_path / "users.csv")
    code, log, run_dir = run_itx(tmp_path, {"source": "events", "events": {
        "interactions": str(tmp_path / "events.csv"), "users": str(tmp_path / "users.csv")}},
        "evaluation.group_attribute=gender")
    assert code == 0, log[-3000:]
    metrics = pl.read_csv(run_dir / "metrics.csv")
    assert metrics["group"].null_count() == 0
    assert set(metrics["group"].unique()) == {"all", "F", "M", UNKNOWN_GROUP}
    assert f"have no 'gender'" in log and f"their group is '{UNKNOWN_GROUP}'" in log
    assert (run_dir / "run.json").exists()


def test_extra_columns_of_an_events_file_are_ignored(tmp_path):
    rows = event_rows([f"u{u}" for u in range(N_USERS)])
    lines = ["user_id,item_id,timestamp,device,note,"] + [f"{u},{i},{t},phone,\"a, b\"," for u, i, t in rows]
    (tmp_path / "events.csv").write_text("\n".join(lines) + "\n")
    code, log, run_dir = run_itx(tmp_path, {"source": "events", "events": {
        "interactions": str(tmp_path / "events.csv"), "users": users_file(tmp_path)}})
    assert code == 0, log[-3000:]
    assert pl.read_parquet(run_dir / "data" / "events.parquet").height == len(rows)


def test_items_without_titles_are_counted_in_a_warning(tmp_path):
    pl.DataFrame(event_rows([f"u{u}" for u in range(N_USERS)]), schema=["user_id", "item_id", "timestamp"],
                 orient="row").write_csv(tmp_path / "events.csv")
    titled = [(f"i{i}", f"Item {i}") for i in range(0, N_ITEMS, 2)]  # half the items have a row
    pl.DataFrame(titled, schema=["item_id", "title"], orient="row").write_csv(tmp_path / "items.csv")
    code, log, run_dir = run_itx(tmp_path, {"source": "events", "events": {
        "interactions": str(tmp_path / "events.csv"), "items": str(tmp_path / "items.csv"),
        "users": users_file(tmp_path)}})
    assert code == 0, log[-3000:]
    assert f"{N_ITEMS // 2} of {N_ITEMS} items of the events have no title" in log
