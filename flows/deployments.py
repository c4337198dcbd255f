"""Deployments of the pipeline and of the nightly retraining, and `itx serve`, which runs them locally.

Two ways to run them, the same two deployments:
- `itx serve`: a Prefect server on 127.0.0.1 (started if none answers) and this process serving both
  deployments (`prefect.serve`): open the UI, press Run on `interest-transfer/pipeline`, edit the
  form, and the run executes here.
- `prefect.yaml` at the repository root, for a team's work pool: `prefect deploy --all` and
  `prefect worker start --pool itx-local` (README, "Deployments and schedules").
The flows take the typed `PipelineConfig` (and `EventLogConfig`) as parameters, so the UI shows a
form with the preset's values as defaults and rejects a bad value before the run starts.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conf.schema import PipelineConfig

TAGS = ["interest-transfer"]
HEALTH_TIMEOUT_S = 120


def deployments(config: PipelineConfig, cron: str, new_events: str):
    """The pipeline deployment (run on demand) and the retraining deployment (on `cron`), with config as defaults."""
    from flows.pipeline import pipeline_flow
    from flows.retrain import retrain_flow

    parameters = {"config": config.model_dump(mode="json")}
    landing = str(Path(new_events).expanduser().resolve())
    return [
        pipeline_flow.to_deployment(
            name="pipeline", parameters=parameters, tags=TAGS,
            description="The whole pipeline on the configured data: edit `config` in the form to change any setting.",
        ),
        retrain_flow.to_deployment(
            name="nightly-retrain", cron=cron, parameters=parameters | {"new_events": {"interactions": landing}},
            tags=TAGS,
            description=f"Append new event files dropped into {landing}, fine-tune the champion, promote if not worse.",
        ),
    ]


def server_healthy(api_url: str) -> bool:
    """True when a Prefect server answers at api_url (…/api)."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_server(port: int) -> tuple[str, subprocess.Popen | None]:
    """(API URL, the server process we started or None when one was already running on the port)."""
    api_url = f"http://127.0.0.1:{port}/api"
    if server_healthy(api_url):
        return api_url, None
    prefect = Path(sys.executable).with_name("prefect")
    # The UI reads its API address from PREFECT_UI_API_URL, which otherwise points at port 4200 whatever
    # --port says: on another port the UI would open on "Can't connect to Server API".
    env = os.environ | {"PREFECT_UI_API_URL": api_url, "PREFECT_SERVER_API_PORT": str(port)}
    process = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                               env=env, start_new_session=True)  # its own process group: stopped as one below
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if server_healthy(api_url):
            return api_url, process
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {process.returncode} (is port {port} in use?)")
        time.sleep(1)
    stop_server(process)
    raise RuntimeError(f"prefect server did not answer on {api_url} within {HEALTH_TIMEOUT_S} s")


def stop_server(process: subprocess.Popen | None) -> None:
    """Stop the server we started, with its children (SIGINT: `prefect server` ignores SIGTERM at times)."""
    if process is None or process.poll() is not None:
        return
    import signal

    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def serve_deployments(config: PipelineConfig, port: int = 4200, cron: str = "0 3 * * *",
                      new_events: str = "incoming") -> int:
    """Start (or reuse) the local Prefect server and serve both deployments until interrupted."""
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url, server = start_server(port)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            print(f"Prefect UI:  http://127.0.0.1:{port}  (deployments: interest-transfer/pipeline, "
                  f"retrain/nightly-retrain on '{cron}')")
            print(f"Trigger from a shell:  PREFECT_API_URL={api_url} .venv/bin/prefect deployment run "
                  "'interest-transfer/pipeline'")
            serve(*deployments(config, cron, new_events))
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(server)
    return 0
