"""Transfer scenarios at the task level: views from the prepared tables, and the item text embeddings.

The plain functions here are what training, evaluation and export share: the
same config and seed always give the same views (the same sampled target users and cold users).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from conf.schema import ScenarioConfig, TextConfig, TransferConfig
from models.data import SequenceData
from models.text import model_fingerprint, resolve_model_path
from models.transfer_data import (EMPTY, OTHER, SOURCE, TARGET, TransferViews, item_domain_views, keep_items,
                                  user_group_views)
from tasks import schemas
from tasks.io import CacheDir, TableRef, atomic_path, fingerprint_file, fingerprint_text, read_table
from tasks.data.preprocessing import PreparedData, load_sequence_data
from tasks.modelling.text_embeddings import encode_texts, item_texts

log = logging.getLogger(__name__)
ROLE_CODES = {"source": SOURCE, "target": TARGET}


def role_codes(roles: pl.Series) -> np.ndarray:
    """Role names ('source', 'target', anything else) as role codes."""
    return np.array([ROLE_CODES.get(role, OTHER) for role in roles.to_list()], dtype=np.int8)


def item_roles(prepared: PreparedData) -> np.ndarray:
    """[n_items] role code of every item_idx (padding: OTHER)."""
    items = read_table(prepared.items, schemas.ITEM_INDEX, "items").sort("item_idx")
    return np.concatenate([[OTHER], role_codes(items["role"])]).astype(np.int8)


def load_views(prepared: PreparedData, scenario: ScenarioConfig, transfer: TransferConfig, fraction: float,
               seed: int) -> TransferViews:
    """The views of the configured scenario at one target fraction."""
    data = load_sequence_data(prepared)
    if scenario.partition == "user_group":
        users = read_table(prepared.users, schemas.USER_INDEX, "users").sort("user_idx")
        return user_group_views(data, role_codes(users["role"]), fraction, seed)
    if scenario.partition == "item_domain":
        return item_domain_views(data, item_roles(prepared), fraction, transfer.cold_start_fraction, seed)
    raise ValueError(f"scenario.partition '{scenario.partition}' has no source/target views")


def input_data(prepared: PreparedData, reads: str) -> SequenceData:
    """Every user's data with the history restricted to the items a model reads (all, target, source)."""
    data = load_sequence_data(prepared)
    if reads == "all":
        return data
    return keep_items(data, item_roles(prepared) == (TARGET if reads == "target" else SOURCE))


def embed_item_texts(prepared: PreparedData, text: TextConfig, cache_dir: Path) -> TableRef:
    """[n_items, D] text embeddings of every item (row 0, padding, is zeros) saved as .npy."""
    items = read_table(prepared.items, schemas.ITEM_INDEX, "items").sort("item_idx")
    encoded = encode_texts(item_texts(items), text.model_path, cache_dir, batch_size=text.batch_size,
                           max_length=text.max_length)
    vectors = np.vstack([np.zeros((1, encoded.vectors.shape[1]), np.float32), encoded.vectors])
    key = fingerprint_text(prepared.items.fingerprint, text.model_dump(),
                           model_fingerprint(resolve_model_path(text.model_path)))
    path = cache_dir / f"items-{key}.npy"
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, vectors)
    log.info("item texts: %d items embedded (%d computed, %d from cache), dim %d", len(items), encoded.computed,
             encoded.cached, vectors.shape[1])
    return TableRef(str(path), fingerprint_file(path))


def only_users(data: SequenceData, users: np.ndarray, split: str = "test") -> SequenceData:
    """The data with the targets of `split` (valid or test) kept for `users` only, so that only they are ranked."""
    chosen = np.zeros(len(data.test), bool)
    chosen[users] = True
    kept = [t if chosen[u] else EMPTY for u, t in enumerate(data.targets(split))]
    return replace(data, **{split: kept})


@task(name="embed-item-texts", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def embed_items(prepared: PreparedData, text: TextConfig, cache: CacheDir) -> TableRef:
    """Prefect task: embed every item's title and category with the pretrained text model (cached on disk)."""
    cache_dir = Path(text.cache_dir) if text.cache_dir else cache.path / "text"
    return embed_item_texts(prepared, text, cache_dir)


def item_text_tensor(ref: TableRef) -> torch.Tensor:
    """The saved item text embeddings as a float tensor."""
    return torch.from_numpy(np.load(ref.path))
