"""Typed configuration of a pipeline run: every YAML preset is validated against these models.

Unknown keys, wrong types and impossible values fail at load time with the key path in the
message, before any work starts. Each stage receives only its own section.
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class Section(BaseModel):
    """Base of every config section: strict keys, immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(Section):
    """The embedded synthetic shop: sizes and the strength of the planted structure."""

    n_users: int = Field(5000, ge=20, description="Users at scale 1.")
    n_items: int = Field(2000, ge=20, description="Items at scale 1 (all domains together).")
    n_topics: int = Field(12, ge=2, description="Latent interest topics shared by every domain.")
    mean_events_per_user: float = Field(30.0, ge=6, description="Mean sequence length before dedupe.")
    domains: list[str] = Field(["books", "movies"], min_length=1, description="Product domains.")
    groups: list[str] = Field(["F", "M"], min_length=2, description="Values of the `gender` attribute.")
    topic_stay_probability: float = Field(
        0.75, ge=0, le=1, description="Chance the next event keeps the current topic (sequential drift)."
    )
    sequel_probability: float = Field(
        0.35, ge=0, le=1, description="Chance the next item is the direct successor of the last one."
    )
    group_topic_shift: float = Field(
        0.8, ge=0, le=1, description="0: groups share topic tastes; 1: disjoint favourite topics."
    )
    popularity_exponent: float = Field(1.0, ge=0, description="Zipf exponent of item popularity.")
    scale: float = Field(1.0, gt=0, le=10_000, description="Multiplies users (and items by its square root).")

    @field_validator("domains", "groups")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"values must be distinct, got {values}")
        return values

    def scaled_users(self) -> int:
        """Number of users after applying `scale`."""
        return max(20, round(self.n_users * self.scale))

    def scaled_items(self) -> int:
        """Number of items after applying `scale` (square-root growth keeps the catalogue plausible)."""
        return max(20, round(self.n_items * math.sqrt(self.scale)))


class DataConfig(Section):
    """Where interactions come from. Real-data adapters plug in as further `source` values."""

    source: Literal["synthetic"] = "synthetic"
    synthetic: SyntheticConfig = SyntheticConfig()


class PreprocessConfig(Section):
    """Cleaning and filtering before the split."""

    dedupe: Literal["user_item", "exact"] = Field(
        "user_item",
        description="user_item: keep a user's first interaction with an item; exact: drop identical rows only.",
    )
    min_rating: float | None = Field(None, description="Keep interactions rated at least this (None keeps all).")
    k_core: int = Field(5, ge=1, description="Users and items with fewer interactions are dropped, repeatedly.")


class SplitConfig(Section):
    """Temporal hold-out per user (RecBole's LS/TO ordering: by time, ties broken by item id)."""

    protocol: Literal["leave_one_out", "last_n"] = Field(
        "leave_one_out",
        description="leave_one_out: last item test, second last valid; last_n: last n test, the n before valid.",
    )
    holdout_n: int = Field(3, ge=1, description="Items held out per user and split under last_n.")

    def holdout_size(self) -> int:
        """Items held out per user in each of valid and test."""
        return 1 if self.protocol == "leave_one_out" else self.holdout_n


class ScenarioConfig(Section):
    """The source/target partition that interest transfer works across."""

    name: str = Field("pooled", min_length=1, description="Label of this scenario in metrics and MLflow.")
    partition: Literal["none", "user_group", "item_domain"] = "user_group"
    attribute: str = Field("gender", description="User attribute that defines groups (user_group partition).")
    source: str | None = Field("M", description="Source group value or domain name.")
    target: str | None = Field("F", description="Target group value or domain name.")

    @model_validator(mode="after")
    def _source_differs_from_target(self) -> ScenarioConfig:
        if self.partition != "none":
            if self.source is None or self.target is None:
                raise ValueError(f"partition '{self.partition}' needs both source and target")
            if self.source == self.target:
                raise ValueError(f"source and target must differ, both are '{self.source}'")
        return self


class PopularityConfig(Section):
    """Most-interacted items first, the same list for everyone."""

    kind: Literal["popularity"] = "popularity"
    name: str = "popularity"


class RNNConfig(Section):
    """GRU4Rec-style extractor."""

    kind: Literal["rnn"] = "rnn"
    name: str = "gru"
    embedding_dim: int = Field(64, ge=4)
    hidden_dim: int = Field(128, ge=4)
    num_layers: int = Field(1, ge=1, le=4)
    dropout: float = Field(0.2, ge=0, lt=1)


