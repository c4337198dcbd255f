"""The promotion gate: a candidate model replaces the champion only if it is not worse on held-out data.

Both models are scored on the same users of the current data's test split (each user's held-out
items, ranked over the full catalogue, evaluation settings of the run), with the metric and K of
`registry`. The champion may have been trained on another item index (new events brought new items):
it is scored through `RemappedRecommender`, so it keeps its own weights and simply cannot recommend
items it never saw. Without a champion the candidate is promoted.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


from conf.schema import PipelineConfig
from models.base import Recommender
from models.warm_start import RemappedRecommender, new_to_old_index
from tasks import schemas
from tasks.modelling.evaluation import domain_codes, score_users
from tasks.io import read_table
from tasks.data.preprocessing import PreparedData
from tasks.modelling.transfer import input_data


@dataclass(frozen=True)
class GateDecision:
    """What the gate compared and decided."""

    metric: str  # e.g. ndcg@10 on the test split
    candidate: float
    champion: float | None  # None: there was no champion
    tolerance: float
    promoted: bool
    reason: str
    users: int

    def as_dict(self) -> dict:
        return asdict(self)


def item_ids(prepared: PreparedData) -> list[str]:
    """The item id of each item_idx 1..n (position i holds item_idx i + 1)."""
    return read_table(prepared.items, schemas.ITEM_INDEX, "items").sort("item_idx")["item_id"].to_list()


def on_current_index(model: Recommender, model_item_ids: list[str], prepared: PreparedData) -> Recommender:
    """The model as it ranks the current catalogue: itself when the index is unchanged, else a remapped view."""
    current = item_ids(prepared)
    if current == model_item_ids:
        return model
    return RemappedRecommender(model, new_to_old_index(model_item_ids, current))


def held_out_metric(model: Recommender, prepared: PreparedData, reads: str, config: PipelineConfig) -> tuple[float, int]:
    """(mean of the gate metric over the test users, number of users) for one model."""
    k = config.gate_k()
    evaluation = config.evaluation.model_copy(update={"ks": [k]})
    items = read_table(prepared.items, schemas.ITEM_INDEX, "items")
    users, per_user = score_users(model, input_data(prepared, reads), "test", evaluation, config.train.max_seq_len,
                                  domain_codes(items))
    values = per_user[f"{config.registry.gate_metric}_at_{k}"]
    return float(values.mean()) if len(values) else 0.0, len(users)


def decide(candidate: float, champion: float | None, tolerance: float, metric: str, users: int) -> GateDecision:
    """Promote when there is no champion or candidate >= champion - tolerance."""
    if champion is None:
        return GateDecision(metric, candidate, None, tolerance, True, "no champion yet", users)
    promoted = candidate >= champion - tolerance
    verdict = "not worse than" if promoted else "worse than"
    reason = f"candidate {candidate:.4f} {verdict} champion {champion:.4f} (tolerance {tolerance:g})"
    return GateDecision(metric, candidate, champion, tolerance, promoted, reason, users)


def run_gate(candidate: Recommender, candidate_reads: str, champion: Recommender | None, champion_item_ids: list[str],
             champion_reads: str, prepared: PreparedData, config: PipelineConfig) -> GateDecision:
    """Score candidate and champion on the same held-out users and decide."""
    gate = config.registry
    metric = f"test {gate.gate_metric}@{config.gate_k()}"
    candidate_value, users = held_out_metric(candidate, prepared, candidate_reads, config)
    champion_value = None
    if champion is not None:
        champion_value, _ = held_out_metric(on_current_index(champion, champion_item_ids, prepared), prepared,
                                            champion_reads, config)
    return decide(candidate_value, champion_value, gate.tolerance, metric, users)
