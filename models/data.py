"""Datasets over item_idx sequences: next-item training windows and evaluation batches.

Histories are left-padded with 0 so that the most recent item is always at the last position,
which is where every model reads the user's current interest.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

Split = Literal["valid", "test", "all"]


@dataclass(frozen=True)
class SequenceData:
    """Per-user time-ordered item_idx arrays of each split; user u sits at position u_idx - 1.

    `context` holds history that models read but never train on: the earlier items of users held
    out whole (cold valid/test users of a benchmark's own user split). Empty under per-user splits.
    """

    n_items: int  # counts the padding index 0
    train: list[np.ndarray]
    valid: list[np.ndarray]
    test: list[np.ndarray]
    context: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.context:
            object.__setattr__(self, "context", [np.empty(0, np.int64)] * len(self.train))

    def history(self, split: Split) -> list[np.ndarray]:
        """What a model may read when predicting `split`: everything before it in time."""
        parts = {"valid": (self.context, self.train), "test": (self.context, self.train, self.valid),
                 "all": (self.context, self.train, self.valid, self.test)}[split]
        return [np.concatenate(user_parts) for user_parts in zip(*parts)]

    def targets(self, split: Literal["valid", "test"]) -> list[np.ndarray]:
        """The held-out items of `split` for every user."""
        return self.valid if split == "valid" else self.test

    def users_with_targets(self, split: Literal["valid", "test"]) -> np.ndarray:
        """Positions of the users that have held-out items in `split` (only they are ranked)."""
        return np.flatnonzero([len(items) > 0 for items in self.targets(split)])


def left_pad(sequences: list[np.ndarray], length: int) -> Tensor:
    """[B, length] long tensor of each sequence's last `length` items, left-padded with 0."""
    batch = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tail = sequence[-length:]
        if len(tail):
            batch[row, length - len(tail):] = torch.as_tensor(tail, dtype=torch.long)
    return batch


class NextItemWindows(Dataset):
    """Training windows: inputs s[t-T..t-1] and next-item targets s[t-T+1..t], every position a label.

    Long sequences are cut from the end into non-overlapping windows of `max_len + 1` items, so every
    training event is predicted exactly once per epoch (SASRec's all-positions scheme, not RecBole's
    one example per prefix). All windows are left-padded into one tensor up front, so a batch is a
    single gather: no per-sample Python while training.

    trim_padding: cut each batch's leading columns that hold no input in any of its windows, for
    models whose output at an item does not depend on how much padding precedes it.
    """

    def __init__(self, sequences: list[np.ndarray], max_len: int, trim_padding: bool = False):
        windows = [
            sequence[max(0, end - max_len - 1):end]
            for sequence in sequences
            for end in range(len(sequence), 1, -max_len)
        ]
        self.padded = left_pad(windows, max_len + 1)  # [W, T+1]
        self.trim_padding = trim_padding

    def __len__(self) -> int:
        return self.padded.shape[0]

    def __getitem__(self, index: int | list[int]) -> Tensor:
        return self.padded[index]

    def labelled_counts(self) -> Tensor:
        """[W] positions with a next-item label in each window (its item count minus one)."""
        return (self.padded > 0).sum(dim=1) - 1

    def collate(self, padded: Tensor) -> tuple[Tensor, Tensor]:
        """(inputs [B, T], targets [B, T]) of a [B, T+1] batch of windows; target 0 marks positions without a label."""
        inputs, targets = padded[:, :-1], padded[:, 1:]
        if self.trim_padding:
            # Left-padded: the columns holding an input are the last ones; keep from the first of them.
            first = int((inputs > 0).any(dim=0).to(torch.int8).argmax())
            inputs, targets = inputs[:, first:], targets[:, first:]
        # A short window's first item follows only padding: it is an input, not a target.
        return inputs, targets.masked_fill(inputs == 0, 0)

    def loader(self, batch_size: int, generator: torch.Generator, pin_memory: bool = False,
               by_length: bool = False) -> DataLoader:
        """Batches drawn with one tensor gather each (in page-locked memory if pin_memory): shuffled
        windows, or with by_length windows of similar length (see `LengthBatches`)."""
        if by_length:
            batches = LengthBatches(self.labelled_counts(), batch_size, generator)
        else:
            batches = BatchSampler(RandomSampler(self, generator=generator), batch_size, drop_last=False)
        return DataLoader(self, sampler=batches, batch_size=None, collate_fn=self.collate, pin_memory=pin_memory)


class LengthBatches(Sampler[list[int]]):
    """Batches of windows of similar length, each with about the same number of labelled positions.

    Why: a batch of random windows is as long as its longest one, and on ML-1M 43% of a random
    batch's positions are padding. Sorted by length, a batch holds windows of about one length,
    and `NextItemWindows(trim_padding=True)` cuts the padding columns. As many batches as random
    batching would make (len(windows) / batch_size, rounded up), but cut so that each holds about
    the same number of labelled positions (short windows: more of them per batch): the loss, a mean
    over a batch's positions, then weighs every position about equally, as random batches do on
    average. Each epoch draws new tie-breaks among windows of equal length and a new batch order.
    """

    def __init__(self, labelled: Tensor, batch_size: int, generator: torch.Generator):
        self.labelled, self.generator = labelled, generator
        self.n_batches = -(-len(labelled) // batch_size)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[list[int]]:
        count = len(self.labelled)
        if self.n_batches == 1:
            yield torch.randperm(count, generator=self.generator).tolist()
            return
        tie_break = torch.rand(count, generator=self.generator, dtype=torch.float64)
        order = torch.argsort(self.labelled.to(torch.float64) + tie_break)  # by length; random among equals
        cumulative = self.labelled[order].cumsum(0).to(torch.float64)  # [W]
        share = cumulative[-1] / self.n_batches
        ends = torch.searchsorted(cumulative, share * torch.arange(1, self.n_batches, dtype=torch.float64))
        # No empty batch: batch k (1-based) ends strictly after batch k-1 and leaves a window for each later one.
        ranks = torch.arange(1, self.n_batches)
        ends = torch.cummax((ends - ranks).clamp(min=0), dim=0).values + ranks
        ends = torch.minimum(ends, count - self.n_batches + ranks)
        batches = torch.tensor_split(order, ends)
        for index in torch.randperm(self.n_batches, generator=self.generator).tolist():
            yield batches[index].tolist()


@dataclass(frozen=True)
class EvalBatch:
    """A batch of users to rank: recent history, and (row, item) pairs of seen and target items."""

    history: Tensor  # [B, T] item_idx, left-padded
    seen_rows: Tensor  # [S]
    seen_items: Tensor  # [S]
    target_rows: Tensor  # [R]
    target_items: Tensor  # [R]
    users: Tensor  # [B] position of each user in SequenceData (user_idx - 1)

    def to(self, device: torch.device, non_blocking: bool = False) -> EvalBatch:
        """The batch on `device`; non_blocking copies asynchronously from page-locked memory."""
        return EvalBatch(*(getattr(self, f).to(device, non_blocking=non_blocking) for f in self.__dataclass_fields__))

    def pin_memory(self) -> EvalBatch:
        """The batch in page-locked memory (DataLoader(pin_memory=True) calls this for custom batches)."""
        return EvalBatch(*(getattr(self, f).pin_memory() for f in self.__dataclass_fields__))

    def mask(self, rows: Tensor, items: Tensor, n_items: int) -> Tensor:
        """[B, n_items] bool mask with True at the given (row, item) pairs."""
        mask = torch.zeros(self.history.shape[0], n_items, dtype=torch.bool, device=self.history.device)
        mask[rows, items] = True
        return mask


class RankingUsers(Dataset):
    """Users to rank, each with a full history (for masking seen items) and held-out targets."""

    def __init__(self, histories: list[np.ndarray], targets: list[np.ndarray] | None, max_len: int,
                 users: np.ndarray | None = None):
        self.histories, self.targets, self.max_len = histories, targets, max_len
        self.users = np.arange(len(histories)) if users is None else users

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int) -> int:
        return int(self.users[index])

    def collate(self, users: list[int]) -> EvalBatch:
        """An EvalBatch for these user positions."""
        histories = [self.histories[u] for u in users]
        targets = [self.targets[u] for u in users] if self.targets is not None else [np.empty(0, np.int64)] * len(users)

        def pairs(arrays: list[np.ndarray]) -> tuple[Tensor, Tensor]:
            rows = np.repeat(np.arange(len(arrays)), [len(a) for a in arrays])
            items = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
            return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(items, dtype=torch.long)

        seen_rows, seen_items = pairs(histories)
        target_rows, target_items = pairs(targets)
        return EvalBatch(left_pad(histories, self.max_len), seen_rows, seen_items, target_rows, target_items,
                         torch.as_tensor(users, dtype=torch.long))


def ranking_loader(histories: list[np.ndarray], targets: list[np.ndarray] | None, max_len: int,
                   batch_size: int, users: np.ndarray | None = None, pin_memory: bool = False) -> DataLoader:
    """DataLoader of EvalBatch over `users` (default: all) in order (no shuffling: rows map back to users).

    pin_memory: build batches in page-locked memory, for fast asynchronous copies to a CUDA device.
    """
    dataset = RankingUsers(histories, targets, max_len, users)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate, pin_memory=pin_memory)


