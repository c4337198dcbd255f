"""The `itx` command as a user runs it: exit codes, one-line errors, and a real run."""
import subprocess
import sys
from pathlib import Path

import pytest

from conf.loading import preset_path

pytestmark = pytest.mark.slow  # the second tier (make test-slow): each test runs itx as a subprocess

ITX = [sys.executable, "-m", "flows.cli"]
ROOT = Path(__file__).resolve().parents[2]


def itx(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*ITX, *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def test_unknown_key_fails_before_any_work_with_the_key_path(tmp_path):
    result = itx("run", str(preset_path("experiments/tiny.yaml")), "--set", "train.max_epoch=3",
                 "--output-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("itx: error:")]
    assert len(error_lines) == 1 and "train.max_epoch: unknown key" in error_lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_missing_config_file_is_named(tmp_path):
    result = itx("run", "no/such.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "no/such.yaml: config file not found" in result.stderr


def test_validate_prints_the_resolved_config(tmp_path):
    result = itx("validate", "--set", "split.protocol=last_n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "protocol: last_n" in result.stdout and "holdout_n: 3" in result.stdout


def test_itx_run_writes_a_run_folder_and_prints_where_it_is(tmp_path):
    result = itx("run", str(preset_path("experiments/tiny.yaml")), "--output-dir", str(tmp_path / "out"),
                 "--run-name", "cli-run", "--set", "train.max_epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "out" / "cli-run"
    assert f"run folder:      {run_dir}" in result.stdout
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "recommendations.parquet").is_file()
    assert (tmp_path / "mlflow.db").is_file()  # default store: sqlite in the working directory


def test_real_data_preset_without_its_data_says_where_to_put_it(tmp_path):
    result = itx("run", str(ROOT / "conf" / "ml1m.yaml"), "--set", f"data.recbole.path={tmp_path / 'nowhere'}",
                 "--output-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("itx: error:")][-1]
    assert "nowhere" in error and "data.recbole.path" in error


def bad_events_file(folder: Path) -> Path:
    """An event log whose third row has a time that is not a time."""
    path = folder / "events.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,1000\nu1,i2,yesterday\nu2,i1,1002\n")
    return path


def test_bad_data_fails_with_one_line_before_prefect_or_mlflow_start(tmp_path):
    """The input files are checked before the flow: no Prefect server, MLflow store or run folder, no traceback."""
    events = bad_events_file(tmp_path)
    code = ("import sys; from flows.cli import main; rc = main(sys.argv[1:]); "
            "print('started:', sorted(m for m in ('flows.pipeline', 'mlflow', 'prefect.server.api.server') "
            "if m in sys.modules)); sys.exit(rc)")
    result = subprocess.run(
        [sys.executable, "-c", code, "run", str(preset_path("experiments/tiny.yaml")), "--set", "data.source=events",
         "--set", f"data.events={{interactions: {events}}}", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [line for line in result.stderr.splitlines() if line.startswith("itx: error:")]
    assert len(result.stderr.splitlines()) == 1 and "timestamp" in result.stderr and "events.csv" in result.stderr
    assert "started: []" in result.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_verbose_adds_the_traceback_before_the_error_line(tmp_path):
    events = bad_events_file(tmp_path)
    result = itx("run", str(preset_path("experiments/tiny.yaml")), "--set", "data.source=events",
                 "--set", f"data.events={{interactions: {events}}}", "--output-dir", str(tmp_path / "out"), "--verbose",
                 cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Traceback") and lines[-1].startswith("itx: error:") and "timestamp" in lines[-1]
