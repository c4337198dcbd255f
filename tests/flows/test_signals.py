"""Stop when asked: SIGTERM and SIGINT end `itx run` and `itx serve` within 10 s with exit 143 / 130, leave no
process of their group behind, mark the run interrupted (MLflow runs KILLED, failed.json), leave the registry
as it was, and the same command resumes.

Real processes for the signals (each `itx` in a session of its own, so its process group is what it
started: the temporary Prefect server included); the stop at later stages (evaluation, export,
registration) is requested in process at a chosen step, as the signal handler does, since a tiny run
passes through them too fast to aim a signal at.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import tasks.modelling.evaluation
import tasks.modelling.export
import tasks.ops.registry
from conf.loading import preset_path
from flows.pipeline import pipeline_flow
from models.stopping import StopRequested, clear_stop, request_stop
from tasks.ops.registry import champion_version, registered_name

pytestmark = pytest.mark.slow

ITX = str(Path(sys.executable).with_name("itx"))
EXIT_CODE = {signal.SIGTERM: 143, signal.SIGINT: 130}
# Long enough that the GRU is still training when the signal arrives.
SETTINGS = ["train.max_epochs=30", "train.patience=40",
            "models=[{kind: popularity, name: popularity}, {kind: rnn, name: gru, embedding_dim: 32, hidden_dim: 32}]"]


def itx_run(root: Path) -> list[str]:
    overrides = [*SETTINGS, f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}"]
    return [ITX, "run", str(preset_path("experiments/tiny.yaml")), "--output-dir", str(root / "out"),
            *[part for setting in overrides for part in ("--set", setting)]]


def environment(root: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    return env | {"PREFECT_HOME": str(root / "prefect"), "OMP_NUM_THREADS": "1"}


def group_left(pgid: int) -> str:
    """The processes still in the process group (empty: none)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return ""
    left = subprocess.run(["ps", "-o", "pid,args", "-g", str(pgid)], capture_output=True, text=True).stdout
    os.killpg(pgid, signal.SIGKILL)
    return left or "(a process that ps did not list)"


def signal_when(command: list[str], root: Path, signum: int, ready) -> tuple[int, float, str]:
    """Start `command` in a session of its own, send `signum` once ready() is true: (exit code, seconds from
    the signal to the exit, its output); afterwards no process of its group may be left."""
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / f"{signal.Signals(signum).name}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=environment(root), cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not ready() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert process.poll() is None, "it ended before the signal:\n" + log_path.read_text()[-3000:]
            sent = time.monotonic()
            process.send_signal(signum)
            code = process.wait(timeout=30)
            elapsed = time.monotonic() - sent
        finally:
            if process.poll() is None:
                process.kill()
    time.sleep(0.3)
    assert group_left(process.pid) == ""
    return code, elapsed, log_path.read_text()


