"""The synthetic shop: deterministic, well-formed, and carrying the structure it claims to plant.

Each planted-structure test has a margin that fails when the structure is switched off in the
config, and most pair it with that switched-off control, so a regression in either direction shows.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from conf.schema import SyntheticConfig
from tasks.data.synthetic import ShopTables, generate_shop

SMALL = SyntheticConfig(n_users=600, n_items=200)


@pytest.fixture(scope="module")
def shop() -> ShopTables:
    return generate_shop(SMALL, seed=0)


def events_with_topics(shop: ShopTables) -> pl.DataFrame:
    """Interactions in per-user time order, with each item's topic and domain and each user's group."""
    topics = shop.items.select(
        "item_id", "domain", pl.col("category").str.split("/").list.get(1).alias("topic")
    )
    return (
        shop.interactions.join(topics, on="item_id", how="left")
        .join(shop.users.select("user_id", "gender"), on="user_id", how="left")
        .sort("user_id", "timestamp")
    )


def group_topic_distance(shop: ShopTables, a: str, b: str) -> float:
    """Total variation distance between the topic distributions of two groups' interactions."""
    shares = (
        events_with_topics(shop)
        .group_by("gender", "topic")
        .len()
        .with_columns((pl.col("len") / pl.col("len").sum().over("gender")).alias("share"))
        .pivot(on="gender", index="topic", values="share")
        .fill_null(0.0)
    )
    return 0.5 * float(np.abs(shares[a].to_numpy() - shares[b].to_numpy()).sum())


def topic_persistence(shop: ShopTables) -> tuple[float, float]:
    """(observed, expected) share of consecutive event pairs within a user that share a topic.

    Expected: if each event's topic were an independent draw from that user's overall topic mix p,
    a pair would match with probability sum_k p_k^2; users are weighted by their number of pairs.
    """
    events = events_with_topics(shop)
    pairs = events.with_columns(
        (pl.col("topic") == pl.col("topic").shift(1).over("user_id")).alias("same_topic")
    )
    observed = float(pairs["same_topic"].drop_nulls().mean())
    per_user = (
        events.group_by("user_id", "topic")
        .len()
        .with_columns((pl.col("len") / pl.col("len").sum().over("user_id")).alias("p"))
        .group_by("user_id")
        .agg((pl.col("p") ** 2).sum().alias("match"), (pl.col("len").sum() - 1).alias("n_pairs"))
    )
    expected = float((per_user["match"] * per_user["n_pairs"]).sum() / per_user["n_pairs"].sum())
    return observed, expected


