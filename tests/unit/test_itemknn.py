"""ItemKNN: cosine co-occurrence from training lists only, top-k neighbours, recency-weighted scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.data import SequenceData
from models.itemknn import ItemKNNRecommender, cosine_cooccurrence, top_k_per_row

EMPTY = np.empty(0, np.int64)


def sequences(*lists: list[int]) -> list[np.ndarray]:
    return [np.array(items, dtype=np.int64) for items in lists]


def data_of(train: list[np.ndarray], valid: list[np.ndarray] | None = None,
            test: list[np.ndarray] | None = None, n_items: int = 8) -> SequenceData:
    return SequenceData(n_items, train, valid or [EMPTY] * len(train), test or [EMPTY] * len(train))


def test_cosine_is_symmetric_with_zero_diagonal_and_hand_worked_values():
    # Item 1: users 0, 1; item 2: user 0 (seen twice, counts once); item 3: users 1, 2.
    similarity = cosine_cooccurrence(sequences([1, 2, 2], [1, 3], [3]), n_items=5).toarray()
    np.testing.assert_allclose(similarity, similarity.T)
    assert np.all(np.diag(similarity) == 0)
    assert similarity[1, 2] == pytest.approx(1 / np.sqrt(2 * 1))
    assert similarity[1, 3] == pytest.approx(1 / np.sqrt(2 * 2))
    assert similarity[2, 3] == 0  # never in the same user's list
    assert not similarity[0].any() and not similarity[4].any()  # padding and an unseen item


def test_top_k_keeps_the_k_largest_entries_of_each_row():
    rng = np.random.default_rng(0)
    full = cosine_cooccurrence([rng.choice(np.arange(1, 30), size=8) for _ in range(60)], n_items=30)
    pruned = top_k_per_row(full, k=3)
    dense, kept = full.toarray(), pruned.toarray()
    assert (np.diff(pruned.indptr) <= 3).all()
    assert np.diff(pruned.indptr).max() == 3  # rows do get cut
    for row in range(30):
        expected = np.sort(dense[row][dense[row] > 0])[::-1][:3]
        np.testing.assert_allclose(np.sort(kept[row][kept[row] > 0])[::-1], expected)


def test_cooccurring_items_outscore_items_never_seen_together():
    model = ItemKNNRecommender(n_items=8, neighbours=5)
    model.fit(data_of(sequences([1, 2, 3], [1, 2], [4, 5], [5, 6])))
    scores = model.score_all(torch.tensor([[0, 0, 1]]))  # [1, 8]
    assert scores[0, 2] > scores[0, 3] > 0
    assert scores[0, 4] == scores[0, 5] == scores[0, 6] == 0
    assert torch.isneginf(scores[:, 0]).all()


def test_recent_items_weigh_more_than_older_ones():
    # Item 5 neighbours only item 1, item 6 only item 2, with equal similarity.
    model = ItemKNNRecommender(n_items=8, neighbours=5)
    model.fit(data_of(sequences([1, 5], [2, 6])))
    scores = model.score_all(torch.tensor([[0, 1, 2], [0, 2, 1]]))  # most recent item last
    assert scores[0, 6] > scores[0, 5]  # 2 is the most recent
    assert scores[1, 5] > scores[1, 6]  # 1 is the most recent
    assert scores[0, 6] / scores[0, 5] == pytest.approx(1 / 0.9)


def test_empty_history_scores_zero_except_padding():
    model = ItemKNNRecommender(n_items=8, neighbours=5)
    model.fit(data_of(sequences([1, 2], [2, 3])))
    scores = model.score_all(torch.zeros(2, 4, dtype=torch.long))
    assert torch.isneginf(scores[:, 0]).all()
    assert (scores[:, 1:] == 0).all()


def test_similarity_comes_from_training_lists_only():
    # Item 7 appears only in valid and test lists: it gets no neighbours and is nobody's neighbour.
    model = ItemKNNRecommender(n_items=8, neighbours=5)
    model.fit(data_of(sequences([1, 2], [2, 3]), valid=sequences([7], [7]), test=sequences([7], [4])))
    assert not (model.neighbour_items == 7).any()
    assert not model.neighbour_values[7].any()
    assert (model.score_all(torch.tensor([[1, 7]]))[0, 1:] >= 0).all()
    assert model.score_all(torch.tensor([[0, 7]]))[0, 1:].abs().sum() == 0


def test_save_and_load_give_identical_scores(tmp_path):
    rng = np.random.default_rng(1)
    model = ItemKNNRecommender(n_items=30, neighbours=4)
    model.fit(data_of([rng.choice(np.arange(1, 30), size=6) for _ in range(50)], n_items=30))
    model.save(tmp_path / "knn.pt")
    payload = torch.load(tmp_path / "knn.pt", weights_only=True)
    assert payload["kind"] == "itemknn"
    assert payload["hparams"] == {"n_items": 30, "neighbours": 4}
    restored = ItemKNNRecommender(**payload["hparams"])
    restored.load_state_dict(payload["state_dict"])
    history = torch.randint(0, 30, (5, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.score_all(history), restored.score_all(history))
