"""The preprocessing stage: the engine `preprocess.engine` names (in memory, or streaming in user buckets),
both built from the steps in tasks/data/preprocessing.py, and its Prefect task."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from conf.schema import PreprocessConfig, ScenarioConfig, SplitConfig
from tasks.data.ingestion import RawTables
from tasks.data.preprocessing import PreparedData, prepare_data_in_memory
from tasks.data.streaming import prepare_data_streaming
from tasks.io import CacheDir


def prepare_data(
    raw: RawTables,
    preprocess: PreprocessConfig,
    split: SplitConfig,
    scenario: ScenarioConfig,
    group_attribute: str | None,
    cache_root: Path,
    seed: int | None = None,
) -> PreparedData:
    """Run every preprocessing step on the raw tables with the configured engine and write the results as
    Parquet; both engines give the same tables (tests/unit/test_streaming_preprocessing.py).

    `seed`: the run's seed, which orders equal timestamps under `preprocess.tie_order: shuffle`.
    """
    engine = prepare_data_streaming if preprocess.engine == "streaming" else prepare_data_in_memory
    return engine(raw, preprocess, split, scenario, group_attribute, cache_root, seed=seed)


@task(name="preprocess", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def preprocess(
    raw: RawTables,
    preprocess_cfg: PreprocessConfig,
    split: SplitConfig,
    scenario: ScenarioConfig,
    group_attribute: str | None,
    cache: CacheDir,
    seed: int | None = None,
) -> PreparedData:
    """Prefect task: preprocess the raw tables into indexed, split sequences (`seed`: the run's)."""
    return prepare_data(raw, preprocess_cfg, split, scenario, group_attribute, cache.path, seed)