def top_decile_share(shop: ShopTables) -> float:
    """Share of all interactions that go to the 10% most interacted items (unseen items count as 0)."""
    counts = shop.interactions["item_id"].value_counts()["count"].to_numpy()
    counts = np.sort(np.concatenate([counts, np.zeros(shop.items.height - counts.size)]))[::-1]
    return float(counts[: shop.items.height // 10].sum() / counts.sum())


def test_same_seed_gives_identical_tables():
    first, second = generate_shop(SMALL, seed=3), generate_shop(SMALL, seed=3)
    assert first.interactions.equals(second.interactions)
    assert first.items.equals(second.items)
    assert first.users.equals(second.users)


def test_different_seed_gives_different_interactions():
    assert not generate_shop(SMALL, seed=3).interactions.equals(generate_shop(SMALL, seed=4).interactions)


def test_table_sizes_follow_config(shop):
    assert shop.users.height == 600
    assert shop.items.height == 200
    assert shop.users["user_id"].n_unique() == 600
    assert shop.items["item_id"].n_unique() == 200


def test_scale_multiplies_users_and_grows_items_by_its_square_root():
    scaled = generate_shop(SMALL.model_copy(update={"scale": 2.25}), seed=0)
    assert scaled.users.height == 1350  # 600 × 2.25
    assert scaled.items.height == 300  # 200 × sqrt(2.25)


def test_interactions_refer_only_to_known_users_and_items(shop):
    assert shop.interactions["user_id"].is_in(shop.users["user_id"].implode()).all()
    assert shop.interactions["item_id"].is_in(shop.items["item_id"].implode()).all()
    assert shop.interactions.null_count().sum_horizontal().item() == 0


def test_every_item_has_title_category_and_domain_and_both_domains_occur(shop):
    for column in ("title", "category", "domain"):
        assert shop.items[column].null_count() == 0
        assert (shop.items[column].str.len_chars() > 0).all()
    assert set(shop.items["domain"]) == {"books", "movies"}
    # The category is "<domain>/<topic>", consistent with the domain column.
    assert (shop.items["category"].str.split("/").list.get(0) == shop.items["domain"]).all()


def test_timestamps_strictly_increase_within_each_user_in_row_order(shop):
    steps = shop.interactions.select(pl.col("timestamp").diff().over("user_id").alias("step"))["step"]
    assert steps.drop_nulls().min() > 0
    assert steps.null_count() == shop.users.height  # one first event per user, every user active


def test_groups_prefer_different_topics_under_default_shift(shop):
    assert group_topic_distance(shop, "F", "M") > 0.2


def test_groups_share_topic_tastes_without_shift():
    # More users than elsewhere: with shift 0 the only group difference left is sampling noise.
    unshifted = generate_shop(SyntheticConfig(n_users=1500, n_items=200, group_topic_shift=0.0), seed=0)
    assert group_topic_distance(unshifted, "F", "M") < 0.1


def test_consecutive_events_keep_their_topic_far_more_than_independent_draws(shop):
    observed, expected = topic_persistence(shop)
    assert observed > expected + 0.2


def test_topic_persistence_vanishes_without_stay_and_sequel():
    independent = generate_shop(
        SMALL.model_copy(update={"topic_stay_probability": 0.0, "sequel_probability": 0.0}), seed=0
    )
    observed, expected = topic_persistence(independent)
    assert observed < expected + 0.05


def test_top_decile_of_items_holds_most_interactions():
    # A catalogue of 1000: with 24 topic/domain cells of ~40 items each the within-cell Zipf shows;
    # at 200 items (8 per cell) topic choice flattens the tail to about 0.39.
    shop = generate_shop(SyntheticConfig(n_users=600, n_items=1000), seed=0)
    assert top_decile_share(shop) > 0.4


def test_flat_popularity_has_no_long_tail():
    flat = generate_shop(SyntheticConfig(n_users=600, n_items=1000, popularity_exponent=0.0), seed=0)
    assert top_decile_share(flat) < 0.3


def test_every_topic_has_items_in_every_domain(shop):
    topics = shop.items.select(
        pl.col("category").str.split("/").list.get(1).alias("topic"), "domain"
    )
    domains_per_topic = topics.group_by("topic").agg(pl.col("domain").n_unique())
    assert domains_per_topic.height == SMALL.n_topics
    assert (domains_per_topic["domain"] == len(SMALL.domains)).all()


def consecutive_pairs(shop: ShopTables) -> pl.DataFrame:
    """Each user's consecutive (previous, next) items with their category, place in the category's series,
    domain and the user's group."""
    items = shop.items.with_columns(pl.col("item_id").str.slice(1).cast(pl.Int64).alias("index"))
    items = items.with_columns((pl.col("index") - pl.col("index").min().over("category")).alias("place"),
                               pl.col("category").str.split("/").list.get(1).alias("topic"))
    events = events_with_topics(shop).drop("topic", "domain").join(
        items.select("item_id", "index", "place", "category", "topic", "domain"), on="item_id")
    previous = [pl.col(c).shift(1).over("user_id").alias(f"previous_{c}")
                for c in ("index", "place", "category", "topic", "domain")]
    return events.sort("user_id", "timestamp").with_columns(previous).drop_nulls("previous_index")


def test_group_shares_make_a_small_group():
    shop = generate_shop(SyntheticConfig(n_users=2000, n_items=200, group_shares=[0.1, 0.9]), seed=0)
    share = float((shop.users["gender"] == "F").mean())
    assert 0.08 < share < 0.12


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_group_specific_transitions_give_each_group_its_own_sequel_step(share):
    shop = generate_shop(SMALL.model_copy(update={"group_transition_share": share}), seed=0)
    pairs = consecutive_pairs(shop).filter(pl.col("category") == pl.col("previous_category"))
    steps = pairs.with_columns((pl.col("index") - pl.col("previous_index")).alias("step"))
    by_group = {group: float((frame["step"] == 2).mean()) for (group,), frame in steps.partition_by("gender", as_dict=True).items()}
    # Fresh draws inside the series land two places on now and then; the planted rule makes it M's habit.
    if share == 1.0:  # M (group 1) steps two places, F (group 0) keeps the shared single step
        assert by_group["M"] > 2 * by_group["F"] + 0.1
    else:
        assert abs(by_group["M"] - by_group["F"]) < 0.05


def bridge_share(probability: float) -> float:
    """Share of consecutive pairs that move to the same place of the same topic's series in another domain."""
    shop = generate_shop(SMALL.model_copy(update={"domain_bridge_probability": probability}), seed=0)
    pairs = consecutive_pairs(shop)
    bridged = pairs.filter((pl.col("topic") == pl.col("previous_topic")) & (pl.col("domain") != pl.col("previous_domain"))
                           & (pl.col("place") == pl.col("previous_place")))
    return bridged.height / pairs.height


def test_domain_bridges_plant_cross_domain_counterparts():
    # Without bridges such pairs happen by chance (popular first places of the series): 0.054 at seed 0.
    # About 0.3 x (1 - sequel share) of the steps become bridges on top of that.
    without, with_bridges = bridge_share(0.0), bridge_share(0.3)
    assert without < 0.08
    assert with_bridges - without > 0.15
