"""Screenshots of the MLflow and Prefect UIs after a real run, taken by a headless Chromium: the check that
the UIs read as docs/operations.md says (runs view, run names and descriptions, flow and task run names,
the deployment form).

    sudo apt-get install -y chromium          # once; any Chromium or Chrome on PATH will do
    .venv/bin/python benchmarks/ui_screenshots.py [--out docs/images] [--keep]

In a temporary folder it starts `itx serve` (a Prefect server and the two deployments) and `mlflow ui`,
runs `itx run conf/experiments/tiny.yaml` against that server, then saves one PNG per page into --out
and prints what each should show. Everything it started is stopped at the end (--keep: left running
for a look in a browser, until Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PREFECT_PORT, MLFLOW_PORT = 4311, 5311


def wait_for(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


def api(path: str, body: dict | None = None) -> dict | list:
    """A Prefect API call (POST when there is a body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{PREFECT_PORT}/api{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    raise SystemExit("no Chromium on PATH: sudo apt-get install -y chromium")


def screenshot(browser: str, url: str, path: Path, wait_ms: int = 15000) -> None:
    """One page as the browser renders it after `wait_ms` of (virtual) time for the single-page app to load."""
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1600,1000", f"--virtual-time-budget={wait_ms}", f"--screenshot={path}", url],
                   check=True, capture_output=True, timeout=180)
    print(f"  {path}  <- {url}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    browser, out = chromium(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="itx-ui-"))
    database = f"sqlite:///{work / 'mlflow.db'}"
    env = os.environ | {"PREFECT_HOME": str(work / "prefect"), "MLFLOW_TRACKING_URI": database}
    env.pop("PREFECT_API_URL", None)
    started = []
    try:
        started.append(subprocess.Popen(
            [str(BIN / "itx"), "serve", "conf/experiments/tiny.yaml", "--port", str(PREFECT_PORT),
             "--output-dir", str(work / "outputs")], cwd=ROOT, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        started.append(subprocess.Popen(
            [str(BIN / "mlflow"), "ui", "--backend-store-uri", database, "--host", "127.0.0.1",
             "--port", str(MLFLOW_PORT)], cwd=work, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(f"http://127.0.0.1:{PREFECT_PORT}/api/health")
        run_env = env | {"PREFECT_API_URL": f"http://127.0.0.1:{PREFECT_PORT}/api"}
        print("running itx run conf/experiments/tiny.yaml against the served Prefect server ...")
        subprocess.run([str(BIN / "itx"), "run", "conf/experiments/tiny.yaml", "--output-dir", str(work / "outputs"),
                        "--set", "train.max_epochs=2"], cwd=ROOT, env=run_env, check=True,
                       stdout=subprocess.DEVNULL)
        wait_for(f"http://127.0.0.1:{MLFLOW_PORT}/health")
        from mlflow import MlflowClient

        from tasks.ops.artifacts import mlflow_experiment_url, mlflow_run_url

        experiment = MlflowClient(database).get_experiment_by_name("interest-transfer")
        prefect_ui, mlflow_ui = f"http://127.0.0.1:{PREFECT_PORT}", f"http://127.0.0.1:{MLFLOW_PORT}"
        parent = MlflowClient(database).search_runs([experiment.experiment_id],
                                                    "tags.mlflow.parentRunId IS NULL")[0]
        # The pipeline's flow run carries the run folder's name, as the MLflow run does.
        flow_run = api("/flow_runs/filter", {"flow_runs": {"name": {"any_": [parent.info.run_name]}}})[0]
        deployment = next(d for d in api("/deployments/filter", {}) if d["name"] == "pipeline")
        print(f"flow run {flow_run['name']!r}; MLflow experiment {experiment.experiment_id}, run {parent.info.run_name!r}")
        pages = [
            ("mlflow-experiment.png", mlflow_experiment_url(mlflow_ui, experiment.experiment_id),
             "the training runs table (the link's workflowType; MLflow 3 opens on GenAI traces without it); the "
             "run is named after its folder, its model runs after their model"),
            ("mlflow-run.png", mlflow_run_url(mlflow_ui, experiment.experiment_id, parent.info.run_id),
             "the run's description (preset, data, scenario, models, the --set settings)"),
            ("prefect-flow-runs.png", f"{prefect_ui}/runs", "the flow run named after its run folder"),
            ("prefect-flow-run.png", f"{prefect_ui}/runs/flow-run/{flow_run['id']}",
             "the graph of subflows and task runs named train-<model>, evaluate-<model>"),
            ("prefect-deployment-form.png", f"{prefect_ui}/deployments/deployment/{deployment['id']}/run",
             "the custom-run form with every setting's description, placeholders intact"),
        ]
        for file, url, what in pages:
            print(f"{file}: {what}")
            screenshot(browser, url, out / file)
        if args.keep:
            print(f"left running: {prefect_ui}  {mlflow_ui}  (Ctrl-C stops them)")
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
