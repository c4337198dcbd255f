"""Item texts and their embeddings, cached on disk.

Encoding a catalogue takes minutes on a CPU, so vectors are cached, keyed by a fingerprint of the
model files, the text and `max_length`: a rerun encodes only new or changed titles.
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from models.text import load_config, embed_texts, load_text_model, model_fingerprint, resolve_model_path, text_hash

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedTexts:
    """Text vectors in input order, with how many distinct texts came from the cache or the model."""

    vectors: np.ndarray  # [N, D] float32, rows L2-normalised
    computed: int  # distinct texts encoded by the model in this call
    cached: int  # distinct texts read from the cache


def item_texts(items: pl.DataFrame) -> list[str]:
    """The text to encode for each item row: 'title (category)', the title alone, or the item_id.

    Columns: item_id, title, and optionally category. A missing title falls back to the item_id,
    so every item still gets a (if uninformative) vector; a missing category is left out.
    """
    titles = items.get_column("title").to_list()
    item_ids = items.get_column("item_id").to_list()
    categories = items.get_column("category").to_list() if "category" in items.columns else [None] * len(items)
    texts = []
    for item_id, title, category in zip(item_ids, titles, categories):
        text = str(item_id) if title is None else str(title)
        texts.append(text if category is None else f"{text} ({category})")
    return texts


def _cache_file(cache_dir: Path, fingerprint: str) -> Path:
    """The cache of one model: one file per fingerprint, so a model change never reads stale vectors."""
    return cache_dir / f"text-embeddings-{fingerprint[:16]}.parquet"


def _read_cache(path: Path) -> pl.DataFrame | None:
    """The cache table at `path`, or None when it is absent or unreadable (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        return pl.read_parquet(path, columns=["text_hash", "max_length", "embedding"])
    except Exception as error:  # a cache is disposable: recompute rather than fail the run
        logger.warning("text embedding cache %s is unreadable (%s); recomputing it", path, error)
        return None


def _cached_vectors(cache: pl.DataFrame | None, hashes: list[str],
                    max_length: int) -> tuple[list[str], np.ndarray]:
    """The hashes among `hashes` found in the cache for max_length, and their vectors [K, D]."""
    if cache is None:
        return [], np.zeros((0, 0), dtype=np.float32)
    hits = cache.filter((pl.col("max_length") == max_length) & pl.col("text_hash").is_in(hashes))
    hits = hits.unique("text_hash", keep="first", maintain_order=True)
    if hits.is_empty():
        return [], np.zeros((0, 0), dtype=np.float32)
    # Exploding the list column and reshaping avoids building one Python list per row.
    vectors = hits.get_column("embedding").explode().to_numpy().astype(np.float32).reshape(len(hits), -1)
    return hits.get_column("text_hash").to_list(), vectors


def _write_cache(path: Path, cache: pl.DataFrame | None, hashes: list[str], vectors: np.ndarray,
                 max_length: int) -> None:
    """Append the new (hash, max_length) -> vector rows to the cache file, atomically.

    A crash mid-write leaves the old file intact. Two runs writing at once each replace the file
    whole, so the later one drops the other's new rows: they are only recomputed next time.
    """
    new = pl.DataFrame({
        "text_hash": pl.Series(hashes, dtype=pl.String),
        "max_length": pl.Series([max_length] * len(hashes), dtype=pl.Int64),
        "embedding": pl.Series(vectors.astype(np.float32)).cast(pl.List(pl.Float32)),  # 2-D array -> Array -> List
    })
    merged = new if cache is None else pl.concat([cache.cast(new.schema), new])
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # same folder: os.replace is atomic
    try:
        merged.write_parquet(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def encode_texts(texts: list[str], model_path: str | Path | None, cache_dir: Path, batch_size: int = 64,
                 max_length: int = 32, progress: bool = True) -> EncodedTexts:
    """Unit-length text vectors [len(texts), D] in input order, encoding only texts not already cached.

    model_path: a local Hugging Face model folder, or None for the packaged all-MiniLM-L6-v2.
    max_length: tokens kept per text (longer texts are truncated); part of the cache key.
    The model is loaded only when some text is missing from the cache.
    """
    folder = resolve_model_path(model_path)
    cache_path = _cache_file(Path(cache_dir), model_fingerprint(folder))
    hashes = [text_hash(text) for text in texts]
    unique = dict(zip(hashes, texts))  # identical texts are encoded once
    cache = _read_cache(cache_path)
    cached_hashes, cached_vectors = _cached_vectors(cache, list(unique), max_length)
    found = set(cached_hashes)
    missing = [h for h in unique if h not in found]

    computed_vectors = np.zeros((0, 0), dtype=np.float32)
    if missing:
        tokenizer, model = load_text_model(folder)
        computed_vectors = embed_texts([unique[h] for h in missing], tokenizer, model, batch_size, max_length, progress)
        _write_cache(cache_path, cache, missing, computed_vectors, max_length)
    logger.info("text embeddings: %d distinct texts of %d, %d cached, %d computed (cache %s)",
                len(unique), len(texts), len(cached_hashes), len(missing), cache_path)

    if not texts:
        width = load_config(folder).hidden_size
        return EncodedTexts(np.zeros((0, width), dtype=np.float32), computed=0, cached=0)
    blocks = [block for block in (cached_vectors, computed_vectors) if len(block)]
    table = np.concatenate(blocks)  # [K + M, D], rows in the order of `row_of`
    row_of = {h: row for row, h in enumerate(cached_hashes + missing)}
    vectors = table[[row_of[h] for h in hashes]]
    return EncodedTexts(np.ascontiguousarray(vectors, dtype=np.float32), computed=len(missing),
                        cached=len(cached_hashes))
