"""Serving: a real tiny GRU packaged, logged (as code, no pickle), registered and aliased in a temporary
MLflow store, then answered through models:/<name>@champion: top-K excludes seen items, scores fall,
k is respected, every item carries reasons from the request's history, and each bad request raises
INVALID_PARAMETER_VALUE (HTTP 400 when served) naming what was wrong.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from conf.schema import SyntheticConfig, TrainConfig
from models.data import SequenceData
from models.explain import N_REASONS
from models.kinds import build_model
from models.serving import (MAX_ROWS, Catalogue, InvalidRequest, check_k, encode_requests, model_sequence,
                            recommend)
from tasks.ops import tracking
from tasks.io import TableRef, write_parquet
from tasks.data.preprocessing import PreparedData
from tasks.ops.registry import (PublishedModel, RegistryChange, champion_version, download_champion, fetch_champion,
                            load_champion_pyfunc, log_recommender, package_model, read_package, register, set_alias,
                            undo_change)
from tasks.data.synthetic import generate_shop
from tasks.modelling.training import TrainedModel

NAME = "itx-test-serving"
MAX_SEQ_LEN = 10


def tiny_catalogue_and_data() -> tuple[pl.DataFrame, SequenceData]:
    """Items (item_idx from 1, item_id, domain, role) and leave-one-out sequences of a small synthetic shop."""
    shop = generate_shop(SyntheticConfig(n_users=80, n_items=40, mean_events_per_user=10), seed=1)
    items = shop.items.select("item_id").with_row_index("item_idx", offset=1).with_columns(
        pl.col("item_idx").cast(pl.Int32), pl.lit("books").alias("domain"), pl.lit("all").alias("role"))
    index = dict(zip(items["item_id"].to_list(), items["item_idx"].to_list()))
    sequences = (shop.interactions.sort("user_id", "timestamp")
                 .unique(["user_id", "item_id"], keep="first", maintain_order=True)
                 .group_by("user_id", maintain_order=True).agg(pl.col("item_id")))
    histories = [np.array([index[i] for i in seq]) for seq in sequences["item_id"].to_list()]
    histories = [h for h in histories if len(h) >= 4]
    data = SequenceData(items.height + 1, [h[:-2] for h in histories], [h[-2:-1] for h in histories],
                        [h[-1:] for h in histories])
    return items, data


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A registered, champion-aliased tiny GRU in a sqlite MLflow store; the global URI points at it."""
    root = tmp_path_factory.mktemp("serving")
    items, data = tiny_catalogue_and_data()
    model = build_model("rnn", data.n_items, {"embedding_dim": 8, "hidden_dim": 16, "max_seq_len": MAX_SEQ_LEN})
    model.fit(data, TrainConfig(max_epochs=1, batch_size=64, progress_bar=False, accelerator="cpu"), seed=0,
              checkpoint_dir=root / "checkpoints")
    model.save(root / "rnn.pt")
    dummy = TableRef(str(root / "unused"), "0")
    prepared = PreparedData(events=dummy, sequences=dummy, users=dummy,
                            items=write_parquet(items, root / "items.parquet"), n_users=len(data.train),
                            n_items=data.n_items, n_events=0, dropped_events=0)
    trained = TrainedModel(name="gru", kind="rnn", model_file=TableRef(str(root / "rnn.pt"), "f"), epochs=1,
                           best_valid_ndcg=None, seconds=0.0, training_run_id=None)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_id = tracking.start_run(uri, "itx-serving-test", "pipeline", {}, {})
    artifacts = package_model(trained, prepared, MAX_SEQ_LEN, root / "package")
    model_uri = log_recommender(uri, run_id, artifacts)
    assert champion_version(uri, NAME, "champion") is None  # no registered model yet
    version = register(uri, model_uri, NAME, {"model": "gru"})
    assert champion_version(uri, NAME, "champion") is None  # registered, no alias yet
    set_alias(uri, NAME, "champion", version)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
        yield {"uri": uri, "root": root, "version": version, "pyfunc": pyfunc, "items": items,
               "ids": items["item_id"].to_list(), "run_id": run_id}
    finally:
        mlflow.set_tracking_uri(previous)


def predict(store: dict, rows: list[dict], **params) -> pd.DataFrame:
    return store["pyfunc"].predict(pd.DataFrame(rows), params=params or None)


