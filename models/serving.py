"""Online serving: a trained recommender as an MLflow pyfunc that answers "top-K items for this history".

With `serving_code.py`, the only modules of models/ that import MLflow. The pure steps (id mapping,
validation, top-K, reasons) are plain functions raising `InvalidRequest`, so tests call them without
MLflow; `TopKRecommender` turns that error into MLflow's INVALID_PARAMETER_VALUE, which the scoring
server answers with HTTP 400 and the message.

A request row holds item ids in the original id space, most recent last:
    {"history": ["i12", "i7"], "source_history": ["b3"]}     params: {"k": 10}
and gets back, best first, never an item of either list:
    {"item_ids": ["i9", ...], "scores": [6.4, ...],
     "reason_item_ids": [["i7", "i12"], ...], "reason_scores": [[0.83, 0.21], ...]}
reason_item_ids[j] are the reasons for item_ids[j]: up to N_REASONS items of the history the model
read (for a model reading the source domain, the source-domain items) that point to it most, best
first, and reason_scores[j] their evidence, how much that item alone raises the model's score of
item_ids[j] (`models/explain.py`). A list is shorter, or empty, when fewer items point to it (always
empty for popularity, whose scores ignore the history).

The registered model is logged as code (`models/serving_code.py`, MLflow's "models from code"): loading
it runs that file and reads the model file with torch.load(weights_only=True); nothing is unpickled.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

from models.base import Recommender
from models.data import left_pad
from models.explain import N_REASONS, Evidence, evidence_for, explain
from models.kinds import load_model

DEFAULT_K = 10
MAX_ROWS = 10_000  # rows per request: bounds the memory of one scoring call
BATCH_SIZE = 256  # rows scored at once ([B, n_items] floats)
MAX_NAMED_UNKNOWN = 5  # unknown ids quoted in an error message
MAX_QUOTED = 40  # characters of anything sent that an error message quotes back
MAX_REQUEST_BYTES = 1_000_000  # item id bytes per request, unless the package says (registry.max_request_bytes)

# What the model files hold; `package_model` in tasks/ops/registry.py writes them.
MODEL_ARTIFACT, ITEMS_ARTIFACT, META_ARTIFACT = "model", "items", "meta"


class InvalidRequest(ValueError):
    """A request the recommender cannot answer; the message says what was wrong and what is allowed."""


@dataclass(frozen=True)
class Catalogue:
    """The item ids of a model's index: item_ids[i - 1] has item_idx i (0 is padding)."""

    item_ids: list[str]
    roles: list[str]  # each item's role: source, target, other (or all without an item partition)

    def index(self) -> dict[str, int]:
        """{item_id: item_idx}."""
        return {item_id: idx for idx, item_id in enumerate(self.item_ids, start=1)}

    @property
    def n_items(self) -> int:
        """Catalogue size counting the padding index 0, as models count it."""
        return len(self.item_ids) + 1


def read_catalogue(path: Path) -> Catalogue:
    """The catalogue written by `tasks.ops.registry.package_model`: {"item_idx": [...], "item_id": [...], "role": [...]}."""
    columns = json.loads(Path(path).read_text())
    order = np.argsort(columns["item_idx"])
    idx = np.asarray(columns["item_idx"])[order]
    if not np.array_equal(idx, np.arange(1, len(idx) + 1)):
        raise ValueError(f"{path}: item_idx must run 1..{len(idx)} without gaps")
    roles = columns.get("role") or ["all"] * len(idx)
    return Catalogue([str(columns["item_id"][i]) for i in order], [str(roles[i]) for i in order])


def check_k(k: Any, rankable: int) -> int:
    """k as an int in 1..rankable (the catalogue without padding), else InvalidRequest."""
    if k is None:
        return min(DEFAULT_K, rankable)
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        if isinstance(k, (float, np.floating)) and float(k).is_integer():
            k = int(k)
        else:
            raise InvalidRequest(f"params.k must be an integer in 1..{rankable}, got {k!r}")
    if not 1 <= int(k) <= rankable:
        raise InvalidRequest(f"params.k must be in 1..{rankable} (the catalogue's rankable items), got {k}")
    return int(k)


