"""Incremental update parts: carrying weights to a new catalogue, the remapped champion, the gate rule,
and the event store's append (dedupe, new items/users, manifest, nothing half-written on bad input)."""
from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from conf.schema import EventLogConfig, PreprocessConfig, ScenarioConfig, SplitConfig
from models.kinds import build_model
from models.warm_start import RemappedRecommender, new_to_old_index, warm_start
from tasks.data.event_store import new_batches, read_manifest, update_store
from tasks.ops.gate import decide
from tasks.data.ingestion import RawTables
from tasks.io import TableRef, fingerprint_file
from tasks.data.prepare import prepare_data
from tasks.schemas import DataError

OLD_IDS = ["a", "b", "c", "d"]
NEW_IDS = ["b", "a", "e", "c", "f"]  # reordered, d gone, e and f new


def gru(n_items: int, seed: int):
    torch.manual_seed(seed)
    return build_model("rnn", n_items, {"embedding_dim": 8, "hidden_dim": 16, "max_seq_len": 5})


def test_new_to_old_index_maps_known_items_and_zeroes_new_ones():
    assert new_to_old_index(OLD_IDS, NEW_IDS).tolist() == [0, 2, 1, 0, 3, 0]


def test_warm_start_carries_item_rows_to_their_new_positions_and_keeps_fresh_rows_for_new_items():
    old, new = gru(len(OLD_IDS) + 1, seed=0), gru(len(NEW_IDS) + 1, seed=1)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    mapping = new_to_old_index(OLD_IDS, NEW_IDS)
    assert warm_start(new, old.state_dict(), len(OLD_IDS) + 1, mapping) == 3
    for name in ("item_embedding.weight", "output.weight", "output.bias"):
        old_rows, new_rows = old.state_dict()[name], new.state_dict()[name]
        for new_idx, old_idx in enumerate(mapping.tolist()):
            expected = old_rows[old_idx] if old_idx else fresh[name][new_idx]
            assert torch.equal(new_rows[new_idx], expected), (name, new_idx)
    for name, value in old.state_dict().items():  # the recurrent weights do not index items: copied as is
        if name.startswith("gru."):
            assert torch.equal(new.state_dict()[name], value)


def test_warm_start_rejects_a_different_architecture():
    old = gru(len(OLD_IDS) + 1, seed=0)
    torch.manual_seed(0)
    wider = build_model("rnn", len(NEW_IDS) + 1, {"embedding_dim": 8, "hidden_dim": 32, "max_seq_len": 5})
    with pytest.raises(ValueError, match="cannot map"):
        warm_start(wider, old.state_dict(), len(OLD_IDS) + 1, new_to_old_index(OLD_IDS, NEW_IDS))


def test_remapped_champion_scores_known_items_as_before_and_never_recommends_unknown_ones():
    old = gru(len(OLD_IDS) + 1, seed=0).eval()
    mapping = new_to_old_index(OLD_IDS, NEW_IDS)
    view = RemappedRecommender(old, mapping)
    history_new = torch.tensor([[0, 2, 1, 3]])  # a, b, then the new item e
    history_old = torch.tensor([[0, 1, 2, 0]])  # the same history in old ids (e unknown: padding)
    with torch.no_grad():
        scores, expected = view.score_all(history_new), old.score_all(history_old)
    assert scores.shape == (1, len(NEW_IDS) + 1)
    for new_idx, old_idx in enumerate(mapping.tolist()):
        if old_idx:
            assert scores[0, new_idx] == pytest.approx(expected[0, old_idx].item(), abs=1e-6)
        else:
            assert scores[0, new_idx] == float("-inf")


@pytest.mark.parametrize("candidate, champion, tolerance, promoted", [
    (0.30, None, 0.0, True),  # no champion yet
    (0.30, 0.30, 0.0, True),  # not worse
    (0.29, 0.30, 0.0, False),  # worse
    (0.29, 0.30, 0.02, True),  # worse, within tolerance
])
def test_gate_promotes_only_when_not_worse_than_the_champion(candidate, champion, tolerance, promoted):
    decision = decide(candidate, champion, tolerance, "test ndcg@10", users=100)
    assert decision.promoted is promoted
    assert ("worse than" in decision.reason) == (champion is not None)