def test_champion_answers_top_k_unseen_items_best_first(store):
    ids = store["ids"]
    history = [ids[3], ids[7], ids[1]]
    result = predict(store, [{"history": history}, {"history": [ids[0]]}], k=5)
    assert list(result.columns) == ["item_ids", "scores", "reason_item_ids", "reason_scores"] and len(result) == 2
    for row, seen in zip(result.itertuples(), [history, [ids[0]]]):
        assert len(row.item_ids) == 5 and len(set(row.item_ids)) == 5
        assert not set(row.item_ids) & set(seen)
        assert set(row.item_ids) <= set(ids)
        assert list(row.scores) == sorted(row.scores, reverse=True)
        assert all(np.isfinite(row.scores))
        assert len(row.reason_item_ids) == len(row.reason_scores) == 5  # one list per recommended item
        for reasons, evidence in zip(row.reason_item_ids, row.reason_scores):
            assert set(reasons) <= set(seen) and len(set(reasons)) == len(reasons) <= N_REASONS
            assert len(evidence) == len(reasons) and all(e > 0 for e in evidence)
            assert list(evidence) == sorted(evidence, reverse=True)
    assert any(row for row in result.reason_item_ids[0]), "a trained GRU explains at least one item"


def test_the_logged_pyfunc_is_code_not_a_pickle(store, tmp_path):
    root = download_champion(store["uri"], NAME, "champion", tmp_path / "champion")
    files = {path.name for path in root.rglob("*")}
    assert "serving_code.py" in files and not [name for name in files if name.endswith((".pkl", ".pickle"))]
    pyfunc_flavor = yaml.safe_load((root / "MLmodel").read_text())["flavors"]["python_function"]
    assert pyfunc_flavor["model_code_path"].endswith("serving_code.py") and "python_model" not in pyfunc_flavor


def test_default_k_is_ten_and_order_of_history_matters_to_the_gru(store):
    ids = store["ids"]
    forward = predict(store, [{"history": ids[:6]}])
    backward = predict(store, [{"history": ids[:6][::-1]}])
    assert len(forward.item_ids[0]) == 10
    assert forward.scores[0] != backward.scores[0]  # the most recent item is last, and it counts


def test_history_longer_than_the_window_and_near_full_catalogue(store):
    ids = store["ids"]
    result = predict(store, [{"history": ids[:-2]}], k=len(ids) - 1)
    assert sorted(result.item_ids[0]) == sorted(ids[-2:])  # only two unseen items remain: a shorter list


@pytest.mark.parametrize("rows, params, words", [
    ([{"history": ["no-such-item", "nor-this"]}], {}, ["2 unknown item id", "'no-such-item'"]),
    ([{"history": []}], {}, ["row 0", "empty history"]),
    ([{"history": ["ITEM0"]}], {"k": 0}, ["params.k", "1..40"]),
    ([{"history": ["ITEM0"]}], {"k": 10_000}, ["params.k", "1..40", "10000"]),
])
def test_bad_requests_raise_invalid_parameter_value_naming_the_problem(store, rows, params, words):
    rows = [{"history": [store["ids"][0] if i == "ITEM0" else i for i in row["history"]]} for row in rows]
    with pytest.raises(MlflowException) as raised:
        predict(store, rows, **params)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    for word in words:
        assert word in raised.value.message


def test_missing_history_column_is_rejected(store):
    with pytest.raises(MlflowException) as raised:
        store["pyfunc"].predict(pd.DataFrame({"items": [["a"]]}))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "history" in raised.value.message


def test_non_string_ids_are_rejected(store):
    with pytest.raises(MlflowException) as raised:
        predict(store, [{"history": [1, 2]}])
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "history" in raised.value.message


def test_unknown_ids_are_named_up_to_five_and_counted():
    catalogue = Catalogue(["a", "b"], ["all", "all"])
    frame = pd.DataFrame({"history": [["a", *[f"x{i}" for i in range(7)]]]})
    with pytest.raises(InvalidRequest, match=r"7 unknown item id.*'x0', 'x1', 'x2', 'x3', 'x4' \(and 2 more\)"):
        encode_requests(frame, catalogue, "all")


