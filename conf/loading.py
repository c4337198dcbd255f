"""Load YAML presets (with `extends`) and `key=value` overrides into a validated PipelineConfig."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from conf.schema import PipelineConfig

DEFAULT_PRESET = "base.yaml"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and key path."""


def preset_path(name: str = DEFAULT_PRESET) -> Path:
    """Path of a preset shipped in the `conf` package (e.g. 'base.yaml', 'experiments/tiny.yaml')."""
    return Path(str(resources.files("conf").joinpath(name)))


def read_yaml(path: Path) -> dict[str, Any]:
    """Mapping in a YAML file, following `extends: <relative path>` chains (child keys win)."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory (expected a YAML file)")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (expected a YAML file)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8 text (byte {raw[err.start]:#04x}); "
                          "expected a UTF-8 YAML file") from None
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(document).__name__}")
    parent = document.pop("extends", None)
    if parent is None:
        return document
    return merge(read_yaml((path.parent / parent).resolve()), document)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of two mappings; lists and scalars in `override` replace those in `base`."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_override(document: dict[str, Any], assignment: str) -> None:
    """Set `a.b.0.c=value` in place; the value is parsed as YAML (so `3`, `true`, `[5, 10]` work)."""
    key_path, sep, raw_value = assignment.partition("=")
    if not sep or not key_path:
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw_value) if raw_value else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({' '.join(str(error).split())})") from None
    keys = key_path.split(".")
    node: Any = document
    for depth, key in enumerate(keys[:-1]):
        node = _child(node, key, ".".join(keys[: depth + 1]), assignment)
    last = keys[-1]
    if isinstance(node, list):
        node[_index(node, last, key_path, assignment)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {assignment!r}: '{'.'.join(keys[:-1])}' is not a section")


def _child(node: Any, key: str, path: str, assignment: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, path, assignment)]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {assignment!r}: '{path}' is not a section")
    return node.setdefault(key, {})


def _index(node: list, key: str, path: str, assignment: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"--set {assignment!r}: '{path}' needs a list index below {len(node)}")
    return int(key)


def validate(document: dict[str, Any], origin: str) -> PipelineConfig:
    """PipelineConfig from a mapping, or ConfigError listing every bad key path."""
    try:
        return PipelineConfig.model_validate(document)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            loc = list(error["loc"])
            # The tagged union of models puts the member's tag after the index (models.1.rnn.hidden_dim);
            # drop it so the message names the path a preset or `--set` uses (models.1.hidden_dim).
            if len(loc) > 2 and loc[0] == "models" and isinstance(loc[1], int):
                del loc[2]
            location = ".".join(str(part) for part in loc) or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{location}: {message}")
        raise ConfigError(f"{origin}: invalid config: " + "; ".join(problems)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Validated config from a preset file (default: the packaged base preset) plus overrides."""
    config_path = Path(path) if path is not None else preset_path()
    document = read_yaml(config_path)
    document.setdefault("name", config_path.stem)
    # Overrides are applied to a copy that defaults fill in, so `--set models.0.name=x` reaches
    # list entries the preset leaves to the defaults.
    if overrides:
        document = merge(PipelineConfig().model_dump(mode="json"), document)
    for assignment in overrides:
        apply_override(document, assignment)
    return validate(document, str(config_path))


def dump_config(config: PipelineConfig) -> str:
    """YAML text of the fully resolved config (defaults included), as saved with every run."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