class CNNConfig(Section):
    """Caser-style extractor."""

    kind: Literal["cnn"] = "cnn"
    name: str = "caser"
    embedding_dim: int = Field(64, ge=4)
    window: int = Field(5, ge=1, le=50, description="L: how many recent items the convolutions see.")
    horizontal_filters: int = Field(16, ge=1, description="Filters per height 1..window.")
    vertical_filters: int = Field(4, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)


ModelConfig = Annotated[PopularityConfig | RNNConfig | CNNConfig, Field(discriminator="kind")]


class TrainConfig(Section):
    """Lightning training settings shared by every neural model."""

    max_epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_seq_len: int = Field(50, ge=2, description="Most recent items a model reads.")
    patience: int = Field(3, ge=1, description="Epochs without validation NDCG@10 gain before stopping.")
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | str = 1
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = "32-true"
    deterministic: bool = True
    progress_bar: bool = True


class EvaluationConfig(Section):
    """Full-ranking evaluation over the whole catalogue."""

    ks: list[int] = Field([5, 10, 20], min_length=1)
    exclude_seen: bool = Field(True, description="Remove the user's history from the ranking (SASRec/BERT4Rec).")
    group_attribute: str | None = Field("gender", description="Report metrics per value of this user attribute.")
    batch_size: int = Field(1024, ge=1, description="Users scored at once.")

    @field_validator("ks")
    @classmethod
    def _positive_distinct(cls, ks: list[int]) -> list[int]:
        if any(k < 1 for k in ks):
            raise ValueError(f"every K must be at least 1, got {ks}")
        return sorted(set(ks))


class ExportConfig(Section):
    """Top-K recommendations written for every user."""

    top_k: int = Field(20, ge=1)
    model: str | None = Field(None, description="Model name to export; None picks the best on validation NDCG@10.")


class TrackingConfig(Section):
    """MLflow settings; the MLFLOW_TRACKING_URI environment variable overrides `tracking_uri`."""

    tracking_uri: str | None = Field(None, description="None: sqlite file mlflow.db in the working directory.")
    experiment: str = "interest-transfer"


class OutputConfig(Section):
    """Where a run writes its folder."""

    root: str = Field("outputs", description="Run folders go under this directory.")
    run_name: str | None = Field(None, description="Folder name; None: <config name>-<timestamp>-<random>.")

    @field_validator("run_name")
    @classmethod
    def _safe_name(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(RUN_NAME_PATTERN, name):
            raise ValueError(f"must match {RUN_NAME_PATTERN} (no path separators), got {name!r}")
        return name


class PipelineConfig(Section):
    """A whole run: data, preprocessing, split, scenario, models, training, evaluation, export."""

    name: str = Field("run", min_length=1, description="Preset name, used in run names and MLflow tags.")
    seed: int = Field(42, ge=0)
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    split: SplitConfig = SplitConfig()
    scenario: ScenarioConfig = ScenarioConfig()
    models: list[ModelConfig] = Field(
        default_factory=lambda: [PopularityConfig(), RNNConfig(), CNNConfig()], min_length=1
    )
    train: TrainConfig = TrainConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    export: ExportConfig = ExportConfig()
    tracking: TrackingConfig = TrackingConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be distinct, got {names}")
        if self.export.model is not None and self.export.model not in names:
            raise ValueError(f"export.model: '{self.export.model}' is not one of the configured models {names}")
        if self.data.source == "synthetic":
            synthetic = self.data.synthetic
            n_items = synthetic.scaled_items()
            for key, k in (("evaluation.ks", max(self.evaluation.ks)), ("export.top_k", self.export.top_k)):
                if k >= n_items:
                    raise ValueError(f"{key}: K={k} must be smaller than the catalogue ({n_items} items)")
            if self.scenario.partition == "user_group":
                if self.scenario.attribute != "gender":
                    raise ValueError(
                        f"scenario.attribute: the synthetic shop's group attribute is 'gender', "
                        f"got '{self.scenario.attribute}'"
                    )
                for key in ("source", "target"):
                    value = getattr(self.scenario, key)
                    if value not in synthetic.groups:
                        raise ValueError(
                            f"scenario.{key}: '{value}' does not occur in data.synthetic.groups {synthetic.groups}"
                        )
            if self.scenario.partition == "item_domain":
                for key in ("source", "target"):
                    value = getattr(self.scenario, key)
                    if value not in synthetic.domains:
                        raise ValueError(
                            f"scenario.{key}: '{value}' does not occur in data.synthetic.domains {synthetic.domains}"
                        )
        return self

    def model_names(self) -> list[str]:
        """Names of the configured models, in order."""
        return [m.name for m in self.models]
