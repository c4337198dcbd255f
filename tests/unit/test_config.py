"""Loading presets, `extends`, `--set` overrides, and the errors a bad config raises."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from conf.loading import ConfigError, dump_config, load_config, preset_path, read_yaml
from conf.schema import PipelineConfig, TrainConfig

TINY = "experiments/tiny.yaml"


def write_preset(directory: Path, document: Any, name: str = "preset.yaml") -> Path:
    """A preset file in `directory` holding `document` as YAML."""
    path = directory / name
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def load_error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    """The ConfigError message that loading `path` raises."""
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    return str(caught.value)


# --- packaged presets and `extends` -------------------------------------------------------------


def test_base_preset_loads_with_its_own_values():
    config = load_config(preset_path())
    assert isinstance(config, PipelineConfig)
    assert config.name == "demo"
    assert config.model_names() == ["popularity", "gru", "caser"]
    written = read_yaml(preset_path())["train"]["learning_rate"]
    assert written != TrainConfig().learning_rate  # the preset's value, not the schema default
    assert config.train.learning_rate == pytest.approx(written)


def test_tiny_preset_inherits_base_through_extends():
    base, tiny = load_config(preset_path()), load_config(preset_path(TINY))
    assert tiny.name == "tiny"
    assert tiny.models == base.models
    tiny_yaml = yaml.safe_load(preset_path(TINY).read_text())
    assert tiny.data.synthetic.n_users == tiny_yaml["data"]["synthetic"]["n_users"] != base.data.synthetic.n_users
    # Deep merge: tiny sets other train keys, yet base's learning rate survives (not the default).
    assert "learning_rate" not in tiny_yaml["train"]
    assert tiny.train.max_epochs == tiny_yaml["train"]["max_epochs"]
    assert tiny.train.learning_rate == base.train.learning_rate != TrainConfig().learning_rate
    assert tiny.data.synthetic.domains == ["books", "movies"]


def test_extends_lets_child_keys_win_over_the_parent(tmp_path):
    path = write_preset(tmp_path, {"extends": str(preset_path()), "seed": 7, "train": {"batch_size": 16}})
    config = load_config(path)
    assert (config.seed, config.train.batch_size) == (7, 16)
    assert config.name == "demo"  # the parent's name is kept; the file stem only fills a missing name


# --- validation errors name the file and the key path ------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"train": {"max_epoch": 3}}, "train.max_epoch: unknown key"),
        ({"train": {"max_epochs": "many"}}, "train.max_epochs: Input should be a valid integer"),
        ({"preprocess": {"k_core": -1}}, "preprocess.k_core: Input should be greater than or equal to 1"),
        ({"preprocess": {"tie_order": "time"}}, "preprocess.tie_order: Input should be 'file', 'shuffle' or 'id'"),
        (
            {"data": {"synthetic": {"n_items": 20}}, "evaluation": {"ks": [50]}},
            "evaluation.ks: K=50 must be smaller than the catalogue (20 items)",
        ),
        (
            {"data": {"synthetic": {"n_items": 20}}, "evaluation": {"ks": [5]}, "export": {"top_k": 50}},
            "export.top_k: K=50 must be smaller than the catalogue (20 items)",
        ),
        ({"scenario": {"source": "F", "target": "F"}}, "scenario: source and target must differ, both are 'F'"),
        ({"scenario": {"target": "X"}}, "scenario.target: 'X' does not occur in data.synthetic.groups"),
        ({"models": [{"kind": "transformer", "name": "t"}]}, "models.0: Input tag 'transformer'"),
        (
            {"models": [{"kind": "rnn", "name": "a"}, {"kind": "cnn", "name": "a"}]},
            "models: names must be distinct, got ['a', 'a']",
        ),
        ({"output": {"run_name": "../escape"}}, "output.run_name: must match"),
        # A model entry's error names the path one would write, without the union's tag (not models.1.rnn...).
        ({"models": [{"kind": "popularity"}, {"kind": "rnn", "hidden_dim": "wide"}]}, "models.1.hidden_dim: Input"),
    ],
    ids=[
        "unknown-key", "wrong-type", "negative-k-core", "unknown-tie-order", "ks-not-below-catalogue", "top-k-not-below-catalogue",
        "source-equals-target", "target-not-a-group", "unknown-model-kind", "duplicate-model-names",
        "run-name-escapes-folder", "model-field-path",
    ],
)
def test_invalid_config_is_rejected_naming_file_and_key(tmp_path, document, expected):
    path = write_preset(tmp_path, document)
    message = load_error(path)
    assert message.startswith(f"{path}: invalid config: ")
    assert expected in message


def test_valid_catalogue_bound_is_accepted(tmp_path):
    # The counterpart of the K >= catalogue errors: K=19 and top_k=19 fit a 20-item catalogue.
    path = write_preset(tmp_path, {"data": {"synthetic": {"n_items": 20}}, "evaluation": {"ks": [19]},
                                   "export": {"top_k": 19}})
    assert load_config(path).evaluation.ks == [19]


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "absent.yaml"
    assert load_error(missing) == f"{missing}: config file not found (expected a YAML file)"


def test_missing_extends_parent_names_the_parent_path(tmp_path):
    path = write_preset(tmp_path, {"extends": "nowhere.yaml"})
    assert f"{tmp_path / 'nowhere.yaml'}: config file not found" in load_error(path)


def test_non_mapping_yaml_names_the_path(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- seed\n- 3\n", encoding="utf-8")
    assert load_error(path) == f"{path}: expected a mapping at the top level, found list"


# --- `--set` overrides --------------------------------------------------------------------------


def test_override_sets_a_top_level_scalar():
    assert load_config(preset_path(TINY), ["seed=7"]).seed == 7


def test_override_sets_a_nested_key_parsed_as_yaml():
    config = load_config(preset_path(TINY), ["train.deterministic=false", "scenario.name=transfer"])
    assert config.train.deterministic is False  # YAML 'false', not the string "false"
    assert config.scenario.name == "transfer"


def test_override_reaches_a_list_entry_by_index():
    config = load_config(preset_path(TINY), ["models.1.hidden_dim=32"])
    assert config.models[1].name == "gru"
    assert config.models[1].hidden_dim == 32
    assert config.models[1].embedding_dim == 64  # the rest of the entry is untouched


def test_override_reaches_list_entries_the_preset_leaves_to_defaults(tmp_path):
    path = write_preset(tmp_path, {"seed": 1})  # no models: the schema's three defaults apply
    assert load_config(path, ["models.2.window=3"]).models[2].window == 3


def test_override_value_can_be_a_yaml_list():
    assert load_config(preset_path(TINY), ["evaluation.ks=[1,2]"]).evaluation.ks == [1, 2]


def test_overrides_apply_in_order_so_the_last_wins():
    assert load_config(preset_path(TINY), ["seed=1", "seed=2"]).seed == 2


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("seed", "--set 'seed': expected key.path=value"),
        ("=3", "--set '=3': expected key.path=value"),
        ("models.9.hidden_dim=32", "--set 'models.9.hidden_dim=32': 'models.9' needs a list index below 3"),
        ("models.x.name=a", "--set 'models.x.name=a': 'models.x' needs a list index below 3"),
        ("seed.deep=1", "--set 'seed.deep=1': 'seed' is not a section"),
    ],
    ids=["no-equals", "empty-key", "index-out-of-range", "index-not-a-number", "scalar-is-not-a-section"],
)
def test_malformed_override_raises_naming_the_assignment(assignment, expected):
    assert load_error(preset_path(TINY), (assignment,)) == expected


def test_override_of_an_unknown_key_fails_validation_naming_it():
    message = load_error(preset_path(TINY), ("train.max_epoch=3",))
    assert re.search(r"tiny\.yaml: invalid config: train\.max_epoch: unknown key$", message)


def test_override_with_a_wrong_type_fails_validation_naming_it():
    assert "models.1.hidden_dim: Input should be a valid integer" in load_error(
        preset_path(TINY), ("models.1.hidden_dim=wide",)
    )


# --- dump_config -------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["base.yaml", TINY])
def test_dumped_config_reloads_to_an_equal_config(tmp_path, preset):
    config = load_config(preset_path(preset), ["models.1.hidden_dim=32", "evaluation.ks=[20,5]"])
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_config(config), encoding="utf-8")
    reloaded = load_config(dumped)
    assert reloaded == config
    assert reloaded.name == config.name != "resolved"  # the dump carries the name, not the file stem


def test_no_setting_description_holds_an_angle_bracket_placeholder():
    """The Prefect deployment form renders descriptions as HTML-sanitised markdown: `<config name>` vanishes."""
    import json
    import re

    from conf.schema import PipelineConfig

    schema = json.dumps(PipelineConfig.model_json_schema())
    descriptions = re.findall(r'"description": "((?:[^"\\]|\\.)*)"', schema)
    assert descriptions, "the schema carries the field descriptions"
    assert [d for d in descriptions if re.search(r"<[A-Za-z][^<>]*>", d)] == []


def test_configuration_reference_in_docs_is_generated_from_the_current_schema():
    from conf.reference import DOC, rendered_page

    page = DOC.read_text()
    assert rendered_page(page) == page, "docs/configuration.md is stale: run .venv/bin/python -m conf.reference"


def test_configuration_reference_lists_every_setting_with_its_default():
    from conf.reference import reference_markdown

    text = reference_markdown()
    for row in ("| `train.loss` | `\"full\"` |", "| `seed` | `42` |", "| `transfer.target_fractions` | `[1.0]` |",
                "| `models[].tie_output` | `false` |", "| `models[].sequence` | `{kind: sasrec}` |"):
        assert row in text


def test_a_sequence_model_inside_a_hybrid_or_mapping_may_not_read_item_text():
    with pytest.raises(ConfigError, match=r"models\.0\.sequence: item_text: a sasrec inside a hybrid model"):
        load_config(preset_path("experiments/tiny.yaml"),
                    ["models=[{kind: hybrid, name: h, sequence: {kind: sasrec, item_text: true}}]"])
    with pytest.raises(ConfigError, match=r"models\.0\.extractor: item_text: a sasrec inside a mapping model"):
        load_config(preset_path("experiments/tiny.yaml"),
                    ["models=[{kind: emcdr, name: m, extractor: {kind: sasrec, item_text: true}}]"])