def quoted(value: Any) -> str:
    """repr(value), cut to MAX_QUOTED characters: an error never echoes a huge request back."""
    text = repr(value)
    return text if len(text) <= MAX_QUOTED else f"{text[:MAX_QUOTED]}... ({len(text)} characters)"


def request_bytes(frame: pd.DataFrame) -> int:
    """UTF-8 bytes of the item ids (or of whatever else was sent) in the history columns of every row."""
    total = 0
    for column in ("history", "source_history"):
        if column in frame.columns:
            for cell in frame[column]:
                parts = cell if isinstance(cell, (list, tuple, np.ndarray)) else [cell]
                total += sum(len(str(part).encode("utf-8", "surrogatepass")) for part in parts)
    return total


def check_request_size(frame: pd.DataFrame, max_bytes: int) -> None:
    if (size := request_bytes(frame)) > max_bytes:
        raise InvalidRequest(f"request too large: {size} bytes of item ids; at most {max_bytes} per request "
                             "(registry.max_request_bytes when the model was registered): split it")


def check_rows(frame: pd.DataFrame, max_rows: int = MAX_ROWS) -> None:
    """InvalidRequest unless the frame has 1..max_rows rows and a `history` column."""
    if "history" not in frame.columns:
        raise InvalidRequest(f"input needs a 'history' column (list of item ids, most recent last); "
                             f"got columns {list(frame.columns)}")
    if len(frame) == 0:
        raise InvalidRequest("input has no rows")
    if len(frame) > max_rows:
        raise InvalidRequest(f"too many rows: {len(frame)}; at most {max_rows} per request")


def as_id_list(value: Any, column: str, row: int, optional: bool = False) -> list[str]:
    """A cell as a list of item id strings; None/NaN only when optional (-> []), else InvalidRequest."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if optional:
            return []
        raise InvalidRequest(f"row {row}: '{column}' is missing; expected a list of item id strings")
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray)):
        raise InvalidRequest(f"row {row}: '{column}' must be a list of item id strings, got {type(value).__name__} "
                             f"{quoted(value)}")
    items = list(value)
    wrong = [item for item in items if not isinstance(item, str)]
    if wrong:
        raise InvalidRequest(f"row {row}: '{column}' must hold item id strings, got {type(wrong[0]).__name__} "
                             f"{quoted(wrong[0])} (write ids as JSON strings, e.g. \"1234\")")
    return items


def check_known(ids: Sequence[str], index: Mapping[str, int], row: int) -> None:
    """InvalidRequest naming up to MAX_NAMED_UNKNOWN ids missing from the catalogue, and how many."""
    unknown = list(dict.fromkeys(item for item in ids if item not in index))
    if unknown:
        named = ", ".join(quoted(item) for item in unknown[:MAX_NAMED_UNKNOWN])
        more = f" (and {len(unknown) - MAX_NAMED_UNKNOWN} more)" if len(unknown) > MAX_NAMED_UNKNOWN else ""
        raise InvalidRequest(f"row {row}: {len(unknown)} unknown item id(s), not in the model's catalogue: "
                             f"{named}{more}")


def model_sequence(history: Sequence[str], source_history: Sequence[str], reads: str,
                   roles: Mapping[str, str]) -> list[str]:
    """The ids the model reads, most recent last: a cross-domain model reads only its own domain's items.

    reads 'all': source_history then history. 'source': source_history (history when none is given),
    source-domain items only. 'target': history, target-domain items only. `roles` maps id -> role.
    """
    if reads == "all":
        return [*source_history, *history]
    chosen = (source_history or history) if reads == "source" else history
    return [item for item in chosen if roles[item] == reads]


def encode_requests(frame: pd.DataFrame, catalogue: Catalogue, reads: str, max_rows: int = MAX_ROWS,
                    max_bytes: int = MAX_REQUEST_BYTES) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(item_idx the model reads [per row], item_idx seen by the user [per row]), validated; else InvalidRequest."""
    check_rows(frame, max_rows)
    check_request_size(frame, max_bytes)
    index = catalogue.index()
    roles = dict(zip(catalogue.item_ids, catalogue.roles))
    has_source = "source_history" in frame.columns
    read, seen = [], []
    for row, (history_cell, source_cell) in enumerate(
        zip(frame["history"], frame["source_history"] if has_source else [None] * len(frame))
    ):
        history = as_id_list(history_cell, "history", row)
        source_history = as_id_list(source_cell, "source_history", row, optional=True)
        check_known([*source_history, *history], index, row)
        sequence = model_sequence(history, source_history, reads, roles)
        if not sequence:
            what = {"all": "items", "source": "source-domain items", "target": "target-domain items"}[reads]
            where = "'source_history' (or 'history')" if reads == "source" else "'history'"
            raise InvalidRequest(f"row {row}: empty history: this model reads {what} and {where} has none")
        read.append(np.array([index[item] for item in sequence], dtype=np.int64))
        seen.append(np.array([index[item] for item in [*source_history, *history]], dtype=np.int64))
    return read, seen