def split_loader(data: SequenceData, split: Literal["valid", "test"], max_len: int, batch_size: int,
                 pin_memory: bool = False) -> DataLoader:
    """Ranking batches of the users that have held-out items in `split`, with their history before it."""
    return ranking_loader(data.history(split), data.targets(split), max_len, batch_size,
                          data.users_with_targets(split), pin_memory)


class SequenceDataModule(pl.LightningDataModule):
    """Training windows from the train split; validation ranks each user's valid items.

    pin_memory: batches in page-locked memory, when training on a CUDA device.
    by_length: batches of windows of similar length with their padding columns cut (`LengthBatches`);
    only for models whose output does not depend on the amount of leading padding.
    `generator` is the training shuffle's random generator, once the training loader exists.
    """

    def __init__(self, data: SequenceData, max_len: int, batch_size: int, eval_batch_size: int, seed: int,
                 pin_memory: bool = False, by_length: bool = False):
        super().__init__()
        self.data, self.max_len, self.batch_size = data, max_len, batch_size
        self.eval_batch_size, self.seed, self.pin_memory = eval_batch_size, seed, pin_memory
        self.by_length = by_length
        self.generator: torch.Generator | None = None

    def train_dataloader(self) -> DataLoader:
        windows = NextItemWindows(self.data.train, self.max_len, trim_padding=self.by_length)
        self.generator = torch.Generator().manual_seed(self.seed)
        return windows.loader(self.batch_size, self.generator, self.pin_memory, by_length=self.by_length)

    def val_dataloader(self) -> DataLoader:
        return split_loader(self.data, "valid", self.max_len, self.eval_batch_size, self.pin_memory)
