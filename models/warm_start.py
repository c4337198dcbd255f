"""Carry a trained model over to a grown or reordered catalogue.

When new events arrive, preprocessing builds a new item index (new items, k-core changes), so a
trained model's item rows no longer line up with the new item_idx. Two tools, both keyed by
`new_to_old` ([n_new] LongTensor: the old item_idx of each new item_idx, 0 where the item is new):

- `RemappedRecommender` ranks the new catalogue with the old model unchanged (the champion in a
  promotion gate): histories are translated to old ids, scores gathered back, and items the model
  never saw score -inf, since it cannot recommend them.
- `warm_start` copies the old weights into a model built for the new catalogue: every tensor
  dimension that indexes items is remapped row by row, new items keep their fresh initialisation,
  everything else is copied as is. Fine-tuning then starts from what the old model learnt.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.base import Recommender


def new_to_old_index(old_ids: list[str], new_ids: list[str]) -> Tensor:
    """[len(new_ids) + 1] old item_idx of each new item_idx (position 0: padding -> 0; unknown items -> 0).

    old_ids[i] / new_ids[i] is the item id of item_idx i + 1.
    """
    old_position = {item: idx for idx, item in enumerate(old_ids, start=1)}
    return torch.tensor([0] + [old_position.get(item, 0) for item in new_ids], dtype=torch.long)


class RemappedRecommender:
    """An unchanged model scoring a new item index; items unknown to it are never recommended."""

    kind = "remapped"

    def __init__(self, model: Recommender, new_to_old: Tensor):
        self.model = model
        self.n_items = len(new_to_old)
        self.new_to_old = new_to_old
        self.max_seq_len = getattr(model, "max_seq_len", None)

    def score_all(self, history: Tensor) -> Tensor:
        """[B, T] new item_idx -> [B, n_new] scores (unknown history items are dropped as padding)."""
        old_history = self.new_to_old.to(history.device)[history]  # [B, T]
        old_scores = self.model.score_all(old_history)  # [B, n_old]
        scores = old_scores[:, self.new_to_old.to(history.device)]  # [B, n_new]
        return scores.masked_fill((self.new_to_old == 0).to(history.device), float("-inf"))

    def save(self, path) -> None:
        raise TypeError("a remapped view is not saved: warm_start a model for the new catalogue instead")


def warm_start(target: nn.Module, source_state: dict[str, Tensor], old_n_items: int, new_to_old: Tensor) -> int:
    """Load source_state into target (built for len(new_to_old) items), remapping item dimensions.

    A dimension indexes items when its size is old_n_items in the source and len(new_to_old) in the
    target. Returns how many items were carried over (new items keep the target's initialisation).
    """
    new_n_items = len(new_to_old)
    known = new_to_old > 0  # [n_new]; padding (0) keeps the target's own row
    target_state = target.state_dict()
    merged = {}
    for name, old in source_state.items():
        if name not in target_state:
            raise ValueError(f"warm start: parameter '{name}' of the old model is missing in the new one")
        new = target_state[name]
        item_dims = [d for d in range(old.dim())
                     if old.dim() == new.dim() and old.shape[d] == old_n_items and new.shape[d] == new_n_items]
        value = old
        for dim in item_dims:  # gather the old rows into their new positions along each item dimension
            value = value.index_select(dim, new_to_old)
        if value.shape != new.shape:
            raise ValueError(f"warm start: cannot map '{name}' from shape {tuple(old.shape)} "
                             f"to {tuple(new.shape)}")
        # Keep the target's initialisation wherever an item index points at an item the old model never saw.
        fresh = torch.zeros(new.shape, dtype=torch.bool)
        for dim in item_dims:
            shape = [1] * new.dim()
            shape[dim] = new_n_items
            fresh |= (~known).view(shape).expand(new.shape)
        merged[name] = torch.where(fresh, new, value.to(new.dtype))
    target.load_state_dict(merged)
    return int(known.sum())