@dataclass(frozen=True)
class Ranked:
    """One request row's answer in item_idx: top items best first and the reasons for each."""

    items: np.ndarray  # [<=k] item_idx
    scores: np.ndarray  # [<=k]
    reason_items: list[np.ndarray]  # per item: [<=N_REASONS] item_idx of history items, best first
    reason_scores: list[np.ndarray]  # per item: their evidence


def top_k(model: Recommender, read: list[np.ndarray], seen: list[np.ndarray], k: int, max_seq_len: int,
          batch_size: int = BATCH_SIZE, evidence: Evidence | None = None,
          n_reasons: int = N_REASONS) -> list[Ranked]:
    """Per row, its top k (never padding or a seen item) with reasons from the history it read.

    A row with fewer than k unseen items gets a shorter list. evidence: the model's (`evidence_for`),
    built here when not given.
    """
    evidence = evidence if evidence is not None else evidence_for(model)
    results = []
    with torch.inference_mode():
        for start in range(0, len(read), batch_size):
            history = left_pad(read[start:start + batch_size], max_seq_len)  # [B, T]
            scores = model.score_all(history).float()  # [B, n_items]
            history = history.to(scores.device)
            scores[:, 0] = float("-inf")
            chunk = seen[start:start + batch_size]
            rows = torch.as_tensor(np.repeat(np.arange(len(chunk)), [len(s) for s in chunk]))
            scores[rows, torch.as_tensor(np.concatenate(chunk))] = float("-inf")
            ranked = scores.topk(min(k, scores.shape[1]), dim=1)  # [B, K]
            reasons = explain(evidence, history, ranked.indices, n_reasons)  # [B, K, R]
            for values, items, why, how in zip(ranked.values.numpy(), ranked.indices.numpy(),
                                               reasons.items.numpy(), reasons.scores.numpy()):
                finite = np.isfinite(values)
                results.append(Ranked(items[finite], values[finite], [r[r > 0] for r in why[finite]],
                                      [s[r > 0] for r, s in zip(why[finite], how[finite])]))
    return results


def recommend(model: Recommender, catalogue: Catalogue, frame: pd.DataFrame, k: int, reads: str,
              max_seq_len: int, max_rows: int = MAX_ROWS, evidence: Evidence | None = None,
              max_bytes: int = MAX_REQUEST_BYTES) -> pd.DataFrame:
    """One row per request row: item_ids (list[str]) and scores (list[float]) of its top k, and per item
    reason_item_ids (list[list[str]]) and reason_scores (list[list[float]]); else InvalidRequest, also
    when a row's history has seen every item the model can recommend."""
    k = check_k(k, catalogue.n_items - 1)
    read, seen = encode_requests(frame, catalogue, reads, max_rows, max_bytes)
    ids = np.asarray(catalogue.item_ids, dtype=object)
    ranked = top_k(model, read, seen, k, max_seq_len, evidence=evidence)
    for row, answer in enumerate(ranked):
        if len(answer.items) == 0:
            raise InvalidRequest(f"row {row}: nothing left to recommend: the history has seen every item this "
                                 f"model can recommend ({len(np.unique(seen[row]))} distinct items seen)")
    return pd.DataFrame({  # item_idx starts at 1
        "item_ids": [ids[row.items - 1].tolist() for row in ranked],
        "scores": [row.scores.astype(float).tolist() for row in ranked],
        "reason_item_ids": [[ids[why - 1].tolist() for why in row.reason_items] for row in ranked],
        "reason_scores": [[how.astype(float).tolist() for how in row.reason_scores] for row in ranked],
    })


