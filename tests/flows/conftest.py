"""Flow tests run against a throwaway Prefect server and write MLflow runs to a sqlite file in tmp."""
import pytest
from prefect.testing.utilities import prefect_test_harness

from conf.loading import load_config, preset_path


@pytest.fixture(scope="session", autouse=True)
def prefect_backend():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def tiny_config_factory(tmp_path_factory):
    """Build the tiny preset writing into a fresh folder, with extra overrides."""

    def build(*overrides: str):
        root = tmp_path_factory.mktemp("run")
        return load_config(
            preset_path("experiments/tiny.yaml"),
            [f"output.root={root / 'outputs'}", f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}", *overrides],
        )

    return build
