"""Files are read without running code from them, and names from config never lead out of the output root."""
from __future__ import annotations

import ast
import json
import pathlib
from pathlib import Path

import pytest
import torch
import yaml

from conf.loading import ConfigError, load_config, preset_path
from conf.schema import TrainConfig
from models.checkpoints import FIT_STATE, fit_signature
from models.kinds import build_model, load_model
from tasks.data.event_store import store_dir
from tasks.io import TableRef, inside
from tasks.data.preprocessing import PreparedData
from tasks.ops.runs import open_run_folder
from tasks.modelling.training import pretrain, train_recommender

ROOT = Path(__file__).resolve().parents[2]
AUDITED = ("conf", "tasks", "models", "flows", "benchmarks")


class Payload:
    """Unpickling this creates a file: evidence that loading ran code from the file."""

    def __init__(self, evidence: Path):
        self.evidence = evidence

    def __reduce__(self):
        return pathlib.Path.touch, (self.evidence,)


def booby_trapped(path: Path, evidence: Path, wrap=lambda payload: payload) -> Path:
    """A torch file that runs code when loaded with full pickle."""
    torch.save(wrap(Payload(evidence)), path)
    return path


def test_the_trap_works_when_pickle_is_allowed(tmp_path):
    evidence = tmp_path / "ran"
    torch.load(booby_trapped(tmp_path / "model.pt", evidence), weights_only=False)
    assert evidence.exists()  # so its absence below means the loaders refused to run it


def test_model_files_load_without_running_code(tmp_path):
    evidence = tmp_path / "ran"
    path = booby_trapped(tmp_path / "model.pt", evidence, lambda p: {"kind": "rnn", "hparams": p, "state_dict": {}})
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_model(path)
    assert not evidence.exists()


def test_pretrained_weights_load_without_running_code(tmp_path):
    evidence = tmp_path / "ran"
    (tmp_path / "pretrain").mkdir()
    booby_trapped(tmp_path / "pretrain" / "pretrained.pt", evidence)
    (tmp_path / "pretrain" / "summary.json").write_text(json.dumps({"epochs": 1, "best_valid_ndcg": None,
                                                                    "seconds": 0.0}))
    model = build_model("rnn", 11, {"embedding_dim": 4, "hidden_dim": 4})
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        pretrain(model, None, TrainConfig(), 0, [], tmp_path / "pretrain")
    assert not evidence.exists()


def small_data():
    import numpy as np

    from models.data import SequenceData

    sequences = [np.arange(1, 8) + user % 3 for user in range(12)]
    return SequenceData(11, [s[:-2] for s in sequences], [s[-2:-1] for s in sequences], [s[-1:] for s in sequences])


def test_a_trapped_checkpoint_is_neither_run_nor_resumed_from(tmp_path):
    data, train = small_data(), TrainConfig(max_epochs=1, batch_size=4, progress_bar=False, accelerator="cpu")
    model = build_model("rnn", data.n_items, {"embedding_dim": 4, "hidden_dim": 4, "max_seq_len": 5})
    torch.manual_seed(0)
    # An interrupted fit of this very configuration, whose last.ckpt has been replaced by a trap.
    (tmp_path / FIT_STATE).write_text(json.dumps({"signature": fit_signature(model, data, train, 0)}))
    evidence = tmp_path / "ran"
    booby_trapped(tmp_path / "last.ckpt", evidence, lambda p: {"epoch": 0, "state_dict": p, "callbacks": {}})
    summary = model.fit(data, train, seed=0, checkpoint_dir=tmp_path)
    assert not evidence.exists()
    assert summary.epochs == 1  # trained from the start instead


def test_a_finished_fit_whose_best_checkpoint_is_trapped_is_trained_again_without_running_it(tmp_path):
    data, train = small_data(), TrainConfig(max_epochs=1, batch_size=4, progress_bar=False, accelerator="cpu")
    model = build_model("rnn", data.n_items, {"embedding_dim": 4, "hidden_dim": 4, "max_seq_len": 5})
    state = {"signature": fit_signature(model, data, train, 0), "best": "best-epoch=0.ckpt",
             "summary": {"epochs": 7, "best_valid_ndcg": 0.5, "seconds": 1.0}}
    (tmp_path / FIT_STATE).write_text(json.dumps(state))
    evidence = tmp_path / "ran"
    booby_trapped(tmp_path / "best-epoch=0.ckpt", evidence, lambda p: {"state_dict": p})
    summary = model.fit(data, train, seed=0, checkpoint_dir=tmp_path)
    assert not evidence.exists()
    assert summary.epochs == 1  # not the recorded 7: the fit ran again


