"""Target-side augmentation: extra training sequences made from the target users' own, by crop, mask and reorder.

CL4SRec (Xie et al., "Contrastive Learning for Sequential Recommendation", ICDE 2022) defines three
sequence augmentations; with few target users, their altered copies are more target-shaped data for
the model to learn from (here as extra training sequences; the paper uses them for a contrastive term).
Each copy applies one operator, drawn uniformly:
- crop: a random contiguous part of ceil(CROP · n) items;
- mask: ceil(MASK · n) random items removed (the paper replaces them with a [mask] item; our ID models
  have none, so the copy is the sequence without them);
- reorder: a random contiguous part of ceil(REORDER · n) items shuffled.
The ratios are the paper's best on its datasets (crop 0.6, mask 0.3, reorder 0.3). Sequences shorter
than 3 items are copied as they are: nothing in them can be altered and keep a next item to predict.
"""
from __future__ import annotations

import math

import numpy as np

CROP, MASK, REORDER = 0.6, 0.3, 0.3


def crop(sequence: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    length = max(2, math.ceil(CROP * len(sequence)))
    start = rng.integers(0, len(sequence) - length + 1)
    return sequence[start:start + length]


def mask(sequence: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    removed = rng.choice(len(sequence), size=min(len(sequence) - 2, math.ceil(MASK * len(sequence))), replace=False)
    return np.delete(sequence, removed)


def reorder(sequence: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    length = max(2, math.ceil(REORDER * len(sequence)))
    start = rng.integers(0, len(sequence) - length + 1)
    altered = sequence.copy()
    altered[start:start + length] = rng.permutation(altered[start:start + length])
    return altered


OPERATORS = (crop, mask, reorder)


def augmented_copies(sequences: list[np.ndarray], copies: int, seed: int) -> list[np.ndarray]:
    """`copies` altered copies of each sequence (one random operator each), in order: all copies of the
    first sequence, then of the second, ...; the same seed gives the same copies."""
    rng = np.random.default_rng(seed)
    out = []
    for sequence in sequences:
        for _ in range(copies):
            if len(sequence) < 3:
                out.append(sequence.copy())
                continue
            out.append(OPERATORS[rng.integers(len(OPERATORS))](sequence, rng))
    return out
