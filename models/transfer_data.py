"""The data views of one transfer scenario: what each training stage may learn from, what is ranked.

A scenario splits the world into a source (plentiful data) and a target (scarce data):
- user_group: same catalogue, users split by an attribute (e.g. male -> female). Only a fraction
  of the target users' training sequences may be learnt from; every target user is ranked, with
  their whole history as input.
- item_domain: shared users, items split by domain (e.g. books -> movies). Only a fraction of the
  users' target-domain training items may be learnt from; users whose held-out item is in the
  target domain are ranked. Cold-start users are ranked from their source-domain history alone and
  never appear in any training view.

Every view is a SequenceData over the same user positions, so a model trained on one view is
evaluated on another without re-indexing. Users a view leaves out simply have empty lists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from models.data import SequenceData

OTHER, SOURCE, TARGET = 0, 1, 2  # role codes of users and items
EMPTY = np.empty(0, np.int64)
Regime = Literal["pooled", "target", "source", "source_then_target", "pooled_then_target", "joint"]
Reads = Literal["all", "target", "source"]
MAX_JOINT_REPEATS = 20


@dataclass(frozen=True)
class TransferViews:
    """Training views per stage and the two evaluation views of one scenario and target fraction."""

    partition: Literal["user_group", "item_domain"]
    target_fraction: float
    source: SequenceData  # source users / source-domain items of training users
    target: SequenceData  # sampled target users / sampled users' target-domain items
    pooled: SequenceData  # source and sampled target data together, no transfer step
    joint: SequenceData  # pooled, with the sampled target sequences repeated to balance the two
    evaluation: SequenceData  # every user's full history ("all" subset)
    cold_evaluation: SequenceData  # cold-start users with source-domain history only
    item_role: np.ndarray  # [n_items] role code of each item (padding: OTHER)
    report_users: np.ndarray  # positions ranked in the report's "all" subset
    cold_users: np.ndarray  # positions ranked in the "cold_start" subset (item_domain only)
    sampled_target_users: np.ndarray  # positions whose target data training may use

    def training_data(self, regime: Regime) -> SequenceData:
        """The view a single-stage regime trains on (the fine-tuning regimes: their first stage's view)."""
        return {"pooled": self.pooled, "target": self.target, "source": self.source, "joint": self.joint,
                "source_then_target": self.source, "pooled_then_target": self.pooled}[regime]

    def item_mask(self, reads: Reads) -> np.ndarray | None:
        """[n_items] bool mask of the items a model reading `reads` sees in a history; None: all."""
        if reads == "all" or self.partition == "user_group":
            return None
        return self.item_role == (TARGET if reads == "target" else SOURCE)


def reads_of(regime: Regime, partition: str) -> Reads:
    """Which items of a history a model trained under `regime` reads: ID models trained on one domain
    only have untrained embeddings for the other domain's items, so they read their own domain."""
    if partition != "item_domain":
        return "all"
    return {"target": "target", "source": "source"}.get(regime, "all")


def keep_items(data: SequenceData, mask: np.ndarray | None) -> SequenceData:
    """The data with history items outside `mask` removed (held-out test items are kept as they are)."""
    if mask is None:
        return data

    def kept(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [a[mask[a]] for a in arrays]

    return replace(data, train=kept(data.train), valid=kept(data.valid), context=kept(data.context))


def sample_users(candidates: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded subset of ceil(fraction·n) candidate positions (at least one), sorted."""
    if len(candidates) == 0:
        return candidates
    count = max(1, math.ceil(fraction * len(candidates)))
    chosen = np.random.default_rng(seed).permutation(len(candidates))[:count]
    return np.sort(candidates[chosen])


def _view(data: SequenceData, users: np.ndarray, item_mask: np.ndarray | None = None) -> SequenceData:
    """Only `users` keep their train/valid/context, filtered to `item_mask`; a valid list that loses an
    item to the filter is dropped (it was not a target of this view). No test items: views train."""
    n = len(data.train)
    included = np.zeros(n, bool)
    included[users] = True
    train, valid, context = [], [], []
    for u in range(n):
        if not included[u]:
            train.append(EMPTY), valid.append(EMPTY), context.append(EMPTY)
            continue
        if item_mask is None:
            train.append(data.train[u]), valid.append(data.valid[u]), context.append(data.context[u])
            continue
        train.append(data.train[u][item_mask[data.train[u]]])
        context.append(data.context[u][item_mask[data.context[u]]])
        valid.append(data.valid[u] if item_mask[data.valid[u]].all() else EMPTY)
    return SequenceData(data.n_items, train, valid, [EMPTY] * n, context)


def _with_repeats(data: SequenceData, users: np.ndarray, repeats: int) -> SequenceData:
    """`data` plus `repeats - 1` extra training-only copies of `users`' training sequences (appended
    after the real users, so every real position is unchanged)."""
    return with_extra_sequences(data, [data.train[u] for u in users] * (repeats - 1))


def with_extra_sequences(data: SequenceData, extra: list[np.ndarray]) -> SequenceData:
    """`data` plus training-only users holding the `extra` sequences (appended after the real users, so every
    real position is unchanged)."""
    pad = [EMPTY] * len(extra)
    return SequenceData(data.n_items, data.train + extra, data.valid + pad, data.test + pad, data.context + pad)


def _balance(source_events: int, target_events: int) -> int:
    """How often to repeat the target sequences so that target events weigh about as much as source."""
    if target_events == 0:
        return 1
    return int(min(MAX_JOINT_REPEATS, max(1, round(source_events / target_events))))


def _first_items(arrays: list[np.ndarray]) -> np.ndarray:
    """First item of each list (0 where empty)."""
    return np.array([a[0] if len(a) else 0 for a in arrays], dtype=np.int64)


def user_group_views(data: SequenceData, user_role: np.ndarray, fraction: float, seed: int) -> TransferViews:
    """Views of a cross-group scenario: user_role [n_users] holds each position's role code."""
    source_users = np.flatnonzero(user_role == SOURCE)
    target_users = np.flatnonzero(user_role == TARGET)
    other_users = np.flatnonzero(user_role == OTHER)
    trainable_targets = target_users[[len(data.train[u]) > 0 for u in target_users]]
    sampled = sample_users(trainable_targets, fraction, seed)
    pooled = _view(data, np.concatenate([source_users, sampled, other_users]))
    target = _view(data, sampled)
    source_events = sum(len(data.train[u]) for u in source_users)
    target_events = sum(len(data.train[u]) for u in sampled)
    n_items = data.n_items
    has_test = np.array([len(t) > 0 for t in data.test], bool)
    return TransferViews(
        partition="user_group", target_fraction=fraction,
        source=_view(data, source_users), target=target, pooled=pooled,
        joint=_with_repeats(pooled, sampled, _balance(source_events, target_events)),
        evaluation=data, cold_evaluation=replace(data, test=[EMPTY] * len(data.test)),
        item_role=np.zeros(n_items, np.int8), report_users=target_users[has_test[target_users]],
        cold_users=np.empty(0, np.int64), sampled_target_users=sampled,
    )


def item_domain_views(data: SequenceData, item_role: np.ndarray, fraction: float, cold_fraction: float,
                      seed: int) -> TransferViews:
    """Views of a cross-domain scenario: item_role [n_items] holds each item's role code.

    Users held out whole by the dataset (no training items, a held-out item in the target domain:
    the cold valid/test users of a benchmark's own split) are ranked in both subsets: with their full
    history ("all") and with the source-domain part only ("cold_start"). Under a per-user temporal
    split, `cold_fraction` of the users whose test item is in the target domain are held out as cold.
    """
    n = len(data.train)
    is_source, is_target = item_role == SOURCE, item_role == TARGET
    test_in_target = is_target[_first_items(data.test)] & np.array([len(t) > 0 for t in data.test])
    has_train = np.array([len(t) > 0 for t in data.train])
    held_out_whole = ~has_train
    if held_out_whole.any():  # the dataset's own cold users
        cold = np.flatnonzero(held_out_whole & test_in_target)
    else:
        with_source_history = np.array([is_source[t].any() for t in data.train])
        cold = sample_users(np.flatnonzero(test_in_target & with_source_history), cold_fraction, seed + 1) \
            if cold_fraction > 0 else np.empty(0, np.int64)
    is_cold = np.zeros(n, bool)
    is_cold[cold] = True
    training_users = np.flatnonzero(~is_cold)
    with_target_train = np.flatnonzero(~is_cold & np.array([is_target[t].any() for t in data.train]))
    sampled = sample_users(with_target_train, fraction, seed)
    is_sampled = np.zeros(n, bool)
    is_sampled[sampled] = True

    # Pooled: everything of training users except the target items of training users not sampled
    # (users held out whole keep theirs: they are validation users, never trained on).
    limited = has_train & ~is_sampled
    pooled = _view(data, training_users)
    pooled = replace(pooled, train=[t[~is_target[t]] if limited[u] else t for u, t in enumerate(pooled.train)],
                     valid=[EMPTY if limited[u] and is_target[v].any() else v for u, v in enumerate(pooled.valid)])
    target = _view(data, np.union1d(sampled, np.flatnonzero(held_out_whole & ~is_cold)), is_target)
    source = _view(data, training_users, is_source)
    source_events = sum(len(t) for t in source.train)
    target_events = sum(len(t) for t in target.train)

    # Cold users: history is their source-domain items only; they never train (train/valid emptied).
    cold_history = [np.concatenate([data.context[u], data.train[u], data.valid[u]]) for u in range(n)]
    cold_evaluation = SequenceData(
        data.n_items, [EMPTY] * n, [EMPTY] * n,
        [data.test[u] if is_cold[u] else EMPTY for u in range(n)],
        [cold_history[u][is_source[cold_history[u]]] if is_cold[u] else EMPTY for u in range(n)],
    )
    # "all": users whose test item is in the target domain, full history; under a temporal split the
    # cold users are not in it (they are ranked from source history only, in cold_start).
    report = np.flatnonzero(test_in_target & (held_out_whole | ~is_cold))
    return TransferViews(
        partition="item_domain", target_fraction=fraction,
        source=source, target=target, pooled=pooled,
        joint=_with_repeats(pooled, sampled, _balance(source_events, target_events)),
        evaluation=data, cold_evaluation=cold_evaluation, item_role=item_role.astype(np.int8),
        report_users=report, cold_users=cold, sampled_target_users=sampled,
    )
