"""Target-side augmentation (models/augmentation.py): each operator's shape, determinism, and which users get copies."""
import math

import numpy as np
import torch

from conf.schema import TrainConfig
from models.augmentation import CROP, MASK, augmented_copies, crop, mask, reorder
from models.data import SequenceData
from models.extractors import GRURecommender
from models.transfer_data import SOURCE, TARGET, user_group_views
from tasks.modelling.training import fit_regime

SEQUENCE = np.arange(1, 21)  # 20 distinct items, in order


def is_contiguous_part(part: np.ndarray, whole: np.ndarray) -> bool:
    start = int(np.flatnonzero(whole == part[0])[0])
    return np.array_equal(whole[start:start + len(part)], part)


def test_crop_keeps_a_contiguous_part_of_the_configured_share():
    part = crop(SEQUENCE, np.random.default_rng(0))
    assert len(part) == math.ceil(CROP * 20) and is_contiguous_part(part, SEQUENCE)


def test_mask_removes_the_configured_share_and_keeps_the_order():
    kept = mask(SEQUENCE, np.random.default_rng(0))
    assert len(kept) == 20 - math.ceil(MASK * 20) and np.all(np.diff(kept) > 0)


def test_reorder_shuffles_one_contiguous_window_only():
    altered = reorder(SEQUENCE, np.random.default_rng(1))
    changed = np.flatnonzero(altered != SEQUENCE)
    assert sorted(altered) == list(SEQUENCE) and len(changed) > 0
    assert changed.max() - changed.min() < math.ceil(0.3 * 20)


def test_copies_are_deterministic_per_seed_and_short_sequences_are_copied_as_they_are():
    sequences = [SEQUENCE, np.array([4, 5])]
    first, again, other = (augmented_copies(sequences, 3, seed) for seed in (7, 7, 8))
    assert len(first) == 6 and all(np.array_equal(a, b) for a, b in zip(first, again))
    assert any(not np.array_equal(a, b) for a, b in zip(first[:3], other[:3]))
    assert all(np.array_equal(copy, [4, 5]) for copy in first[3:])


def test_only_the_sampled_target_users_sequences_are_augmented(tmp_path):
    rng = np.random.default_rng(0)
    sequences = [rng.permutation(np.arange(1, 41))[:10] for _ in range(30)]
    data = SequenceData(41, [s[:-2] for s in sequences], [s[-2:-1] for s in sequences], [s[-1:] for s in sequences])
    roles = np.where(np.arange(30) % 3 == 0, TARGET, SOURCE).astype(np.int8)
    views = user_group_views(data, roles, fraction=0.5, seed=0)
    torch.manual_seed(0)
    model = GRURecommender(41, embedding_dim=4, hidden_dim=4, max_seq_len=10)
    seen = []
    original_fit = model.fit

    def recording_fit(view, *args, **kwargs):
        seen.append(view)
        return original_fit(view, *args, **kwargs)

    model.fit = recording_fit
    train = TrainConfig(max_epochs=1, progress_bar=False, augment_copies=2)
    fit_regime(model, "pooled", None, views, train, seed=0, loggers=[], checkpoint_dir=tmp_path)
    view = seen[0]
    extra = view.train[30:]
    assert len(extra) == 2 * len(views.sampled_target_users)  # two copies of each sampled target user, no one else
    originals = [set(views.pooled.train[u].tolist()) for u in views.sampled_target_users]
    assert all(set(copy.tolist()) <= originals[i // 2] for i, copy in enumerate(extra))
