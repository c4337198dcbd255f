"""Everything a config refers to, checked before a run creates anything (folder, MLflow run, registry).

A run that would fail on a missing text model or an output root that is a file fails here, in
seconds and with the setting named, instead of after its run folder and MLflow runs exist. The input
data has its own check (tasks.data.ingestion.check_source), which `itx run` calls too.
"""
from __future__ import annotations

import os
from pathlib import Path

from conf.schema import PipelineConfig, reads_item_text
from tasks.data.pseudonyms import pseudonym_key_id


def check_output_root(root: str) -> None:
    """Raise ValueError unless `root` is a folder, or a path where one can be created (output.root)."""
    path = Path(root).expanduser().absolute()
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under {existing}, which is a file"
        raise ValueError(f"output.root (--output-dir): {path} {where}; expected a folder, or a path where one can "
                         "be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"output.root (--output-dir): {existing} is not writable by this user; expected a folder "
                         "runs can be written to")


def check_text_model(config: PipelineConfig) -> None:
    """Raise TextModelError (a ValueError naming text.model_path) when a model needs the text model and its
    folder is missing or incomplete."""
    if any(reads_item_text(model) for model in config.models):
        from models.text import resolve_model_path  # imports torch: only for configs that need it

        resolve_model_path(config.text.model_path)


def check_references(config: PipelineConfig) -> None:
    """The output root, the pseudonym key and the text model the config names, all usable."""
    check_output_root(config.output.root)
    pseudonym_key_id(config.privacy)
    check_text_model(config)
