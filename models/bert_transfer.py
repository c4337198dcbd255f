"""BERT transfer model: a Hugging Face BertModel over the user's item sequence, items seen through their text.

Ideas from UniSRec (Hou et al., KDD 2022) and Recformer (Li et al., KDD 2023): an item enters the
sequence encoder as its title's embedding from a pretrained language model, through a small learned
adaptor, so interests learnt in one group or domain are expressed in a space every domain shares,
and an item never seen in training still has a representation to score.
- Item representation: adaptor(text embedding) (+ an optional ID embedding, which helps items with
  enough training data and is zero for the rest).
- Encoder: `transformers.BertModel` with `is_decoder=True` (causal self-attention, so training
  predicts the next item at every position at once, as SASRec does). Its layers start from the
  pretrained language model (the first `num_layers` layers of the text model, hidden size fixed by
  it) or from scratch (a fresh BertConfig of `hidden_dim`): `init` chooses.
- Scores: the interest at the last position dotted with every item's representation, plus a learned
  item bias: full-softmax cross-entropy over the catalogue, like the other extractors.
- Transfer: the training task fits on the source view, calls `prepare_finetune`, then fits on the
  target view; `finetune: adaptor` freezes the encoder (parameter-efficient: only the adaptor, ID
  embeddings and item bias move in the target).
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import AutoConfig, BertConfig, BertModel

from conf.schema import TrainConfig
from models.base import SequentialRecommender
from models.explain import InterestEvidence
from models.text import quiet_transformers, resolve_model_path

INIT_STD = 0.02


def build_encoder(init: str, text_model_path: str | None, num_layers: int, hidden_dim: int, num_heads: int,
                  dropout: float, max_seq_len: int) -> BertModel:
    """A causal BertModel: the text model's first `num_layers` layers, or a fresh one of `hidden_dim`."""
    if init == "pretrained":
        path = resolve_model_path(text_model_path)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if num_layers > config.num_hidden_layers:
            raise ValueError(f"num_layers {num_layers}: the text model at {path} has only "
                             f"{config.num_hidden_layers} layers")
        if max_seq_len > config.max_position_embeddings:
            raise ValueError(f"train.max_seq_len {max_seq_len} exceeds the text model's "
                             f"{config.max_position_embeddings} positions")
        config.update({"is_decoder": True, "num_hidden_layers": num_layers, "hidden_dropout_prob": dropout,
                       "attention_probs_dropout_prob": dropout})
        with quiet_transformers():  # its load report lists the layers we leave out on purpose
            return BertModel.from_pretrained(path, config=config, add_pooling_layer=False, local_files_only=True)
    config = BertConfig(vocab_size=1, hidden_size=hidden_dim, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, intermediate_size=4 * hidden_dim,
                        max_position_embeddings=max_seq_len, type_vocab_size=1, is_decoder=True,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                        initializer_range=INIT_STD)
    return BertModel(config, add_pooling_layer=False)


