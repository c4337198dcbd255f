"""What only SASRec has: no NaN from all-padding rows, positions aligned to the most recent item, a
length limit, and the tied output head. The properties every neural model shares (scores, causality,
overfitting one batch, save/load, a real fit) are tested for SASRec with the others in test_models.py.
"""
from __future__ import annotations

import pytest
import torch

from models.attention import SASRecRecommender
from models.kinds import build_model, load_model

N_ITEMS = 30  # item_idx 1..29, 0 is padding
SMALL_OPTIONS = {"embedding_dim": 16, "num_blocks": 2, "num_heads": 2, "max_seq_len": 12}


def small_model(**overrides) -> SASRecRecommender:
    torch.manual_seed(0)
    return build_model("sasrec", N_ITEMS, SMALL_OPTIONS | overrides)


def random_history(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, N_ITEMS, (batch, length), generator=generator)  # [B, T]


def naive_attention(q, k, v, attn_mask, dropout_p=0.0):
    """Attention by plain softmax, which (like SDPA before torch 2.5) gives NaN for a row with no allowed key."""
    weights = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).masked_fill(~attn_mask, float("-inf")).softmax(-1)
    return torch.nn.functional.dropout(weights, dropout_p) @ v


@pytest.mark.parametrize("training", [False, True])
def test_an_all_padding_row_gives_finite_interests_and_gradients(training, monkeypatch):
    # Recent torch kernels return 0 for an empty attention row, older ones NaN: the naive kernel
    # makes the test independent of the installed version.
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", naive_attention)
    model = small_model().train(training)
    history = random_history(2, 6)
    history[0] = 0
    history[1, :3] = 0
    interests = model.encode(history)  # [B, T, D]
    assert torch.isfinite(interests).all()
    assert torch.equal(interests[0], torch.zeros_like(interests[0]))
    interests.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_positions_align_to_the_last_item_whatever_the_padded_length():
    model = small_model().eval()
    items = torch.tensor([5, 17, 3, 9])
    short = torch.cat([torch.zeros(2, dtype=torch.long), items]).unsqueeze(0)  # [1, 6]
    long = torch.cat([torch.zeros(8, dtype=torch.long), items]).unsqueeze(0)  # [1, 12] = max_seq_len
    with torch.no_grad():
        short_scores, long_scores = model.score_all(short), model.score_all(long)
        unpadded_scores = model.score_all(items.unsqueeze(0))  # [1, 4]
    torch.testing.assert_close(short_scores, long_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(unpadded_scores, long_scores, rtol=1e-5, atol=1e-6)


def test_position_embeddings_matter():
    # Guards the test above against passing because positions are ignored altogether.
    model = small_model().eval()
    history = random_history(1, 6)
    with torch.no_grad():
        forward, backward = model.encode(history)[:, -1], model.encode(history.flip(1))[:, -1]
        shuffled_positions = model.encode(history[:, [1, 0, 2, 3, 4, 5]])[:, -1]
    assert not torch.allclose(forward, backward)
    assert not torch.allclose(forward, shuffled_positions)


def test_a_history_longer_than_max_seq_len_is_rejected():
    model = small_model()
    with pytest.raises(ValueError, match="max_seq_len 12"):
        model.encode(random_history(1, 13))


def test_a_tied_head_scores_with_the_input_embeddings_and_stays_tied_after_loading(tmp_path):
    model = small_model(tie_output=True).eval()
    assert model.output.weight is model.item_embedding.weight
    n_parameters = sum(p.numel() for p in model.parameters())
    assert n_parameters == sum(p.numel() for p in small_model().parameters()) - N_ITEMS * 16
    path = tmp_path / "tied.pt"
    model.save(path)
    loaded = load_model(path)
    assert loaded.output.weight is loaded.item_embedding.weight
    history = random_history(4, 6)
    with torch.no_grad():
        interest = loaded.encode(history)[:, -1]
        expected = interest @ loaded.item_embedding.weight.T + loaded.output.bias
        assert torch.allclose(loaded.score_all(history)[:, 1:], expected[:, 1:])
        assert torch.equal(model.score_all(history), loaded.score_all(history))


def text_model(**overrides) -> SASRecRecommender:
    model = small_model(tie_output=True, item_text=True, text_dim=8, **overrides)
    model.attach_item_text(torch.randn(N_ITEMS, 8, generator=torch.Generator().manual_seed(1)))
    return model.eval()


def test_item_text_grounds_items_in_their_titles_on_both_sides_and_survives_saving(tmp_path):
    model = text_model()
    history = random_history(4, 6)
    with torch.no_grad():
        interest = model.encode(history)[:, -1]
        vectors = model.item_embedding.weight + model.text_map(model.item_text)
        expected = interest @ vectors.T + model.output.bias
        assert torch.allclose(model.score_all(history)[:, 1:], expected[:, 1:], atol=1e-6)
        items = torch.tensor([3, 7])
        assert torch.allclose(model.candidate_scores(interest, items), expected[:, items], atol=1e-6)
        before = model.score_all(history)
        # Two items with the same title but different IDs move together when only the title changes.
        model.item_text[5] += 1.0
        assert not torch.allclose(model.score_all(history), before)
    path = tmp_path / "text.pt"
    model.save(path)
    loaded = load_model(path)  # the title embeddings travel in the file: no text model needed to score
    with torch.no_grad():
        assert torch.equal(loaded.score_all(history), model.score_all(history))


def test_item_text_needs_the_text_width_and_a_model_without_it_refuses_text():
    with pytest.raises(ValueError, match="text_dim"):
        small_model(item_text=True)
    with pytest.raises(ValueError, match="without item_text"):
        small_model().attach_item_text(torch.zeros(N_ITEMS, 8))
    with pytest.raises(ValueError, match="shape"):
        small_model(item_text=True, text_dim=8).attach_item_text(torch.zeros(N_ITEMS, 4))