def test_yaml_tags_that_would_run_code_are_rejected(tmp_path):
    evidence = tmp_path / "ran"
    preset = tmp_path / "evil.yaml"
    preset.write_text(f"name: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path "
                      f"['{evidence}']]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(preset)
    # --set values are parsed with the safe loader too (conf/loading.py lets its YAMLError through unwrapped).
    with pytest.raises((ConfigError, yaml.YAMLError)):
        load_config(preset_path("experiments/tiny.yaml"), [f"name=!!python/object/apply:pathlib.Path.touch "
                                                            f"[!!python/object/apply:pathlib.Path ['{evidence}']]"])
    assert not evidence.exists()


def calls(tree: ast.AST):
    """(dotted function name, call node) of every call in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, func = [], node.func
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                parts.append(func.id)
            yield ".".join(reversed(parts)), node


def keyword_is(node: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value == value for k in node.keywords)


def test_no_source_file_loads_with_pickle_or_an_unsafe_yaml_loader():
    problems = []
    for folder in AUDITED:
        for path in (ROOT / folder).rglob("*.py"):
            for name, node in calls(ast.parse(path.read_text(encoding="utf-8"))):
                where = f"{path.relative_to(ROOT)}:{node.lineno} {name}"
                if name == "torch.load" and not keyword_is(node, "weights_only", True):
                    problems.append(f"{where} without weights_only=True")
                elif name.split(".")[-1] in ("load", "loads") and name.split(".")[0] in ("pickle", "cloudpickle",
                                                                                        "dill", "joblib"):
                    problems.append(where)
                elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                    problems.append(where)
                elif name in ("np.load", "numpy.load") and keyword_is(node, "allow_pickle", True):
                    problems.append(f"{where} with allow_pickle=True")
                elif any(k.arg == "ckpt_path" for k in node.keywords) and not keyword_is(node, "weights_only", True):
                    problems.append(f"{where}(ckpt_path=...) without weights_only=True")
    assert not problems, problems


# --- names from config stay inside the output root ---------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc", ".", "", "a/.."])
def test_inside_rejects_names_that_leave_the_root_naming_the_setting(tmp_path, name):
    with pytest.raises(ValueError, match=r"^output\.run_name: .*must name a folder inside"):
        inside(tmp_path / "out", name, setting="output.run_name")


def test_inside_accepts_plain_and_nested_names(tmp_path):
    assert inside(tmp_path, "runs", "a-b.c", setting="s") == tmp_path.resolve() / "runs" / "a-b.c"
    assert inside(tmp_path, "x/../y", setting="s") == tmp_path.resolve() / "y"


@pytest.mark.parametrize(("override", "key"), [
    ("name=../../escaped", "name"),
    ("name=team/exp", "name"),
    ("models=[{kind: popularity, name: ../../../escaped}]", "models.0.name"),
])
def test_config_and_model_names_with_path_parts_are_rejected_when_the_config_loads(override, key):
    with pytest.raises(ConfigError, match=rf"{key}: must match .*no path separators"):
        load_config(preset_path("experiments/tiny.yaml"), [override])


def test_a_config_name_leading_out_of_the_root_creates_no_run_folder(tmp_path):
    # The loader rejects such names; the run folder code refuses them too (configs built in code skip the loader).
    config = load_config(preset_path("experiments/tiny.yaml"), [f"output.root={tmp_path / 'out'}",
                                                                f"tracking.tracking_uri=sqlite:///{tmp_path / 'm.db'}"])
    for name, message in (("../../escaped", r"^name: '\.\./\.\./escaped-"), ("team/exp", "single folder name")):
        with pytest.raises(ValueError, match=message):
            open_run_folder(config.model_copy(update={"name": name}))
    assert not list(tmp_path.parent.glob("*escaped*")) and not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("run_name", ["../x", "..", ".", "a/b", "/tmp/x"])
def test_run_names_with_path_parts_are_rejected_when_the_config_loads(tmp_path, run_name):
    with pytest.raises(ConfigError, match="output.run_name"):
        load_config(preset_path("experiments/tiny.yaml"), [f"output.run_name={run_name}"])


def test_the_event_store_of_a_config_stays_inside_the_root(tmp_path):
    assert store_dir(str(tmp_path), "tiny") == tmp_path.resolve() / "event_store" / "tiny"
    with pytest.raises(ValueError, match=r"^name: "):
        store_dir(str(tmp_path), "../../elsewhere")


def test_a_model_name_leading_out_of_the_cache_trains_nothing(tmp_path):
    config = load_config(preset_path("experiments/tiny.yaml"), ["models=[{kind: popularity, name: popularity}]"])
    planned = config.model_plan()[0]
    escaping = planned.model_copy(update={"model": planned.model.model_copy(update={"name": "../../../escaped"})})
    table = TableRef(str(tmp_path / "missing.parquet"), "0")
    prepared = PreparedData(table, table, table, table, n_users=1, n_items=2, n_events=1, dropped_events=0)
    with pytest.raises(ValueError, match="models: name '../../../escaped'"):
        train_recommender(prepared, escaping, config, tmp_path / "cache")
    assert not list(tmp_path.parent.parent.glob("*escaped*"))