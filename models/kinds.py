"""Model kinds by name: config says `kind: rnn`, this table says which class builds it, with which options.

Adding a model: its class in its own file (its options, training hooks, evidence for explanations and
warm-start support are its own), its config section in conf/schema.py, and a row here."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from conf.schema import TrainConfig

from models.attention import SASRecRecommender
from models.base import OWN_TRAINING_SETTINGS, Recommender, section_options
from models.baselines import PopularityRecommender
from models.bert_transfer import BertTransferRecommender
from models.domain_attention import DomainSASRecRecommender
from models.extractors import CaserRecommender, GRURecommender
from models.hybrid import HybridRecommender
from models.itemknn import ItemKNNRecommender
from models.mapping import EMCDRRecommender, PTUPCDRRecommender

MODEL_CLASSES: dict[str, Any] = {
    PopularityRecommender.kind: PopularityRecommender,
    GRURecommender.kind: GRURecommender,
    CaserRecommender.kind: CaserRecommender,
    SASRecRecommender.kind: SASRecRecommender,
    DomainSASRecRecommender.kind: DomainSASRecRecommender,
    ItemKNNRecommender.kind: ItemKNNRecommender,
    HybridRecommender.kind: HybridRecommender,
    BertTransferRecommender.kind: BertTransferRecommender,
    EMCDRRecommender.kind: EMCDRRecommender,
    PTUPCDRRecommender.kind: PTUPCDRRecommender,
}


def constructor_options(section: Any, train: TrainConfig, exclude_seen: bool, text_dim: int | None = None,
                        text_model_path: str | None = None) -> dict[str, Any]:
    """The options `build_model` passes to the constructor of a config section's kind: the kind's own
    `options_from` when it has one (neural models add the training settings, nested models theirs), else
    the section's fields."""
    model_class = MODEL_CLASSES[section.kind]
    if hasattr(model_class, "options_from"):
        return model_class.options_from(section, train, exclude_seen, text_dim, text_model_path)
    return section_options(section)


def build_model(kind: str, n_items: int, options: dict[str, Any]) -> Recommender:
    """A fresh model of `kind` for a catalogue of n_items (padding included)."""
    if kind not in MODEL_CLASSES:
        raise ValueError(f"model kind '{kind}' is unknown; known kinds: {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[kind](n_items=n_items, **options)


def load_model(path: Path) -> Recommender:
    """A model written by `save`, loaded without executing code from the file (weights_only)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(payload["kind"], payload["hparams"]["n_items"],
                        {k: v for k, v in payload["hparams"].items() if k != "n_items"})
    model.load_state_dict(payload["state_dict"])
    if hasattr(model, "eval"):
        model.eval()
    return model
