"""Deployments: prefect.yaml loads and its parameters validate against the flows' typed parameters, `prefect
deploy` registers both deployments with the nightly schedule, and a served deployment run triggered with
changed parameters completes against the local test server."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments import run_deployment
from prefect.exceptions import ParameterTypeError
from prefect.flows import load_flow_from_entrypoint
from prefect.runner import Runner
from prefect.settings import PREFECT_API_URL

from conf.loading import load_config
from conf.schema import PipelineConfig
from flows.deployments import deployments

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "prefect.yaml"


def declared() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}


def test_prefect_yaml_entrypoints_load_and_parameters_validate():
    for name, deployment in declared().items():
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        validated = flow.validate_parameters(deployment["parameters"])
        # The deployments' default config is the demo preset, field for field.
        assert validated["config"] == load_config(None), name
    (schedule,) = declared()["nightly-retrain"]["schedules"]
    assert CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"]).cron == "0 3 * * *"


def test_a_bad_parameter_is_rejected_naming_the_setting():
    flow = load_flow_from_entrypoint(str(ROOT / declared()["pipeline"]["entrypoint"]))
    bad = {"config": {"name": "demo", "train": {"max_epochs": 0}}}
    with pytest.raises(ParameterTypeError, match=r"train.max_epochs[\s\S]*greater than or equal to 1"):
        flow.validate_parameters(bad)
    assert "PipelineConfig" in str(flow.parameters.model_dump()["definitions"])  # the UI form's schema


@pytest.mark.slow
def test_prefect_deploy_registers_both_deployments_with_the_nightly_schedule(tmp_path):
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    prefect = [str(Path(sys.executable).with_name("prefect"))]
    for command in (["work-pool", "create", "itx-local", "--type", "process", "--overwrite"],
                    ["--no-prompt", "deploy", "--all"]):
        done = subprocess.run(prefect + command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr

    async def read_and_delete():
        async with get_client() as client:
            found = {name: await client.read_deployment_by_name(f"{flow}/{name}")
                     for flow, name in (("interest-transfer", "pipeline"), ("retrain", "nightly-retrain"))}
            for deployment in found.values():  # the served-deployment test registers the same names
                await client.delete_deployment(deployment.id)
            return found

    found = asyncio.run(read_and_delete())
    assert found["pipeline"].parameters["config"]["name"] == "demo"
    (schedule,) = found["nightly-retrain"].schedules
    assert schedule.schedule.cron == "0 3 * * *" and schedule.active
    pull = found["pipeline"].pull_steps[0]["prefect.deployments.steps.set_working_directory"]
    assert Path(pull["directory"]) == ROOT  # resolved at deploy time: runs execute in this checkout


@pytest.mark.slow
def test_a_served_deployment_run_with_changed_parameters_completes(tiny_config_factory, tmp_path):
    config = tiny_config_factory("train.max_epochs=1", "registry.enabled=false")
    pipeline, retrain = deployments(config, "0 3 * * *", str(tmp_path / "incoming"))
    changed = config.model_copy(update={"models": config.models[:2], "seed": 7}).model_dump(mode="json")

    async def serve_one_run():
        runner = Runner(name="itx-test-runner", query_seconds=1, pause_on_shutdown=False)
        await runner.aadd_deployment(pipeline)
        await runner.aadd_deployment(retrain)
        flow_run = await run_deployment("interest-transfer/pipeline", parameters={"config": changed}, timeout=0)
        await runner.start(run_once=True)  # picks up the scheduled run, executes it, returns
        async with get_client() as client:
            finished = await client.read_flow_run(flow_run.id)
            served = await client.read_deployment_by_name("retrain/nightly-retrain")
        return finished, served

    finished, served = asyncio.run(serve_one_run())
    assert finished.state.is_completed(), finished.state
    assert PipelineConfig.model_validate(finished.parameters["config"]).seed == 7
    assert served.schedules[0].schedule.cron == "0 3 * * *"
    runs = [p for p in Path(config.output.root).iterdir() if p.name.startswith("tiny-")]
    assert len(runs) == 1 and (runs[0] / "metrics.csv").exists()
    metrics = (runs[0] / "metrics.csv").read_text()
    assert "caser" not in metrics and "gru" in metrics  # the changed model list took effect