class BertTransferRecommender(SequentialRecommender):
    """Causal BERT over text-grounded item representations; see the module docstring."""

    kind = "bert_transfer"

    def __init__(self, n_items: int, text_dim: int = 384, init: Literal["pretrained", "scratch"] = "pretrained",
                 text_model_path: str | None = None, num_layers: int = 2, hidden_dim: int = 64, num_heads: int = 2,
                 use_id_embedding: bool = True, finetune: Literal["full", "adaptor"] = "full",
                 dropout: float = 0.1, learning_rate: float = 1e-3, weight_decay: float = 0.0,
                 max_seq_len: int = 50, exclude_seen: bool = True):
        encoder = build_encoder(init, text_model_path, num_layers, hidden_dim, num_heads, dropout, max_seq_len)
        hidden = encoder.config.hidden_size
        super().__init__(n_items, hidden, learning_rate, weight_decay, max_seq_len, exclude_seen)
        self.save_hyperparameters()
        del self.output  # items are scored through their representations, not a per-item output row
        self.encoder = encoder
        self.finetune_mode = finetune
        # Text embeddings of every item (row 0: padding), filled by `attach_item_text`; a buffer, so it
        # is saved with the weights and a loaded model needs no text model to score.
        self.register_buffer("item_text", torch.zeros(n_items, text_dim))
        self.adaptor = nn.Sequential(nn.Dropout(dropout), nn.Linear(text_dim, hidden), nn.LayerNorm(hidden))
        self.id_embedding = nn.Embedding(n_items, hidden, padding_idx=0) if use_id_embedding else None
        if self.id_embedding is not None:
            nn.init.zeros_(self.id_embedding.weight)  # starts as pure text; IDs learn what text misses
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.logit_scale = hidden ** -0.5

    @classmethod
    def options_from(cls, section: Any, train: TrainConfig, exclude_seen: bool, text_dim: int | None = None,
                     text_model_path: str | None = None) -> dict[str, Any]:
        """Its own options, the text model it reads, and its own learning rate when the section sets one."""
        return super().options_from(section, train, exclude_seen) | {
            "text_dim": text_dim, "text_model_path": text_model_path,
            "learning_rate": section.learning_rate or train.learning_rate}

    def attach_item_text(self, vectors: Tensor) -> None:
        """Set the text embedding of every item: vectors [n_items, text_dim], row 0 for padding."""
        if vectors.shape != self.item_text.shape:
            raise ValueError(f"item text embeddings have shape {tuple(vectors.shape)}, "
                             f"expected {tuple(self.item_text.shape)}")
        self.item_text.copy_(vectors)

    def item_representations(self, items: Tensor | None = None) -> Tensor:
        """[n_items, H] representation of every item, or [..., H] of the given item_idx only."""
        if items is None:
            represented = self.adaptor(self.item_text)
            return represented + self.id_embedding.weight if self.id_embedding is not None else represented
        represented = self.adaptor(self.item_text[items])
        return represented + self.id_embedding(items) if self.id_embedding is not None else represented

    def encode(self, history: Tensor) -> Tensor:
        """[B, T] left-padded item_idx -> [B, T, H] interest after each position (causal)."""
        length = history.shape[1]
        present = history > 0
        embedded = self.item_representations()[history]  # [B, T, H]
        # Right-aligned positions: the most recent item always has the last position id.
        positions = torch.arange(self.max_seq_len - length, self.max_seq_len, device=history.device)
        hidden = self.encoder(inputs_embeds=embedded, attention_mask=present.long(),
                              position_ids=positions.expand_as(history)).last_hidden_state
        return hidden * present.unsqueeze(-1)  # padded positions carry no interest

    def item_scores(self, interest: Tensor) -> Tensor:
        """[..., H] -> [..., n_items]: scaled dot product with every item's representation, plus its bias.

        Both sides leave LayerNorms with entries of unit scale, so a raw dot product grows with H (about
        400 at the text model's width) and the softmax collapses onto one item: divide by sqrt(H).
        """
        return interest @ self.item_representations().T * self.logit_scale + self.item_bias

    def output_rows(self, items: Tensor) -> tuple[Tensor, Tensor]:
        """(scaled representations [..., H], bias [...]) of the given items, as `item_scores` uses them."""
        return self.item_representations(items) * self.logit_scale, self.item_bias[items]

    def evidence(self) -> InterestEvidence:
        """Its head is each item's text-grounded representation times the logit scale."""
        return InterestEvidence(self.n_items, lambda history: self.encode(history)[:, -1],
                                lambda: self.item_representations() * self.logit_scale)

    def prepare_finetune(self) -> None:
        """Before fitting on the target: with finetune='adaptor', freeze the encoder's weights."""
        if self.finetune_mode == "adaptor":
            self.encoder.requires_grad_(False)

    def make_optimizer(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(trainable, lr=self.learning_rate, weight_decay=self.weight_decay)