# The request shape, recorded in the MLmodel file's metadata (see `signature` for why it is not a schema).
INPUT_DESCRIPTION = {
    "history": "list of item id strings, most recent last (required)",
    "source_history": "list of the user's source-domain item id strings (optional; read first, or alone by "
                      "models that read the source domain)",
}


def signature(default_k: int = DEFAULT_K) -> ModelSignature:
    """Params k (so that params reach predict) and the outputs (item_ids, scores, and their reasons); no input schema.

    MLflow would enforce an input schema before predict, with messages such as "Can not safely
    convert int64 to <U0"; our own validation names the row, column and ids instead.
    """
    return ModelSignature(
        outputs=Schema([ColSpec(Array(DataType.string), "item_ids"), ColSpec(Array(DataType.double), "scores"),
                        ColSpec(Array(Array(DataType.string)), "reason_item_ids"),
                        ColSpec(Array(Array(DataType.double)), "reason_scores")]),
        params=ParamSchema([ParamSpec("k", DataType.long, default_k)]),
    )


def as_frame(model_input: Any) -> pd.DataFrame:
    """The request as a DataFrame: `dataframe_*` payloads arrive as one, `inputs` as a list of records or a
    dict of columns."""
    if isinstance(model_input, pd.DataFrame):
        return model_input
    try:
        if isinstance(model_input, dict):  # columnar `inputs`: one sequence per column
            return pd.DataFrame({name: list(column) for name, column in model_input.items()})
        if isinstance(model_input, list):  # `inputs` as records
            return pd.DataFrame(model_input)
    except (TypeError, ValueError) as error:
        raise InvalidRequest(f"input must have one value per row in each column: {error}") from None
    raise InvalidRequest(f"input must be records or columns with a 'history' list per row; "
                         f"got {type(model_input).__name__}")


class TopKRecommender(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc over a saved recommender: item-id histories in, top-K unseen item ids, scores and reasons out.

    Artifacts: `model` (a file written by `model.save`), `items` (catalogue JSON, see `read_catalogue`),
    `meta` (JSON: name, kind, reads, max_seq_len, default_k).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.meta = json.loads(Path(context.artifacts[META_ARTIFACT]).read_text())
        self.model = load_model(Path(context.artifacts[MODEL_ARTIFACT]))
        self.catalogue = read_catalogue(Path(context.artifacts[ITEMS_ARTIFACT]))
        if self.catalogue.n_items != self.model.n_items:
            raise ValueError(f"items artifact has {self.catalogue.n_items - 1} items, the model "
                             f"{self.model.n_items - 1}: they come from different data")
        # A neural model's own window wins: its position embeddings are sized for it.
        self.max_seq_len = int(getattr(self.model, "max_seq_len", None) or self.meta.get("max_seq_len") or 50)
        self.evidence = evidence_for(self.model)  # keeps its per-item tables between requests

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Top-k unseen items of each row's history; INVALID_PARAMETER_VALUE (HTTP 400) on a bad request."""
        k = (params or {}).get("k", self.meta.get("default_k", DEFAULT_K))
        try:
            return recommend(self.model, self.catalogue, as_frame(model_input), k, self.meta.get("reads", "all"),
                             self.max_seq_len, evidence=self.evidence,
                             max_bytes=int(self.meta.get("max_request_bytes", MAX_REQUEST_BYTES)))
        except InvalidRequest as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None
