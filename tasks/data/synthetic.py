"""Deterministic synthetic shop: users, items of several domains, and time-stamped interactions.

The generator plants the structure that interest transfer needs, so that models can be checked
against known truth:
- latent interest topics span every domain (a topic has books *and* movies), so interests learnt
  in one domain carry to another;
- each user group has its own favourite topics (`group_topic_shift`), so groups differ;
- sequences drift: the next event keeps the current topic with `topic_stay_probability`, and is
  the direct successor ("sequel") of the last item with `sequel_probability`, so recent
  behaviour predicts the next item far better than popularity does;
- item popularity is Zipf-distributed (long tail).
Off by default, and planted for the transfer methods that exploit them (tests check each method helps
where its structure exists and not where it does not):
- `group_transition_share`: group-specific sequels (group g's sequel is g+1 places further), which a
  model pooled over the groups blurs; `group_shares` makes the target group small;
- `domain_bridge_probability`: the next item is the current one's counterpart in the next domain,
  a cross-domain transition that a domain-aware model can learn from mixed sequences.
Every step is vectorised over users with numpy; only the loop over sequence positions remains.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from conf.schema import SyntheticConfig

TOPIC_WORDS = {
    "mystery": ["Silent", "Hidden", "Murder", "Secret", "Shadow", "Detective"],
    "romance": ["Love", "Heart", "Summer", "Kiss", "Wedding", "Promise"],
    "science": ["Quantum", "Cosmos", "Atom", "Genome", "Theory", "Galaxy"],
    "history": ["Empire", "War", "Kingdom", "Revolution", "Ancient", "Dynasty"],
    "cooking": ["Kitchen", "Recipe", "Baking", "Flavor", "Feast", "Spice"],
    "travel": ["Journey", "Road", "Island", "Voyage", "Map", "Horizon"],
    "fantasy": ["Dragon", "Wizard", "Realm", "Sword", "Magic", "Crown"],
    "sports": ["Champion", "Goal", "Race", "Team", "Victory", "Stadium"],
    "music": ["Melody", "Rhythm", "Song", "Guitar", "Jazz", "Concert"],
    "business": ["Market", "Startup", "Profit", "Leader", "Deal", "Capital"],
    "health": ["Fitness", "Yoga", "Healing", "Diet", "Mind", "Balance"],
    "comedy": ["Laugh", "Joke", "Chaos", "Prank", "Silly", "Funny"],
}
AGE_BANDS = ["18-24", "25-34", "35-49", "50+"]
EPOCH_START = 1_577_836_800  # 2020-01-01 UTC: timestamps are seconds since the Unix epoch
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class ShopTables:
    """The three raw tables of a shop, with raw string ids."""

    interactions: pl.DataFrame  # user_id, item_id, timestamp, rating
    items: pl.DataFrame  # item_id, title, category, domain
    users: pl.DataFrame  # user_id, gender, age_band


def topic_names(n_topics: int) -> list[str]:
    """Names of the latent topics: the themed ones first, then numbered extras."""
    themed = list(TOPIC_WORDS)
    return themed[:n_topics] + [f"topic{t}" for t in range(len(themed), n_topics)]


def group_topic_priors(n_topics: int, n_groups: int, shift: float) -> np.ndarray:
    """[G, K] topic distribution of each group: a share `shift` goes to the group's own topic block."""
    blocks = np.arange(n_topics) % n_groups  # topic k is a favourite of group k mod G
    own = (blocks[None, :] == np.arange(n_groups)[:, None]).astype(float)
    own /= own.sum(axis=1, keepdims=True)
    return (1 - shift) / n_topics + shift * own


def sample_rows(rng: np.random.Generator, cumulative: np.ndarray) -> np.ndarray:
    """One category per row of a [N, C] cumulative distribution."""
    draws = rng.random((cumulative.shape[0], 1)) * cumulative[:, -1:]
    return np.minimum((draws > cumulative).sum(axis=1), cumulative.shape[1] - 1)


