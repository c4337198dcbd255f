"""Cold-start mapping models (EMCDR, PTUPCDR): they learn only from overlap users, score the target
domain from source items alone, carry a planted source -> target link to held-out cold users, and
save/load faithfully.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conf.schema import TrainConfig
from models.data import SequenceData, left_pad
from models.mapping import EMCDRRecommender, MappingRecommender, PTUPCDRRecommender
from models.transfer_data import SOURCE, TARGET, TransferViews, item_domain_views

N_ITEMS = 41  # source items 1..20, target items 21..40, 0 is padding
CLUSTER = 4  # source items 1+4c..4+4c go with target items 21+4c..24+4c
ITEM_ROLE = np.array([0] + [SOURCE] * 20 + [TARGET] * 20, dtype=np.int8)
MAX_SEQ_LEN = 10
EXTRACTOR = {"kind": "rnn", "embedding_dim": 8, "hidden_dim": 16, "dropout": 0.0, "learning_rate": 3e-2,
             "max_seq_len": MAX_SEQ_LEN}
SMALL_EXTRACTORS = [
    EXTRACTOR,
    {"kind": "cnn", "embedding_dim": 8, "window": 3, "horizontal_filters": 4, "vertical_filters": 2,
     "max_seq_len": MAX_SEQ_LEN},
    {"kind": "sasrec", "embedding_dim": 8, "num_blocks": 1, "max_seq_len": MAX_SEQ_LEN},
]
TRAIN = TrainConfig(max_epochs=3, batch_size=32, progress_bar=False, accelerator="cpu")
MAPPING_CLASSES = [EMCDRRecommender, PTUPCDRRecommender]


def planted_data(n_users: int = 200, seed: int = 0) -> SequenceData:
    """Each user likes one cluster: 6 of its source items and 4 of the matching target items,
    interleaved, then a valid item of either domain and a test item in the target domain."""
    rng = np.random.default_rng(seed)
    train, valid, test = [], [], []
    for _ in range(n_users):
        first = 1 + CLUSTER * rng.integers(20 // CLUSTER)
        source = first + rng.integers(CLUSTER, size=6)
        target = first + 20 + rng.integers(CLUSTER, size=4)
        train.append(rng.permutation(np.concatenate([source, target])))
        valid.append(np.array([first + 20 * rng.integers(2) + rng.integers(CLUSTER)]))
        test.append(np.array([first + 20 + rng.integers(CLUSTER)]))
    return SequenceData(N_ITEMS, train, valid, test)


def small_model(cls: type[MappingRecommender], extractor: dict = EXTRACTOR) -> MappingRecommender:
    torch.manual_seed(0)
    return cls(n_items=N_ITEMS, extractor=extractor, mapping_hidden=32, learning_rate=1e-2, max_epochs=30,
               patience=5)


@pytest.fixture(scope="module")
def views() -> TransferViews:
    return item_domain_views(planted_data(), ITEM_ROLE, fraction=1.0, cold_fraction=0.2, seed=0)


@pytest.fixture(scope="module", params=MAPPING_CLASSES, ids=lambda cls: cls.kind)
def fitted(request, views, tmp_path_factory) -> MappingRecommender:
    model = small_model(request.param)
    model.fit_views(views, TRAIN, seed=0, checkpoint_dir=tmp_path_factory.mktemp(request.param.kind))
    return model


def cold_histories(views: TransferViews) -> torch.Tensor:
    return left_pad([views.cold_evaluation.context[u] for u in views.cold_users], MAX_SEQ_LEN)  # [B, T]


def test_mapping_learns_only_from_overlap_users_never_cold_ones(fitted, views):
    overlap = {u for u in range(len(views.source.train))
               if len(views.source.train[u]) and len(views.target.train[u])}
    assert len(views.cold_users) > 0 and len(fitted.fitted_users) > 0
    assert set(fitted.fitted_users.tolist()) <= overlap
    assert not set(fitted.fitted_users.tolist()) & set(views.cold_users.tolist())
    assert not any(p.requires_grad for p in fitted.source_extractor.parameters())
    assert not any(p.requires_grad for p in fitted.target_extractor.parameters())
    assert torch.equal(fitted.item_role, torch.as_tensor(ITEM_ROLE))


def test_scores_cover_the_catalogue_and_never_padding(fitted, views):
    with torch.no_grad():
        scores = fitted.score_all(cold_histories(views))  # [B, n_items]
    assert scores.shape == (len(views.cold_users), N_ITEMS)
    assert torch.isneginf(scores[:, 0]).all()
    assert torch.isfinite(scores[:, 1:]).all()


def test_cold_users_get_their_source_clusters_target_items(fitted, views):
    with torch.no_grad():
        scores = fitted.score_all(cold_histories(views))
    scores[:, torch.as_tensor(ITEM_ROLE != TARGET)] = float("-inf")  # rank the target domain only
    top5 = scores.topk(5, dim=1).indices  # [B, 5]
    held_out = torch.as_tensor(np.array([views.cold_evaluation.test[u][0] for u in views.cold_users]))
    hit_rate = (top5 == held_out.unsqueeze(1)).any(dim=1).float().mean().item()
    assert hit_rate > 0.6  # chance: 5 of 20 target items = 0.25


def test_save_and_load_give_identical_scores(fitted, views, tmp_path):
    fitted.save(tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert payload["kind"] == fitted.kind
    hparams = {k: v for k, v in payload["hparams"].items() if k != "n_items"}
    restored = type(fitted)(n_items=payload["hparams"]["n_items"], **hparams)
    restored.load_state_dict(payload["state_dict"])
    restored.eval()
    history = cold_histories(views)
    with torch.no_grad():
        assert torch.equal(fitted.score_all(history), restored.score_all(history))


@pytest.mark.parametrize("cls", MAPPING_CLASSES)
@pytest.mark.parametrize("extractor", SMALL_EXTRACTORS, ids=lambda options: options["kind"])
def test_scores_read_source_items_only_and_stay_defined_without_them(cls, extractor):
    model = small_model(cls, extractor).eval()
    model.item_role.copy_(torch.as_tensor(ITEM_ROLE))
    mixed = torch.tensor([[0, 3, 25, 7, 30, 9], [0, 0, 0, 0, 0, 0], [21, 22, 23, 24, 25, 26]])
    source_only = torch.tensor([[0, 0, 0, 3, 7, 9], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        scores = model.score_all(mixed)
        assert torch.equal(scores, model.score_all(source_only))
    assert torch.isfinite(scores[:, 1:]).all()
    assert torch.equal(scores[1], scores[2])  # no source items: the all-padding history's scores


def test_long_histories_keep_the_most_recent_source_items():
    model = small_model(EMCDRRecommender)
    model.item_role.copy_(torch.as_tensor(ITEM_ROLE))
    history = torch.tensor([list(range(1, 16)) + [21, 22]])  # 15 source items, then 2 target items
    assert model.source_history(history).tolist() == [list(range(6, 16))]


@pytest.mark.parametrize("cls", MAPPING_CLASSES)
def test_fit_on_plain_sequences_is_refused(cls):
    with pytest.raises(TypeError, match="fit_views"):
        small_model(cls).fit(planted_data(n_users=5), TRAIN, seed=0)
