"""Self-attentive interest extractor (SASRec): a causal Transformer over the item sequence.

SASRec: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.
Departures from the paper:
- Loss: full-softmax cross-entropy over the whole catalogue at every position, instead of binary
  cross-entropy against one sampled negative (Klenitskiy & Vasilev, "Turning Dross Into Gold Loss:
  is BERT4Rec really better than SASRec?", RecSys 2023: this alone lifts SASRec above BERT4Rec).
- Head: the base class's separate `output` Linear (with a bias), not the paper's input-embedding
  dot product. On the synthetic demo preset (6 epochs) it reached test NDCG@10 0.361 against 0.341
  for the tied head; it also keeps `score_all` shared with the other extractors, and its bias gives
  a user with no history a learned popularity ranking instead of a constant. `tie_output: true`
  scores with the input item embeddings instead (the paper's head; the bias stays), which halves the
  item parameters: the choice for sparse catalogues where most items are seen a few times.
- Positions are counted back from the most recent item (right-aligned): histories are left-padded,
  and a history scored with T < max_seq_len still gives its last item the embedding it had in
  training, where windows are always max_seq_len long.
- Padding is masked out of attention as keys (the paper only zeroes padded inputs, so padded
  positions still carry their position embedding into later positions); each position may always
  attend to itself, so an all-padding row never meets a fully masked softmax (no NaN). Padded
  positions output zeros, so a user with no history is scored by the output bias alone.
- Pre-LayerNorm blocks throughout (the paper normalises the query only, and pmixer's port keeps
  keys and values unnormalised); weights start from N(0, 0.02) as in RecBole and Klenitskiy & Vasilev.

`item_text: true` grounds every item in its title (UniSRec, Hou et al., KDD 2022; Recformer): an item's
vector is its ID embedding plus a learned linear map of its title's embedding from the pretrained text
model (frozen, computed once), on the input side and, with `tie_output`, on the scoring side. An item
seen a handful of times (most of a sparse catalogue, and most of a domain new to a user) then still
sits near items with similar titles, and what the text model knows of products carries over to every
domain; the ID embedding learns what the title misses. The map starts at N(0, 0.02) like the IDs, so
text and IDs begin on the same scale.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from conf.schema import SASRecConfig, TrainConfig
from models.base import SequentialRecommender
from models.dropout import Dropout, dropout
from models.explain import Evidence, InterestEvidence

SASREC, TRAIN = SASRecConfig(), TrainConfig()  # the defaults, from the config schema

INIT_STD = 0.02


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention through the fused `scaled_dot_product_attention` kernel."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.project = nn.Linear(dim, dim)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """x [B, T, D], allowed [B, 1, T, T] (True: query may attend to key) -> [B, T, D]."""
        batch, length, dim = x.shape
        # [B, T, 3D] -> 3 × [B, heads, T, D/heads]
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.training and self.dropout > 0 and x.device.type == "cpu":
            # torch's fused kernel draws its attention dropout mask element by element on the CPU;
            # the same computation written out uses the cheaper mask of models.dropout.
            weights = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # [B, heads, T, T]
            weights = weights.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
            attended = dropout(weights, self.dropout) @ v
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                                      dropout_p=self.dropout if self.training else 0.0)
        return self.project(attended.transpose(1, 2).reshape(batch, length, dim))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attention(LN(x)), then x + feed-forward(LN(x))."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, num_heads, dropout)
        self.feed_forward_norm = nn.LayerNorm(dim)
        # The paper's point-wise feed-forward keeps the width at D (not the usual 4D).
        self.feed_forward = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), Dropout(dropout), nn.Linear(dim, dim))
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """x [B, T, D] -> [B, T, D]."""
        x = x + self.dropout(self.attention(self.attention_norm(x), allowed))
        return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))


class SASRecRecommender(SequentialRecommender):
    """SASRec-style extractor: the causal Transformer's output at each position is the user's interest."""

    kind = "sasrec"
    reads_padding = False  # padding is masked out of attention; positions count back from the last item

    def __init__(self, n_items: int, embedding_dim: int = SASREC.embedding_dim, num_blocks: int = SASREC.num_blocks,
                 num_heads: int = SASREC.num_heads, dropout: float = SASREC.dropout,
                 tie_output: bool = SASREC.tie_output, learning_rate: float = TRAIN.learning_rate,
                 weight_decay: float = TRAIN.weight_decay, max_seq_len: int = TRAIN.max_seq_len,
                 exclude_seen: bool = True, item_text: bool = SASREC.item_text, text_dim: int | None = None):
        super().__init__(n_items, embedding_dim, learning_rate, weight_decay, max_seq_len, exclude_seen)
        self.save_hyperparameters()
        self.item_embedding = nn.Embedding(n_items, embedding_dim, padding_idx=0)
        self.tie_output = tie_output
        if tie_output:  # one [n_items, D] table reads items in and scores them out
            self.output.weight = self.item_embedding.weight
        self.text_map = None
        if item_text:
            if not text_dim:
                raise ValueError("item_text: true needs text_dim, the width of the text model's item embeddings")
            # Title embeddings of every item (row 0: padding), set by `attach_item_text`; a buffer, so a saved
            # model scores without the text model.
            self.register_buffer("item_text", torch.zeros(n_items, text_dim))
            self.text_map = nn.Linear(text_dim, embedding_dim, bias=False)
        self.position_embedding = nn.Embedding(max_seq_len, embedding_dim)  # index max_seq_len - 1: the last item
        self.embedding_scale = math.sqrt(embedding_dim)
        self.embedding_dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(embedding_dim, num_heads, dropout) for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(embedding_dim)
        self.apply(self._initialise)

    @staticmethod
    def _initialise(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])

    @classmethod
    def options_from(cls, section, train: TrainConfig, exclude_seen: bool, text_dim: int | None = None,
                     text_model_path: str | None = None) -> dict:
        """Its own options, and the text embeddings' width when it reads item text."""
        options = super().options_from(section, train, exclude_seen)
        return options | {"text_dim": text_dim} if options.get("item_text") else options

    def attach_item_text(self, vectors: Tensor) -> None:
        """Set the title embedding of every item: vectors [n_items, text_dim], row 0 for padding."""
        if self.text_map is None:
            raise ValueError(f"{self.kind} was built without item_text: it has no use for item text embeddings")
        if vectors.shape != self.item_text.shape:
            raise ValueError(f"item text embeddings have shape {tuple(vectors.shape)}, "
                             f"expected {tuple(self.item_text.shape)}")
        self.item_text.copy_(vectors)

    def item_vectors(self, items: Tensor | None = None) -> Tensor:
        """[..., D] vectors of the given item_idx ([n_items, D] of every item without): the ID embedding,
        plus the mapped title embedding with item_text."""
        if items is None:
            ids = self.item_embedding.weight
            return ids if self.text_map is None else ids + self.text_map(self.item_text)
        ids = self.item_embedding(items)
        return ids if self.text_map is None else ids + self.text_map(self.item_text[items])

    def embed_inputs(self, history: Tensor) -> Tensor:
        """[B, T] item_idx -> [B, T, D] what each position contributes before its position embedding."""
        vectors = self.item_vectors(history)
        if self.text_map is not None:  # padding contributes nothing, whatever text row 0 was given
            vectors = vectors * (history > 0).unsqueeze(-1)
        return vectors * self.embedding_scale

    def scores_with_text(self) -> bool:
        """True when items are scored through their text-grounded vectors (item_text with a tied head)."""
        return self.text_map is not None and self.tie_output

    def item_scores(self, interest: Tensor) -> Tensor:
        if not self.scores_with_text():
            return super().item_scores(interest)
        return interest @ self.item_vectors().T + self.output.bias

    def output_rows(self, items: Tensor) -> tuple[Tensor, Tensor]:
        if not self.scores_with_text():
            return super().output_rows(items)
        return self.item_vectors(items), self.output.bias[items]

    def evidence(self) -> Evidence:
        """A linear head over the last position's interest, its rows the items' (text-grounded) vectors."""
        if not self.scores_with_text():
            return super().evidence()
        return InterestEvidence(self.n_items, lambda history: self.encode(history)[:, -1], self.item_vectors)

    def encode(self, history: Tensor) -> Tensor:
        """[B, T] left-padded item_idx (T <= max_seq_len) -> [B, T, D] interest after each position."""
        length = history.shape[1]
        if length > self.max_seq_len:
            raise ValueError(f"history has {length} positions but this model was built with "
                             f"max_seq_len {self.max_seq_len}; pass at most that many recent items")
        present = history > 0  # [B, T]
        positions = torch.arange(self.max_seq_len - length, self.max_seq_len, device=history.device)  # [T]
        x = self.embed_inputs(history) + self.position_embedding(positions)
        x = self.embedding_dropout(x)  # [B, T, D]
        # Query t may attend to keys s <= t that hold an item, and always to itself: a padded query
        # then sees only itself, so no softmax row is empty; its output is zeroed below anyway.
        causal = torch.ones(length, length, dtype=torch.bool, device=history.device).tril()  # [T, T]
        diagonal = torch.eye(length, dtype=torch.bool, device=history.device)
        allowed = (causal & present[:, None, :]) | diagonal  # [B, T, T]
        allowed = allowed.unsqueeze(1)  # [B, 1, T, T], broadcast over heads
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x) * present.unsqueeze(-1)  # [B, T, D]
