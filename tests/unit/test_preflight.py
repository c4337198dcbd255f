"""What a config refers to is checked before a run creates anything: the output folder and the text model
(tasks/ops/preflight.py), and the input data's timestamps (tasks.data.ingestion.validate_raw)."""
from __future__ import annotations

import os

import polars as pl
import pytest

from conf.loading import load_config, preset_path
from tasks.data.ingestion import validate_raw
from tasks.ops.preflight import check_output_root, check_references
from tasks.schemas import DataError


def tiny(tmp_path, *overrides: str):
    return load_config(preset_path("experiments/tiny.yaml"), [f"output.root={tmp_path / 'out'}", *overrides])


def test_an_output_root_that_is_a_file_or_lies_under_one_is_refused_naming_the_setting(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"output.root \(--output-dir\): .*/file is a file; expected a folder"):
        check_output_root(str(tmp_path / "file"))
    with pytest.raises(ValueError, match=r"/file/runs lies under .*/file, which is a file"):
        check_output_root(str(tmp_path / "file" / "runs"))


def test_an_output_root_still_to_be_created_is_accepted_and_not_created(tmp_path):
    check_output_root(str(tmp_path / "a" / "b"))
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_root_that_cannot_be_written_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="is not writable"):
        check_output_root(str(locked / "runs"))


def test_a_missing_text_model_folder_is_refused_when_a_model_needs_it(tmp_path):
    models = "models=[{kind: popularity}, {kind: bert_transfer, name: bert, train_on: pooled, init: scratch}]"
    config = tiny(tmp_path, models, f"text.model_path={tmp_path / 'no-model'}")
    with pytest.raises(ValueError, match=f"text model folder {tmp_path / 'no-model'}: folder does not exist"):
        check_references(config)
    check_references(tiny(tmp_path, f"text.model_path={tmp_path / 'no-model'}"))  # no model reads texts: fine
    assert not (tmp_path / "out").exists()


def test_negative_timestamps_are_refused_with_the_count_and_the_smallest():
    events = pl.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"], "timestamp": [5, -3, -70]})
    items = pl.DataFrame({"item_id": ["a", "b"], "title": [None, None], "category": [None, None],
                          "domain": [None, None]}, schema={c: pl.String for c in ("item_id", "title", "category",
                                                                                   "domain")})
    users = pl.DataFrame({"user_id": ["u1", "u2"]})
    with pytest.raises(DataError, match="events.csv: interactions column 'timestamp' has 2 negative values "
                                        r"\(the smallest -70\); expected seconds since 1970"):
        validate_raw(events, items, users, "events.csv")
