"""Training as the pipeline runs it: the same data, config and seed give the same model."""
import torch

from conf.loading import load_config, preset_path
from tasks.data.ingestion import ingest_dataset
from tasks.data.prepare import prepare_data
from tasks.modelling.training import model_training, train_recommender


def test_same_seed_gives_identical_weights_whatever_the_global_random_state(tmp_path):
    config = load_config(preset_path("experiments/tiny.yaml"), ["train.max_epochs=1"])
    raw = ingest_dataset(config.data, config.seed, tmp_path)
    prepared = prepare_data(raw, config.preprocess, config.split, config.scenario, "gender", tmp_path)
    gru = next(planned for planned in config.model_plan() if planned.model.kind == "rnn")
    fingerprints = []
    for attempt, folder in enumerate(("first", "second")):
        torch.manual_seed(1000 + attempt)  # whatever ran before must not leak into the model
        trained = train_recommender(prepared, gru, config, tmp_path / folder)
        fingerprints.append(trained.model_file.fingerprint)
    assert fingerprints[0] == fingerprints[1]


def test_a_model_may_set_its_own_training_budget_and_the_others_keep_trains():
    config = load_config(preset_path("experiments/tiny.yaml"), [
        "models=[{kind: rnn, name: gru, max_minutes: 2}, {kind: cnn, name: caser}]", "train.max_minutes=5"])
    gru, caser = config.model_plan()
    assert model_training(gru, config).max_minutes == 2
    assert model_training(caser, config).max_minutes == 5
    assert model_training(gru, config).model_copy(update={"max_minutes": 5}) == config.train  # nothing else changes


def test_a_model_may_set_its_own_l2sp_and_it_never_reaches_the_constructor():
    from tasks.modelling.training import model_options

    config = load_config(preset_path("experiments/tiny.yaml"), [
        "models=[{kind: sasrec, name: anchored, l2sp: 0.5}, {kind: rnn, name: plain}]", "train.l2sp=0.1"])
    anchored, plain = config.model_plan()
    assert model_training(anchored, config).l2sp == 0.5 and model_training(plain, config).l2sp == 0.1
    assert "l2sp" not in model_options(anchored, config, None) and "max_minutes" not in model_options(plain, config, None)


def test_a_model_that_changes_only_its_target_stage_reuses_its_pre_training(tmp_path):
    config = load_config(preset_path("experiments/demo_transfer.yaml"), [
        "data.synthetic.n_users=300", "train.max_epochs=1", "train.progress_bar=false",
        "transfer.baseline=null", "models=[{kind: rnn, name: ft, train_on: source_then_target, embedding_dim: 8, hidden_dim: 8}]"])
    raw = ingest_dataset(config.data, config.seed, tmp_path)
    prepared = prepare_data(raw, config.preprocess, config.split, config.scenario, "gender", tmp_path)
    first = train_recommender(prepared, config.model_plan()[0], config, tmp_path / "cache")
    # l2sp and augment_copies act on the target stage only: the same source stage, the same pre-trained weights.
    changed = config.model_copy(update={"models": [config.models[0].model_copy(update={"l2sp": 0.1, "augment_copies": 2})]})
    second = train_recommender(prepared, changed.model_plan()[0], changed, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("pretrain-ft-*[!k]"))) == 1  # one folder (and its .lock)
    assert first.model_file.path != second.model_file.path  # but two fine-tuned models
    assert first.model_file.fingerprint != second.model_file.fingerprint