@pytest.mark.parametrize("k", [0, -1, 41, 2.5, "3", True])
def test_check_k_rejects_out_of_range_and_non_integers(k):
    with pytest.raises(InvalidRequest, match=r"1\.\.40"):
        check_k(k, 40)


def test_check_k_accepts_integers_and_defaults():
    assert check_k(np.int64(3), 40) == 3 and check_k(None, 40) == 10 and check_k(None, 4) == 4


def test_too_many_rows_states_the_limit():
    frame = pd.DataFrame({"history": [["a"]] * 3})
    with pytest.raises(InvalidRequest, match="at most 2 per request"):
        encode_requests(frame, Catalogue(["a"], ["all"]), "all", max_rows=2)
    assert MAX_ROWS == 10_000


def test_a_history_that_is_a_string_is_rejected():
    with pytest.raises(InvalidRequest, match="must be a list of item id strings"):
        encode_requests(pd.DataFrame({"history": ["a"]}), Catalogue(["a"], ["all"]), "all")


def test_model_sequence_reads_its_own_domain_and_sees_everything():
    roles = {"s1": "source", "s2": "source", "t1": "target", "t2": "target"}
    assert model_sequence(["t1", "t2"], ["s1"], "all", roles) == ["s1", "t1", "t2"]
    assert model_sequence(["t1", "s2"], ["s1"], "source", roles) == ["s1"]
    assert model_sequence(["t1", "s2"], [], "source", roles) == ["s2"]  # no source_history: history's source items
    assert model_sequence(["t1", "s2", "t2"], ["s1"], "target", roles) == ["t1", "t2"]
    catalogue = Catalogue(["s1", "s2", "t1", "t2"], ["source", "source", "target", "target"])
    read, seen = encode_requests(pd.DataFrame({"history": [["t1"]], "source_history": [["s1"]]}), catalogue, "source")
    assert read[0].tolist() == [1] and sorted(seen[0].tolist()) == [1, 3]
    with pytest.raises(InvalidRequest, match="source-domain items"):
        encode_requests(pd.DataFrame({"history": [["t1"]]}), catalogue, "source")


def test_recommend_never_returns_seen_items_of_the_source_history():
    class Constant:  # scores item i by i: the best items are the last ones
        n_items = 5

        def score_all(self, history):
            return torch.arange(5.0).expand(history.shape[0], -1).clone()

    catalogue = Catalogue(["a", "b", "c", "d"], ["all"] * 4)
    frame = pd.DataFrame({"history": [["a"]], "source_history": [["d"]]})
    result = recommend(Constant(), catalogue, frame, k=2, reads="all", max_seq_len=5)
    assert result.item_ids[0] == ["c", "b"] and result.scores[0] == [3.0, 2.0]
    assert result.reason_item_ids[0] == [[], []]  # scores that ignore the history have no reasons


def test_downloaded_champion_holds_model_file_catalogue_and_meta(store, tmp_path):
    # Registry helpers use their tracking_uri argument only, never the process-wide URI (worker threads).
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    try:
        root = download_champion(store["uri"], NAME, "champion", tmp_path / "champion")
    finally:
        mlflow.set_tracking_uri(store["uri"])
    package = read_package(root)
    assert package.model_file.is_file()
    assert package.items["item_id"].to_list() == store["ids"]
    assert package.meta["kind"] == "rnn" and package.meta["max_seq_len"] == MAX_SEQ_LEN
    assert str(champion_version(store["uri"], NAME, "champion").version) == store["version"]
    assert champion_version(store["uri"], "no-such-model", "champion") is None
    assert fetch_champion.fn(store["uri"], NAME, "champion", tmp_path / "task").meta == package.meta
    assert fetch_champion.fn(store["uri"], "no-such-model", "champion", tmp_path / "none") is None
    assert download_champion(store["uri"], NAME, "challenger", tmp_path / "none") is None
    loaded = load_champion_pyfunc(store["uri"], NAME, "champion", tmp_path / "again")
    ids = store["ids"]
    assert loaded.predict(pd.DataFrame({"history": [ids[:3]]}), params={"k": 3}).item_ids[0] == \
        predict(store, [{"history": ids[:3]}], k=3).item_ids[0]