def make_items(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """Items sorted by (topic, domain) cell, their popularity weights, and each cell's start offset."""
    n_items, n_domains = cfg.scaled_items(), len(cfg.domains)
    n_cells = cfg.n_topics * n_domains
    cell_of_item = np.sort(rng.integers(0, n_cells, n_items))
    cell_of_item[:n_cells] = np.arange(n_cells)  # every cell holds at least one item
    cell_of_item.sort()
    cell_start = np.searchsorted(cell_of_item, np.arange(n_cells + 1))
    popularity = 1.0 / (rng.permutation(n_items) + 1.0) ** cfg.popularity_exponent
    topic, domain = cell_of_item // n_domains, cell_of_item % n_domains
    position = np.arange(n_items) - cell_start[cell_of_item]  # place in the cell's "series"
    names = topic_names(cfg.n_topics)
    words = [TOPIC_WORDS.get(name, [name.capitalize()]) for name in names]
    first_word = rng.integers(0, 6, n_items)
    word_pick = np.stack([first_word, first_word + rng.integers(1, 6, n_items)], axis=1)  # two distinct words
    titles = [
        f"{words[t][a % len(words[t])]} {words[t][b % len(words[t])]} {cfg.domains[d].rstrip('s').title()} {p + 1}"
        for t, d, p, (a, b) in zip(topic.tolist(), domain.tolist(), position.tolist(), word_pick.tolist())
    ]
    items = pl.DataFrame(
        {
            "item_id": [f"i{i:07d}" for i in range(n_items)],
            "title": titles,
            "category": [f"{cfg.domains[d]}/{names[t]}" for t, d in zip(topic.tolist(), domain.tolist())],
            "domain": [cfg.domains[d] for d in domain.tolist()],
        }
    )
    return items, popularity, cell_start


def make_users(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[pl.DataFrame, np.ndarray]:
    """Users with a group and an age band, and the index of each user's group."""
    n_users = cfg.scaled_users()
    if cfg.group_shares is None:
        group = rng.integers(0, len(cfg.groups), n_users)
    else:
        group = rng.choice(len(cfg.groups), size=n_users, p=np.asarray(cfg.group_shares) / sum(cfg.group_shares))
    users = pl.DataFrame(
        {
            "user_id": [f"u{u:07d}" for u in range(n_users)],
            "gender": [cfg.groups[g] for g in group.tolist()],
            "age_band": [AGE_BANDS[a] for a in rng.integers(0, len(AGE_BANDS), n_users).tolist()],
        }
    )
    return users, group


def generate_shop(cfg: SyntheticConfig, seed: int) -> ShopTables:
    """The synthetic shop for a config and seed; the same inputs always give the same tables."""
    rng = np.random.default_rng(seed)
    items, popularity, cell_start = make_items(cfg, rng)
    users, group = make_users(cfg, rng)
    n_users, n_domains = users.height, len(cfg.domains)

    priors = group_topic_priors(cfg.n_topics, len(cfg.groups), cfg.group_topic_shift)
    # Concentration 0.5·K keeps each user's taste peaked on a few topics, mostly the group's own;
    # normalised gamma draws are a vectorised Dirichlet with a per-user parameter.
    concentration = 0.5 * cfg.n_topics * priors[group] + 0.05  # [U, K]
    user_taste = rng.gamma(concentration)
    user_taste /= user_taste.sum(axis=1, keepdims=True)
    user_topics = np.cumsum(user_taste, axis=1)
    user_domains = np.cumsum(rng.dirichlet(np.full(n_domains, 2.0), n_users), axis=1)

    lengths = 5 + rng.poisson(rng.gamma(2.0, (cfg.mean_events_per_user - 5) / 2.0, n_users))
    lengths = np.minimum(lengths, int(10 * cfg.mean_events_per_user))
    cumulative_popularity = np.concatenate([[0.0], np.cumsum(popularity)])

    def item_in_cell(cells: np.ndarray) -> np.ndarray:
        low, high = cumulative_popularity[cell_start[cells]], cumulative_popularity[cell_start[cells + 1]]
        draws = low + rng.random(cells.size) * (high - low)
        picked = np.searchsorted(cumulative_popularity, draws, side="right") - 1
        return np.clip(picked, cell_start[cells], cell_start[cells + 1] - 1)

    user_steps, item_steps = [], []
    topic = sample_rows(rng, user_topics)
    item = item_in_cell(topic * n_domains + sample_rows(rng, user_domains))
    active = np.arange(n_users)
    for step in range(int(lengths.max())):
        if step > 0:
            keep = lengths[active] > step
            active, topic, item = active[keep], topic[keep], item[keep]
            new_topic = sample_rows(rng, user_topics[active])
            topic = np.where(rng.random(active.size) < cfg.topic_stay_probability, topic, new_topic)
            fresh = item_in_cell(topic * n_domains + sample_rows(rng, user_domains[active]))
            cell = np.searchsorted(cell_start, item, side="right") - 1
            # Extra draws only when a planted structure is switched on, so that without one the shop is
            # exactly what it always was for the same seed.
            step_ahead = 1
            if cfg.group_transition_share > 0:
                own_rule = rng.random(active.size) < cfg.group_transition_share
                step_ahead = np.where(own_rule, 1 + group[active], 1)
            has_sequel = (item + step_ahead < cell_start[cell + 1]) & (cell // n_domains == topic)
            sequel = has_sequel & (rng.random(active.size) < cfg.sequel_probability)
            previous = item
            item = np.where(sequel, item + step_ahead, fresh)
            if cfg.domain_bridge_probability > 0 and n_domains > 1:
                bridge = ~sequel & (rng.random(active.size) < cfg.domain_bridge_probability)
                item = np.where(bridge, counterpart(previous, cell, cell_start, n_domains), item)
                topic = np.where(bridge, cell // n_domains, topic)  # a bridge stays in the previous item's topic
        user_steps.append(active)
        item_steps.append(item)

    user_index = np.concatenate(user_steps)
    item_index = np.concatenate(item_steps)
    order = np.lexsort((np.concatenate([np.full(a.size, s) for s, a in enumerate(user_steps)]), user_index))
    user_index, item_index = user_index[order], item_index[order]
    # Gaps of about a day (at least a minute) after a start spread over the first year.
    gaps = 60 + rng.exponential(SECONDS_PER_DAY, user_index.size).astype(np.int64)
    first = np.r_[True, user_index[1:] != user_index[:-1]]
    starts = EPOCH_START + rng.integers(0, 365 * SECONDS_PER_DAY, n_users)
    gaps[first] = starts[user_index[first]]
    timestamps = _cumsum_per_segment(gaps, first)
    item_topic = (np.searchsorted(cell_start, item_index, side="right") - 1) // n_domains
    taste = user_taste[user_index, item_topic]
    ratings = np.clip(np.rint(2.5 + 4 * taste + rng.normal(0, 0.7, item_index.size)), 1, 5)

    interactions = pl.DataFrame(
        {
            "user_id": users["user_id"].gather(user_index),
            "item_id": items["item_id"].gather(item_index),
            "timestamp": timestamps,
            "rating": ratings.astype(np.float64),
        }
    )
    return ShopTables(interactions=interactions, items=items, users=users)


def counterpart(item: np.ndarray, cell: np.ndarray, cell_start: np.ndarray, n_domains: int) -> np.ndarray:
    """The item at the same place of the same topic's series in the next domain (its last item if shorter)."""
    topic, domain = cell // n_domains, cell % n_domains
    other = topic * n_domains + (domain + 1) % n_domains
    place = item - cell_start[cell]
    return np.minimum(cell_start[other] + place, cell_start[other + 1] - 1)


def _cumsum_per_segment(values: np.ndarray, segment_start: np.ndarray) -> np.ndarray:
    """Running sum of `values` that restarts wherever `segment_start` is True."""
    totals = np.cumsum(values)
    offsets = np.maximum.accumulate(np.where(segment_start, totals - values, 0))
    return totals - offsets
