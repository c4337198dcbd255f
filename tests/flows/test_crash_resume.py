"""A run killed with SIGKILL during training, run again with the same command, ends as if never killed.

Real `itx run` processes, each starting its own temporary Prefect server: one run uninterrupted;
another one SIGKILLed once the GRU has written a checkpoint after its first epoch and before its fit
ended, then started again with the very same command while the killed run's orphaned Prefect server
is still up. Like runs on one machine they share the Prefect home (database, result storage) and the
MLflow store, each with its own output root; cache keys include the output root's cache generation,
so the killed run never reuses the reference run's results.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient

from conf.loading import preset_path
from conf.schema import TrainConfig
from models.data import SequenceData
from models.kinds import build_model

ITX = str(Path(sys.executable).with_name("itx"))

# --- in process: a fit interrupted after some epochs and fitted again ----------------------------

# With a plateau schedule that decays at the first stalled epoch: its state must survive the resume too.
TRAIN = TrainConfig(max_epochs=5, patience=10, batch_size=16, progress_bar=False, accelerator="cpu",
                    lr_decay_factor=0.5, lr_decay_patience=0)


class Interrupt(pl.Callback):
    """Stops a fit with an exception as its third epoch starts (after the first two wrote their checkpoints)."""

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 2:
            raise KeyError("interrupted")


def shop_sequences() -> SequenceData:
    rng = np.random.default_rng(1)
    sequences = [rng.permutation(np.arange(1, 41))[: rng.integers(5, 14)] for _ in range(150)]
    return SequenceData(41, [s[:-2] for s in sequences], [s[-2:-1] for s in sequences], [s[-1:] for s in sequences])


def fresh_model(kind: str):
    pl.seed_everything(0, workers=True)
    options = {"rnn": {"embedding_dim": 8, "hidden_dim": 16}, "cnn": {"embedding_dim": 8, "window": 3}}[kind]
    return build_model(kind, 41, options | {"max_seq_len": 10})


@pytest.mark.parametrize("kind", ["rnn", "cnn"])
def test_a_fit_interrupted_then_fitted_again_ends_exactly_as_an_uninterrupted_one(kind, tmp_path, caplog):
    data = shop_sequences()
    straight = fresh_model(kind)
    expected = straight.fit(data, TRAIN, seed=0, checkpoint_dir=tmp_path / "straight")

    interrupted = fresh_model(kind)
    interrupted.configure_callbacks = lambda: [Interrupt()]
    with pytest.raises(KeyError, match="interrupted"):
        interrupted.fit(data, TRAIN, seed=0, checkpoint_dir=tmp_path / "resumed")
    resumed = fresh_model(kind)
    with caplog.at_level("INFO", logger="models.base"):
        summary = resumed.fit(data, TRAIN, seed=0, checkpoint_dir=tmp_path / "resumed")

    assert f"resumed from {tmp_path / 'resumed' / 'last.ckpt'}" in caplog.text
    assert (summary.epochs, summary.best_valid_ndcg) == (expected.epochs, expected.best_valid_ndcg)
    for name, weights in straight.state_dict().items():
        assert torch.equal(weights, resumed.state_dict()[name]), name
    # The learning rate decayed in the same epochs: the plateau schedule's state went through the checkpoint.
    rates = [model.trainer.optimizers[0].param_groups[0]["lr"] for model in (straight, resumed)]
    assert rates[0] == rates[1] < TRAIN.learning_rate


def test_a_finished_fit_is_not_trained_again(tmp_path, caplog):
    data = shop_sequences()
    first = fresh_model("rnn")
    done = first.fit(data, TRAIN, seed=0, checkpoint_dir=tmp_path)
    again = fresh_model("rnn")
    again.configure_callbacks = lambda: [Interrupt()]  # would raise if any epoch ran
    with caplog.at_level("INFO", logger="models.base"):
        assert again.fit(data, TRAIN, seed=0, checkpoint_dir=tmp_path) == done
    assert "fit already finished" in caplog.text
    for name, weights in first.state_dict().items():
        assert torch.equal(weights, again.state_dict()[name]), name


def test_a_different_fit_in_the_same_folder_starts_from_scratch(tmp_path, caplog):
    data = shop_sequences()
    interrupted = fresh_model("rnn")
    interrupted.configure_callbacks = lambda: [Interrupt()]
    with pytest.raises(KeyError):
        interrupted.fit(data, TRAIN, seed=0, checkpoint_dir=tmp_path)
    other = fresh_model("rnn")
    with caplog.at_level("INFO", logger="models.base"):
        summary = other.fit(data, TRAIN.model_copy(update={"max_epochs": 3}), seed=0, checkpoint_dir=tmp_path)
    assert "resumed from" not in caplog.text and summary.epochs == 3


# --- real processes: `itx run` killed with SIGKILL, then run again --------------------------------

# Long enough to kill the GRU between its first checkpoint and its end; patience high, so it runs all epochs.
SETTINGS = ["train.max_epochs=8", "train.patience=20", "registry.enabled=false",
            "models=[{kind: popularity, name: popularity}, {kind: rnn, name: gru, embedding_dim: 32, hidden_dim: 32}]"]


def itx_run_command(root: Path) -> list[str]:
    """The `itx run` command line of a run writing its folder and cache under root/out."""
    overrides = [*SETTINGS, f"tracking.tracking_uri=sqlite:///{root.parent / 'mlflow.db'}"]
    return [ITX, "run", str(preset_path("experiments/tiny.yaml")), "--output-dir", str(root / "out"),
            *[part for setting in overrides for part in ("--set", setting)]]


def itx_env(root: Path) -> dict[str, str]:
    """The environment of a run: the shared Prefect home beside root, one thread, no server or tracking URI."""
    env = {key: value for key, value in os.environ.items() if key not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    return env | {"PREFECT_HOME": str(root.parent / "prefect"), "OMP_NUM_THREADS": "1"}


def run_to_end(root: Path) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.run(itx_run_command(root), env=itx_env(root), cwd=root, capture_output=True, text=True,
                          timeout=600)


def run_folder(root: Path) -> Path:
    """The one finished run folder under root/out (the one with run.json)."""
    (folder,) = [path.parent for path in (root / "out").glob("*/run.json")]
    return folder


def kill_during_training(root: Path, timeout_s: float = 300) -> tuple[Path, int]:
    """Start the run in a session of its own and SIGKILL it once the GRU's last.ckpt exists: (that file, the
    session id). Only the run's own process is killed, as the OOM killer would: its temporary Prefect server
    lives on (see `kill_session`)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "killed.log", "w") as log:
        process = subprocess.Popen(itx_run_command(root), env=itx_env(root), cwd=root, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline and process.poll() is None:
                checkpoints = list((root / "out" / "cache").glob("train-gru-*/checkpoints/last.ckpt"))
                if checkpoints:
                    process.kill()  # SIGKILL: nothing exits politely, no handler runs
                    process.wait()
                    return checkpoints[0], process.pid
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                kill_session(process.pid)
                process.wait()
    kill_session(process.pid)
    raise AssertionError(f"the run ended (exit {process.returncode}) before the GRU wrote a checkpoint:\n"
                         + (root / "killed.log").read_text()[-3000:])


def kill_session(session: int) -> None:
    """SIGKILL what is left of a run started with start_new_session (its orphaned Prefect server)."""
    try:
        os.killpg(session, signal.SIGKILL)
    except ProcessLookupError:
        pass


def finished_states(log: str) -> dict[str, str]:
    """Prefect task name -> the state it finished in ('Completed()', 'Cached(type=COMPLETED)'), per task run."""
    states = {}
    for line in log.splitlines():
        if "Task run '" in line and "Finished in state" in line:
            run_name = line.split("Task run '")[1].split("'")[0]
            states[run_name] = line.split("Finished in state ")[1].strip()
    return states


@pytest.mark.slow
def test_a_run_killed_during_training_resumes_and_ends_with_the_uninterrupted_metrics(tmp_path):
    reference = run_to_end(tmp_path / "uninterrupted")
    assert reference.returncode == 0, reference.stderr[-3000:]

    last, session = kill_during_training(tmp_path / "killed")
    try:
        checkpoints = last.parent
        # Killed mid-fit: a checkpoint after at least one epoch, the fit not marked finished, no model saved.
        assert '"summary"' not in (checkpoints / "fit.json").read_text()
        assert not (checkpoints.parent / "model.pt").exists()
        assert not list((tmp_path / "killed" / "out").glob("*/run.json"))
        rerun = run_to_end(tmp_path / "killed")
    finally:
        kill_session(session)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert f"resumed from {last}" in log
    states = finished_states(log)
    cached = {name.rsplit("-", 1)[0] for name, state in states.items() if state.startswith("Cached")}
    assert {"ingest", "preprocess"} <= cached, states
    # The popularity model finished before the kill: its training comes from the cache; the GRU's does not.
    trains = sorted(state for name, state in states.items() if name.startswith("train-"))
    assert trains == ["Cached(type=COMPLETED)", "Completed()"], states

    resumed = run_folder(tmp_path / "killed")
    uninterrupted = run_folder(tmp_path / "uninterrupted")
    assert (resumed / "metrics.csv").read_bytes() == (uninterrupted / "metrics.csv").read_bytes()
    assert ((resumed / "recommendations.csv").read_bytes()
            == (uninterrupted / "recommendations.csv").read_bytes())
    # The killed run never closed its MLflow runs: the rerun found them RUNNING with a dead owner and
    # ended them KILLED, and marked the killed run's folder.
    (killed_folder,) = [path.parent for path in (tmp_path / "killed" / "out").glob("*/failed.json")]
    assert json.loads((killed_folder / "failed.json").read_text())["status"] == "killed"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    statuses = {run.info.run_name: run.info.status for run in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"tags.run_dir = '{killed_folder}'")}
    assert statuses and set(statuses.values()) == {"KILLED"}, statuses
