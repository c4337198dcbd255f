"""Interest extractors over the item-embedding sequence: an RNN (GRU4Rec) and a CNN (Caser).

GRU4Rec: Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016.
Caser: Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional Sequence
Embedding", WSDM 2018.
Departures from the papers, shared by both: full-softmax cross-entropy over the whole catalogue
at every position of a sequence (as in Klenitskiy & Vasilev 2023, which beats the papers' sampled
losses), and no user-ID embedding (Caser has one), so that a user never seen in training, such as
a target-group or cold-start user, is scored from their history alone.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from conf.schema import CNNConfig, RNNConfig, TrainConfig
from models.base import SequentialRecommender
from models.dropout import Dropout

# The defaults live in the config schema, once; a model built without a setting takes the schema's.
RNN, CNN, TRAIN = RNNConfig(), CNNConfig(), TrainConfig()


class GRURecommender(SequentialRecommender):
    """GRU4Rec-style extractor: the GRU state after each item is the user's current interest."""

    kind = "rnn"
    reads_padding = False  # each history runs from its first item, padding after it (see encode)

    def __init__(self, n_items: int, embedding_dim: int = RNN.embedding_dim, hidden_dim: int = RNN.hidden_dim,
                 num_layers: int = RNN.num_layers, dropout: float = RNN.dropout,
                 learning_rate: float = TRAIN.learning_rate, weight_decay: float = TRAIN.weight_decay,
                 max_seq_len: int = TRAIN.max_seq_len, exclude_seen: bool = True):
        super().__init__(n_items, hidden_dim, learning_rate, weight_decay, max_seq_len, exclude_seen)
        self.save_hyperparameters()
        self.item_embedding = nn.Embedding(n_items, embedding_dim, padding_idx=0)
        self.gru = nn.GRU(embedding_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = Dropout(dropout)

    def encode(self, history: Tensor) -> Tensor:
        """[B, T] left-padded item_idx -> [B, T, H] GRU state after each item (zeros at padding).

        The GRU runs over each history moved to the front of its row (padding after it), so every
        state starts from zero at the user's first item: a state never depends on how much padding a
        batch gives the row (the model may train on batches with their padding columns cut, and
        scores a user the same in any batch), and a user with no history gets the output bias alone.
        """
        present = history > 0  # [B, T], left-padded: the items are the last ones of each row
        length = history.shape[1]
        padding = (~present).sum(dim=1, keepdim=True)  # [B, 1]
        positions = torch.arange(length, device=history.device)  # [T]
        to_front = (positions + padding) % length  # [B, T]: slot i of the moved row reads column i + padding
        states, _ = self.gru(self.dropout(self.item_embedding(history.gather(1, to_front))))  # [B, T, H]
        to_back = ((positions - padding) % length).unsqueeze(-1).expand(-1, -1, states.shape[-1])  # [B, T, H]
        return self.dropout(states.gather(1, to_back)) * present.unsqueeze(-1)


class CaserRecommender(SequentialRecommender):
    """Caser-style extractor: horizontal and vertical convolutions over the last `window` item embeddings.

    Each position sees its own last `window` items (zero-padded at the start). Rather than cutting
    out one L×D "image" per position as the paper does, the same filters run as 1-D convolutions
    along the whole sequence, and the horizontal max-pool becomes a sliding max over the window:
    the same function, computed for every position in one pass with no L-fold copy.
    """

    kind = "cnn"
    reads_padding = False  # the convolutions pad with zeros themselves, the same as padding's zero embedding

    def __init__(self, n_items: int, embedding_dim: int = CNN.embedding_dim, window: int = CNN.window,
                 horizontal_filters: int = CNN.horizontal_filters, vertical_filters: int = CNN.vertical_filters,
                 dropout: float = CNN.dropout, learning_rate: float = TRAIN.learning_rate,
                 weight_decay: float = TRAIN.weight_decay, max_seq_len: int = TRAIN.max_seq_len,
                 exclude_seen: bool = True):
        super().__init__(n_items, embedding_dim, learning_rate, weight_decay, max_seq_len, exclude_seen)
        self.save_hyperparameters()
        self.window = window
        self.item_embedding = nn.Embedding(n_items, embedding_dim, padding_idx=0)
        # Vertical filters: weighted sums of the window's rows (point-level patterns), the same
        # weights for every embedding dimension.
        self.vertical = nn.Conv1d(1, vertical_filters, kernel_size=window)
        # Horizontal filters of every height 1..window spanning the full embedding (union-level patterns).
        self.horizontal = nn.ModuleList(
            nn.Conv1d(embedding_dim, horizontal_filters, kernel_size=height) for height in range(1, window + 1)
        )
        self.dropout = Dropout(dropout)
        self.project = nn.Linear(vertical_filters * embedding_dim + horizontal_filters * window, embedding_dim)

    def encode(self, history: Tensor) -> Tensor:
        """[B, T] item_idx -> [B, T, D] interest after each position."""
        batch, length = history.shape
        embedded = self.item_embedding(history).transpose(1, 2)  # [B, D, T]
        padded = nn.functional.pad(embedded, (self.window - 1, 0))  # [B, D, T+L-1]
        dim = padded.shape[1]
        vertical = self.vertical(padded.reshape(batch * dim, 1, -1))  # [B·D, n_v, T]
        vertical = vertical.view(batch, dim, -1, length).permute(0, 3, 2, 1).flatten(2)  # [B, T, n_v·D]
        horizontal = []
        for height, conv in enumerate(self.horizontal, start=1):
            activations = torch.relu(conv(padded))  # [B, n_h, T+L-height]
            # Max over the L-height+1 placements inside the window that ends at each position.
            pooled = nn.functional.max_pool1d(activations, kernel_size=self.window - height + 1, stride=1)
            horizontal.append(pooled.transpose(1, 2))  # [B, T, n_h]
        features = self.dropout(torch.cat([vertical, *horizontal], dim=2))
        return torch.relu(self.project(features))  # [B, T, D]
