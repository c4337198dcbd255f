"""Transfer scenarios: the views each stage learns from, pre-train -> fine-tune, and the BERT transfer model."""
import numpy as np
import pytest
import torch

from conf.schema import TrainConfig
from models.bert_transfer import BertTransferRecommender
from models.data import SequenceData
from models.extractors import GRURecommender
from models.text import TextModelError
from models.transfer_data import OTHER, SOURCE, TARGET, item_domain_views, keep_items, user_group_views
from tasks.modelling.training import fit_regime

TRAIN = TrainConfig(max_epochs=2, batch_size=32, progress_bar=False, learning_rate=0.01)


def mixed_domains(n_users: int = 60, seed: int = 0) -> tuple[SequenceData, np.ndarray]:
    """Users with sequences over items 1..20 (source domain) and 21..40 (target domain); LOO split."""
    rng = np.random.default_rng(seed)
    item_role = np.array([OTHER] + [SOURCE] * 20 + [TARGET] * 20, dtype=np.int8)
    sequences = [rng.permutation(np.arange(1, 41))[: rng.integers(6, 15)] for _ in range(n_users)]
    return SequenceData(41, [s[:-2] for s in sequences], [s[-2:-1] for s in sequences],
                        [s[-1:] for s in sequences]), item_role


def users_in(data: SequenceData) -> set[int]:
    """Positions of the real users with anything to train on or validate in a view."""
    n = len(data.test)
    return {u for u in range(n) if len(data.train[u]) or len(data.valid[u]) or len(data.context[u])}


def test_user_group_views_train_only_on_the_sampled_share_of_target_users(tiny_data):
    n = len(tiny_data.train)
    roles = np.where(np.arange(n) % 2 == 0, SOURCE, TARGET).astype(np.int8)
    views = user_group_views(tiny_data, roles, fraction=0.25, seed=3)
    targets = set(np.flatnonzero(roles == TARGET))
    assert len(views.sampled_target_users) == int(np.ceil(0.25 * len(targets)))
    assert users_in(views.target) == set(views.sampled_target_users)
    assert users_in(views.source) == set(np.flatnonzero(roles == SOURCE))
    assert users_in(views.pooled) == set(np.flatnonzero(roles == SOURCE)) | set(views.sampled_target_users)
    assert set(views.report_users) == targets  # every target user is ranked, sampled or not
    assert len(views.joint.train) > n  # target sequences repeated to balance the source
    same = user_group_views(tiny_data, roles, fraction=0.25, seed=3)
    assert np.array_equal(same.sampled_target_users, views.sampled_target_users)


def test_item_domain_views_keep_cold_users_out_of_every_training_view():
    data, item_role = mixed_domains()
    views = item_domain_views(data, item_role, fraction=0.5, cold_fraction=0.3, seed=1)
    cold = set(views.cold_users)
    assert cold, "some users should be cold"
    for view in (views.source, views.target, views.pooled, views.joint):
        assert not cold & users_in(view)
    for u in views.cold_users:  # ranked from source-domain history only, on a target-domain item
        assert (item_role[views.cold_evaluation.context[u]] == SOURCE).all()
        assert item_role[views.cold_evaluation.test[u][0]] == TARGET
    assert not cold & set(views.report_users)
    assert all((item_role[t] == SOURCE).all() for t in views.source.train)
    assert all((item_role[t] == TARGET).all() for t in views.target.train)
    sampled = set(views.sampled_target_users)
    for u, sequence in enumerate(views.pooled.train):  # unsampled users' target items stay out
        if u not in sampled:
            assert (item_role[sequence] != TARGET).all()


def test_keep_items_filters_histories_but_not_held_out_targets():
    data, item_role = mixed_domains(n_users=5)
    kept = keep_items(data, item_role == TARGET)
    assert all((item_role[t] == TARGET).all() for t in kept.train)
    assert all(np.array_equal(a, b) for a, b in zip(kept.test, data.test))


def test_fine_tuning_starts_from_the_pretrained_weights(tmp_path):
    data, item_role = mixed_domains()
    views = item_domain_views(data, item_role, fraction=1.0, cold_fraction=0.0, seed=0)
    torch.manual_seed(0)
    model = GRURecommender(41, embedding_dim=8, hidden_dim=8, max_seq_len=10, learning_rate=0.01)
    states = []
    original_fit = model.fit

    def recording_fit(view, *args, **kwargs):
        states.append({k: v.clone() for k, v in model.state_dict().items()})  # weights as this stage starts
        summary = original_fit(view, *args, **kwargs)
        states.append({k: v.clone() for k, v in model.state_dict().items()})  # weights as it ends
        return summary

    model.fit = recording_fit
    fit_regime(model, "source_then_target", None, views, TRAIN, seed=0, loggers=[], checkpoint_dir=tmp_path)
    after_source, start_of_target, after_target = states[1], states[2], states[3]
    assert all(torch.equal(after_source[k], start_of_target[k]) for k in after_source)
    assert any(not torch.equal(states[0][k], after_source[k]) for k in after_source)  # the source stage learnt
    assert any(not torch.equal(start_of_target[k], after_target[k]) for k in after_source)  # so did the target


def small_bert(n_items: int = 41, **options) -> BertTransferRecommender:
    torch.manual_seed(0)
    model = BertTransferRecommender(n_items, text_dim=16, init="scratch", num_layers=1, hidden_dim=16,
                                    num_heads=2, max_seq_len=10, **options)
    model.attach_item_text(torch.nn.functional.normalize(torch.randn(n_items, 16), dim=1))
    return model