def test_second_registration_from_a_worker_thread_is_a_new_version_and_the_alias_moves(store):
    uri = store["uri"]
    artifacts = {name: str(store["root"] / "package" / file)
                 for name, file in (("model", "model.pt"), ("items", "items.json"), ("meta", "meta.json"))}
    with ThreadPoolExecutor(1) as worker:  # as Prefect runs tasks: in a worker thread, no active run
        version = worker.submit(lambda: register(uri, log_recommender(uri, store["run_id"], artifacts), NAME, {}))
        version = version.result()
    assert int(version) == int(store["version"]) + 1
    set_alias(uri, NAME, "champion", version)
    assert str(champion_version(uri, NAME, "champion").version) == version
    set_alias(uri, NAME, "champion", store["version"])  # restore for other tests


def test_every_payload_form_becomes_the_same_frame():
    from models.serving import as_frame

    records = [{"history": ["a", "b"]}, {"history": ["c"]}]
    expected = pd.DataFrame(records)
    assert as_frame(expected) is expected
    assert as_frame(records).equals(expected)  # `inputs` as records
    assert as_frame({"history": [["a", "b"], ["c"]]}).equals(expected)  # `inputs` as columns
    with pytest.raises(InvalidRequest, match="got str"):
        as_frame("a,b")


def test_a_request_over_the_byte_limit_is_refused_before_scoring_quoting_nothing_of_it(store):
    huge_id = "x" * 1_100_000  # one 1.1 MB id: over the packaged default of 1,000,000 bytes
    with pytest.raises(MlflowException) as raised:
        predict(store, [{"history": [store["ids"][0], huge_id]}])
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "request too large: 1100" in raised.value.message and "at most 1000000" in raised.value.message
    assert len(raised.value.message) < 300


def test_the_byte_limit_comes_from_the_package_and_counts_every_row():
    frame = pd.DataFrame({"history": [["a" * 600]] * 2})  # 1,200 bytes in all
    catalogue = Catalogue(["a" * 600], ["all"])
    assert len(encode_requests(frame, catalogue, "all", max_bytes=1_200)[0]) == 2
    with pytest.raises(InvalidRequest, match="1200 bytes of item ids; at most 1199"):
        encode_requests(frame, catalogue, "all", max_bytes=1_199)


def test_errors_quote_at_most_a_short_prefix_of_what_was_sent():
    catalogue = Catalogue(["a"], ["all"])
    for history in ([f"unknown-{'y' * 5000}"], [5 * 10 ** 4000], "z" * 5000):
        with pytest.raises(InvalidRequest) as raised:
            encode_requests(pd.DataFrame({"history": [history]}), catalogue, "all")
        assert len(str(raised.value)) < 300, str(raised.value)[:400]


def test_a_history_that_has_seen_every_item_is_answered_400_with_the_reason(store):
    with pytest.raises(MlflowException) as raised:
        predict(store, [{"history": store["ids"]}])
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "row 0: nothing left to recommend" in raised.value.message
    assert f"{len(store['ids'])} distinct items seen" in raised.value.message


def test_undoing_a_registration_restores_the_alias_and_deletes_the_version(store):
    """What a failed run does to the registry (tasks.ops.registry.undo_change), in a registered model of its own."""
    uri, name = store["uri"], "itx-test-undo"
    artifacts = {name_: str(store["root"] / "package" / file)
                 for name_, file in (("model", "model.pt"), ("items", "items.json"), ("meta", "meta.json"))}

    def register_and_promote(previous: str | None) -> RegistryChange:
        version = register(uri, log_recommender(uri, store["run_id"], artifacts), name, {})
        change = RegistryChange(PublishedModel(name, version, ""), "champion", previous)
        set_alias(uri, name, "champion", version)
        return change

    first = register_and_promote(previous=None)
    undo_change(uri, first)  # the first run of a model: no champion before it, none after
    assert champion_version(uri, name, "champion") is None
    assert MlflowClient(uri).search_model_versions(f"name = '{name}'") == []

    kept = register_and_promote(previous=None)
    failed = register_and_promote(previous=kept.published.version)
    undo_change(uri, failed)
    assert str(champion_version(uri, name, "champion").version) == kept.published.version
    assert [str(v.version) for v in MlflowClient(uri).search_model_versions(f"name = '{name}'")] == [
        kept.published.version]