def mlflow_statuses(root: Path, run_dir: Path) -> set[str]:
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.run_dir = '{run_dir}'")
    return {run.info.status for run in runs}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_training_ends_the_run_in_seconds_marked_interrupted_and_it_resumes(signum, tmp_path):
    def training() -> bool:
        return bool(list((tmp_path / "out" / "cache").glob("train-gru-*/checkpoints/last.ckpt")))

    code, elapsed, output = signal_when(itx_run(tmp_path), tmp_path, signum, training)
    assert code == EXIT_CODE[signum] and elapsed < 10, (code, elapsed, output[-2000:])
    errors = [line for line in output.splitlines() if line.startswith("itx: ")]
    assert len(errors) == 1 and f"interrupted by {signal.Signals(signum).name} during training" in errors[0]
    assert "run the same command again to resume" in errors[0]
    (run_dir,) = [path.parent for path in (tmp_path / "out").glob("*/failed.json")]
    assert json.loads((run_dir / "failed.json").read_text())["status"] == "interrupted"
    assert not (run_dir / "run.json").exists()
    assert mlflow_statuses(tmp_path, run_dir) == {"KILLED"}

    rerun = subprocess.run(itx_run(tmp_path), env=environment(tmp_path), cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from" in rerun.stdout + rerun.stderr


def test_a_signal_during_start_up_ends_it_with_nothing_left(tmp_path):
    started = time.monotonic()
    code, elapsed, output = signal_when(itx_run(tmp_path), tmp_path, signal.SIGTERM,
                                        lambda: time.monotonic() - started > 2.0)
    assert code == 143 and elapsed < 10, (code, elapsed, output[-2000:])
    assert not [path for path in (tmp_path / "out").glob("*") if path.name != "cache"]


def test_a_ui_cancel_of_a_served_run_ends_it_like_a_signal_and_sigterm_ends_serving(tmp_path):
    """`itx serve`, a pipeline run of its deployment cancelled (as the UI's Cancel does) while it trains: the
    flow run's process ends within 10 s, the run is marked interrupted; then SIGTERM ends `itx serve`."""
    port, env = 4391, environment(tmp_path)
    api = env | {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    prefect = str(Path(sys.executable).with_name("prefect"))
    command = [ITX, "serve", str(preset_path("experiments/tiny.yaml")), "--output-dir", str(tmp_path / "out"),
               "--port", str(port), *[part for setting in [*SETTINGS, f"tracking.tracking_uri=sqlite:///"
                                                           f"{tmp_path / 'mlflow.db'}"] for part in ("--set", setting)]]
    state: dict[str, str] = {}

    def training_a_deployment_run() -> bool:
        if "run" not in state:
            started = subprocess.run([prefect, "deployment", "run", "interest-transfer/pipeline"], env=api,
                                     capture_output=True, text=True)
            if started.returncode != 0:  # not served yet
                time.sleep(0.5)
                return False
            state["run"] = re.search(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", started.stdout).group(0)
        if not list((tmp_path / "out" / "cache").glob("train-gru-*/checkpoints/last.ckpt")):
            return False
        cancelled = time.monotonic()
        subprocess.run([prefect, "flow-run", "cancel", state["run"]], env=api, capture_output=True, check=True)
        while time.monotonic() - cancelled < 30:
            folders = list((tmp_path / "out").glob("*/failed.json"))
            engines = subprocess.run(["pgrep", "-f", "prefect.engine"], capture_output=True, text=True).stdout
            if folders and not engines.strip():
                state["ended_after"] = f"{time.monotonic() - cancelled:.1f}"
                return True
            time.sleep(0.2)
        raise AssertionError("the cancelled flow run did not end within 30 s")

    code, elapsed, output = signal_when(command, tmp_path, signal.SIGTERM, training_a_deployment_run)
    assert float(state["ended_after"]) < 10, state
    (run_dir,) = [path.parent for path in (tmp_path / "out").glob("*/failed.json")]
    assert json.loads((run_dir / "failed.json").read_text())["status"] == "interrupted"
    assert mlflow_statuses(tmp_path, run_dir) == {"KILLED"}
    assert code == 143 and elapsed < 10, (code, elapsed, output[-2000:])
    assert "itx: serving stopped by SIGTERM" in output


# --- a stop requested at later stages, in process -----------------------------------------------------


@pytest.fixture(scope="module")
def champion(tiny_config_factory):
    config = tiny_config_factory("train.max_epochs=1")
    return config, pipeline_flow(config)


def stop_during(module, name: str, monkeypatch) -> None:
    """Request a stop (as SIGTERM's handler does) when `module.name` is first called, then let it run."""
    original = getattr(module, name)

    def requesting(*args, **kwargs):
        request_stop(signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, requesting)


@pytest.mark.parametrize("module, name, where", [
    (tasks.modelling.evaluation, "compute_metrics", "evaluation"),
    (tasks.modelling.export, "rank_batch", "the export"),
    (tasks.ops.registry, "register", "the registration"),
], ids=["evaluation", "export", "registration"])
def test_a_stop_at_a_later_stage_marks_the_run_interrupted_leaves_the_registry_and_resumes(champion, module, name,
                                                                                          where, monkeypatch):
    config, first = champion
    client, name_ = MlflowClient(first.tracking_uri), registered_name(config)
    before = champion_version(first.tracking_uri, name_, "champion").version
    versions_before = sorted(str(v.version) for v in client.search_model_versions(f"name = '{name_}'"))
    stop_during(module, name, monkeypatch)
    run_name = f"stopped-in-{where.split()[-1]}"
    try:
        with pytest.raises(StopRequested, match=f"stopped by SIGTERM during {where}"):
            pipeline_flow(config.model_copy(update={"output": config.output.model_copy(update={"run_name": run_name})}))
    finally:
        clear_stop()
    run_dir = first.run_dir.parent / run_name
    assert json.loads((run_dir / "failed.json").read_text())["status"] == "interrupted"
    runs = client.search_runs([client.get_experiment_by_name(config.tracking.experiment).experiment_id],
                              f"tags.run_dir = '{run_dir}'")
    assert runs and {run.info.status for run in runs} == {"KILLED"}
    assert champion_version(first.tracking_uri, name_, "champion").version == before
    assert sorted(str(v.version) for v in client.search_model_versions(f"name = '{name_}'")) == versions_before
    monkeypatch.undo()  # the same config again: it resumes from the cache and finishes
    resumed = pipeline_flow(config.model_copy(update={"output": config.output.model_copy(
        update={"run_name": f"{run_name}-resumed"})}))
    assert (resumed.run_dir / "run.json").exists()