def test_bert_transfer_is_causal_and_scores_every_item():
    model = small_bert().eval()
    history = torch.tensor([[0, 0, 3, 7, 9], [1, 2, 3, 4, 5]])
    states = model.encode(history)
    changed = history.clone()
    changed[:, -1] = 11
    assert torch.allclose(model.encode(changed)[:, :-1], states[:, :-1], atol=1e-6)  # no peeking ahead
    scores = model.score_all(history)
    assert scores.shape == (2, 41) and torch.isfinite(scores[:, 1:]).all() and (scores[:, 0] == float("-inf")).all()


def test_items_never_trained_on_are_scored_through_their_text():
    model = small_bert(use_id_embedding=False).eval()
    twin = model.item_text[5].clone()
    model.item_text[40] = twin  # item 40 shares item 5's text: it must score like item 5
    scores = model.score_all(torch.tensor([[1, 2, 3]]))
    assert torch.isclose(scores[0, 40], scores[0, 5])


def test_adaptor_finetune_freezes_the_encoder_only():
    model = small_bert(finetune="adaptor")
    model.prepare_finetune()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.adaptor.parameters()) and model.item_bias.requires_grad


def test_pretrained_init_starts_from_the_text_model_layers():
    from transformers import AutoModel

    from models.text import resolve_model_path

    model = BertTransferRecommender(41, text_dim=384, init="pretrained", num_layers=2, max_seq_len=20)
    language_model = AutoModel.from_pretrained(resolve_model_path(None), local_files_only=True)
    ours = model.encoder.encoder.layer[1].attention.self.query.weight
    theirs = language_model.encoder.layer[1].attention.self.query.weight
    assert torch.equal(ours, theirs)
    assert len(model.encoder.encoder.layer) == 2


def test_a_missing_text_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TextModelError, match=str(tmp_path / "nowhere")):
        BertTransferRecommender(41, init="pretrained", text_model_path=str(tmp_path / "nowhere"))


def test_a_fraction_sweep_pre_trains_once_and_fine_tunes_from_the_same_weights(tmp_path):
    data, item_role = mixed_domains()
    starts = []
    for fraction in (0.3, 1.0):
        views = item_domain_views(data, item_role, fraction=fraction, cold_fraction=0.0, seed=0)
        torch.manual_seed(int(fraction * 10))  # a different fresh model each time
        model = GRURecommender(41, embedding_dim=8, hidden_dim=8, max_seq_len=10, learning_rate=0.01)
        original_fit = model.fit
        calls = []

        def recording_fit(view, *args, model=model, original_fit=original_fit, calls=calls, **kwargs):
            calls.append({k: v.clone() for k, v in model.state_dict().items()})
            return original_fit(view, *args, **kwargs)

        model.fit = recording_fit
        summary = fit_regime(model, "source_then_target", None, views, TRAIN, seed=0, loggers=[],
                             checkpoint_dir=tmp_path / str(fraction), pretrain_dir=tmp_path / "pretrain")
        starts.append(calls[-1])  # the weights the target stage started from
        assert len(calls) == (2 if fraction == 0.3 else 1)  # the second sweep step loads, does not re-fit
        assert summary.epochs >= 2
    assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])


def test_the_l2sp_penalty_is_half_the_strength_times_the_squared_distance_and_pulls_back():
    torch.manual_seed(0)
    model = GRURecommender(41, embedding_dim=4, hidden_dim=4, max_seq_len=10)
    model.anchor_weights(2.0)
    assert model.anchor_penalty().item() == 0.0
    with torch.no_grad():
        model.output.bias.add_(0.5)  # 41 weights moved by 0.5
    penalty = model.anchor_penalty()
    assert penalty.item() == pytest.approx(0.5 * 2.0 * 41 * 0.25)
    penalty.backward()
    assert torch.allclose(model.output.bias.grad, torch.full((41,), 1.0))  # strength · distance, towards the anchor


def fit_with_regime(tmp_path, regime: str, l2sp: float) -> tuple[list[int], dict, dict]:
    """(training users of each stage, weights after the first stage, final weights) of one fit_regime call."""
    data, item_role = mixed_domains()
    views = user_group_views(data, np.where(np.arange(60) % 3 == 0, TARGET, SOURCE).astype(np.int8), 0.5, seed=0)
    torch.manual_seed(0)
    model = GRURecommender(41, embedding_dim=8, hidden_dim=8, max_seq_len=10, learning_rate=0.05)
    stages, first_stage = [], {}
    original_fit = model.fit

    def recording_fit(view, *args, **kwargs):
        stages.append(len(users_in(view)))
        summary = original_fit(view, *args, **kwargs)
        if len(stages) == 1:
            first_stage.update({k: v.clone() for k, v in model.state_dict().items()})
        return summary

    model.fit = recording_fit
    fit_regime(model, regime, None, views, TRAIN.model_copy(update={"l2sp": l2sp, "max_epochs": 4}), seed=0,
               loggers=[], checkpoint_dir=tmp_path)
    expected = [len(users_in(views.pooled)), len(users_in(views.target))]
    assert stages == expected, "pooled_then_target pre-trains on the pooled view, then fine-tunes on the target"
    return stages, first_stage, {k: v.clone() for k, v in model.state_dict().items()}


def test_pooled_then_target_fine_tunes_and_l2sp_keeps_the_weights_near_the_pretrained_ones(tmp_path):
    _, start, plain = fit_with_regime(tmp_path / "plain", "pooled_then_target", l2sp=0.0)
    _, anchored_start, anchored = fit_with_regime(tmp_path / "anchored", "pooled_then_target", l2sp=50.0)
    assert all(torch.equal(start[k], anchored_start[k]) for k in start)  # the same first stage

    def moved(weights: dict) -> float:
        return sum(float(((weights[k].float() - start[k].float()) ** 2).sum()) for k in start)

    assert 0 < moved(anchored) < 0.5 * moved(plain)