def raw_tables(folder) -> RawTables:
    folder.mkdir(parents=True, exist_ok=True)
    frames = {
        "interactions": pl.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["i1", "i2", "i1"],
                                      "timestamp": [1, 2, 3], "rating": [5.0, 4.0, 3.0]}),
        "items": pl.DataFrame({"item_id": ["i1", "i2"], "title": ["one", "two"], "category": ["x", "y"],
                               "domain": ["d", "d"]}),
        "users": pl.DataFrame({"user_id": ["u1", "u2"], "gender": ["F", "M"]}),
    }
    refs = {}
    for name, frame in frames.items():
        frame.write_parquet(folder / f"{name}.parquet")
        refs[name] = TableRef(str(folder / f"{name}.parquet"), fingerprint_file(folder / f"{name}.parquet"))
    return RawTables(**refs)


def test_append_dedupes_adds_new_items_and_users_and_records_the_batch(tmp_path):
    base, store = raw_tables(tmp_path / "base"), tmp_path / "store"
    batch_file = tmp_path / "new.csv"
    batch_file.write_text("user_id,item_id,timestamp\nu1,i2,2\nu3,i9,10\nu3,i9,10\nu2,i2,11\n")
    batches = new_batches(store, EventLogConfig(interactions=str(batch_file)))
    update = update_store(store, base, batches)
    assert (update.added, update.duplicates, update.total, update.new_items, update.new_users) == (2, 2, 5, 1, 1)
    events = pl.read_parquet(store / "interactions.parquet")
    assert events.height == 5 and events["rating"].null_count() == 2  # the batch has no rating column
    assert set(pl.read_parquet(store / "items.parquet")["item_id"]) == {"i1", "i2", "i9"}
    users = pl.read_parquet(store / "users.parquet")
    assert users.filter(pl.col("user_id") == "u3")["gender"].item() is None  # unknown attribute, not invented
    manifest = read_manifest(store)
    assert [b["added"] for b in manifest["batches"]] == [2]
    # The same file again is not a new batch; a folder yields only its files not appended yet.
    assert new_batches(store, EventLogConfig(interactions=str(batch_file))) == []
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "a.csv").write_text(batch_file.read_text())
    (tmp_path / "incoming" / "b.csv").write_text("user_id,item_id,timestamp\nu1,i1,20\n")
    folder = new_batches(store, EventLogConfig(interactions=str(tmp_path / "incoming")))
    assert [b.interactions.rsplit("/", 1)[1] for b in folder] == ["b.csv"]


def test_a_bad_batch_names_the_file_and_leaves_the_store_as_it_was(tmp_path):
    base, store = raw_tables(tmp_path / "base"), tmp_path / "store"
    update_store(store, base, [])
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\nu1,i1,yesterday\n")
    with pytest.raises(DataError, match="bad.csv.*timestamp"):
        update_store(store, base, new_batches(store, EventLogConfig(interactions=str(bad))))
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before
    with pytest.raises(DataError, match="missing.csv does not exist"):
        new_batches(store, EventLogConfig(interactions=str(tmp_path / "missing.csv")))
    assert json.loads((store / "manifest.json").read_text())["batches"] == []


def test_the_store_keeps_arrival_order_so_file_ties_follow_it_after_an_append(tmp_path):
    base, store = raw_tables(tmp_path / "base"), tmp_path / "store"
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    # u1 gets three events at t=50 over two batches, arriving i9, i5 then i3 (the reverse of id order).
    first.write_text("user_id,item_id,timestamp\nu1,i9,50\nu2,i2,40\nu1,i5,50\n")
    second.write_text("user_id,item_id,timestamp\nu1,i9,50\nu1,i3,50\n")  # i9 again: a duplicate
    update_store(store, base, new_batches(store, EventLogConfig(interactions=str(first))))
    update = update_store(store, base, new_batches(store, EventLogConfig(interactions=str(second))))
    arrived = pl.read_parquet(store / "interactions.parquet").select("user_id", "item_id").rows()
    assert arrived == [("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u1", "i9"), ("u2", "i2"), ("u1", "i5"),
                       ("u1", "i3")]
    none = ScenarioConfig(partition="none", source=None, target=None)
    prepared = prepare_data(update.raw, PreprocessConfig(k_core=1), SplitConfig(), none, None, tmp_path / "cache")
    items = pl.read_parquet(prepared.items.path).sort("item_idx")["item_id"].to_list()
    row = pl.read_parquet(prepared.sequences.path).row(0, named=True)
    assert [items[i - 1] for i in row["train"] + row["valid"] + row["test"]] == ["i1", "i2", "i9", "i5", "i3"]
