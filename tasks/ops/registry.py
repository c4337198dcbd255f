"""Model Registry: package a trained model as an MLflow pyfunc, log it to a run, register, promote, fetch.

Everything goes through `MlflowClient(tracking_uri)` with explicit run and model ids, never the
fluent "active run" or the process-wide tracking URI, because Prefect runs tasks in worker threads.
So `log_recommender` does what `mlflow.pyfunc.log_model` does, step by step: save the pyfunc
locally, create a LoggedModel linked to the run, upload, mark it READY.

Plain functions, in the order a run uses them:
    artifacts = package_model(trained, prepared, config.train.max_seq_len, run_dir / "model")
    model_uri = log_recommender(tracking_uri, run_id, artifacts)
    version = register(tracking_uri, model_uri, registered_name(config), {"run_name": ...})
    set_alias(tracking_uri, name, config.registry.alias, version)      # once the gate passes
and a gate reads the current champion with `champion_version`, `download_champion` + `read_package`
(model file, catalogue, meta) or `load_champion_pyfunc`. Flows use the Prefect tasks at the bottom
(`fetch_champion`, `register_model`, `promote_model`), which retry: the registry is an outside service.

A run changes the registry as one unit (docs/guarantees.md): it registers its version while the run
is still open, moves the alias as its very last step, and on any failure after registering calls
`withdraw` (`undo_change`), which points the alias back at the version it held before (`RegistryChange.previous`)
and deletes the run's version. So a failed run leaves the registry as it found it.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.artifacts
import mlflow.pyfunc
import polars as pl
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.protos.databricks_pb2 import (INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST,
                                          ErrorCode)
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from conf.schema import PipelineConfig
from models.serving import (DEFAULT_K, INPUT_DESCRIPTION, ITEMS_ARTIFACT, MAX_REQUEST_BYTES, META_ARTIFACT,
                            MODEL_ARTIFACT, read_catalogue, signature)
from tasks import schemas
from tasks.io import read_table, write_json
from tasks.data.preprocessing import PreparedData
from tasks.modelling.training import TrainedModel

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Our code travels with the model (MLflow puts code_paths first on sys.path when loading), so a
# registered version keeps serving the code it was trained with, from any checkout.
CODE_PATHS = [str(PROJECT_ROOT / "models"), str(PROJECT_ROOT / "conf")]
# The pyfunc is logged as code, not as a pickled object: loading runs this file (which builds a
# TopKRecommender), so neither logging nor loading a registered version pickles anything.
MODEL_CODE = PROJECT_ROOT / "models" / "serving_code.py"
# Packages the models import (recorded in requirements.txt; `--env-manager local` serves from the current env).
SERVING_PACKAGES = ["mlflow", "torch", "pytorch-lightning", "transformers", "scipy", "numpy", "pandas", "pydantic",
                    "pyyaml"]


def serving_requirements() -> list[str]:
    """SERVING_PACKAGES pinned to the installed versions (without local tags such as +cpu, unknown to PyPI)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in SERVING_PACKAGES]


@dataclass(frozen=True)
class RegistryChange:
    """What one run did to the registry, enough to undo it: the version it registered, and the alias it
    moved there from `previous` (the champion before the run; None when there was none)."""

    published: PublishedModel
    alias: str
    previous: str | None


@dataclass(frozen=True)
class PublishedModel:
    """A registered model version and where it came from."""

    name: str  # registered model name
    version: str
    model_uri: str  # models:/<model_id>, the logged model


@dataclass(frozen=True)
class PackagedModel:
    """A downloaded pyfunc's parts: the model file, its catalogue and its metadata."""

    root: Path  # the folder holding MLmodel
    model_file: Path  # loads with models.kinds.load_model
    items: pl.DataFrame  # item_idx (1..), item_id, role: the model's own index
    meta: dict[str, Any]  # name, kind, reads, max_seq_len, default_k, n_items, ...


def registered_name(config: PipelineConfig) -> str:
    """The registry name of a config's model: registry.model_name, else itx-<config name>."""
    return config.registry.model_name or f"itx-{config.name}"


def package_model(trained: TrainedModel, prepared: PreparedData, max_seq_len: int, dest: Path,
                  default_k: int = DEFAULT_K, max_request_bytes: int = MAX_REQUEST_BYTES) -> dict[str, str]:
    """Write model.pt, items.json and meta.json into dest; the pyfunc's artifacts mapping (name -> path)."""
    dest.mkdir(parents=True, exist_ok=True)
    model_file = dest / "model.pt"
    if Path(trained.model_file.path).resolve() != model_file.resolve():
        shutil.copyfile(trained.model_file.path, model_file)
    items = read_table(prepared.items, schemas.ITEM_INDEX, "items").sort("item_idx")
    write_json({"item_idx": items["item_idx"].to_list(), "item_id": items["item_id"].to_list(),
                "role": items["role"].to_list()}, dest / "items.json")
    meta = {"name": trained.name, "kind": trained.kind, "reads": trained.reads, "max_seq_len": max_seq_len,
            "default_k": default_k, "n_items": prepared.n_items, "model_fingerprint": trained.model_file.fingerprint,
            "items_fingerprint": prepared.items.fingerprint, "training_run_id": trained.training_run_id,
            "train_on": trained.train_on, "target_fraction": trained.target_fraction,
            "max_request_bytes": max_request_bytes}
    write_json(meta, dest / "meta.json")
    return {MODEL_ARTIFACT: str(model_file), ITEMS_ARTIFACT: str(dest / "items.json"),
            META_ARTIFACT: str(dest / "meta.json")}


def log_recommender(tracking_uri: str, run_id: str, artifacts: dict[str, str], name: str = "recommender",
                    default_k: int = DEFAULT_K) -> str:
    """Log the packaged artifacts as a TopKRecommender pyfunc output of the run; its model URI (models:/<id>).

    Thread-safe: the client API only, as `mlflow.pyfunc.log_model` would need the fluent active run.
    The pyfunc is logged as code (MODEL_CODE, MLflow's "models from code"), so no python_model.pkl
    is written and loading it unpickles nothing; the model file loads with weights_only=True.
    """
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                        tags={"kind": json.loads(Path(artifacts[META_ARTIFACT]).read_text())["kind"]})
    try:
        with tempfile.TemporaryDirectory(prefix="itx-pyfunc-") as temporary:
            local = Path(temporary) / "model"
            description = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                                model_id=logged.model_id)
            mlflow.pyfunc.save_model(local, python_model=str(MODEL_CODE), artifacts=artifacts,
                                     signature=signature(default_k), code_paths=CODE_PATHS,
                                     pip_requirements=serving_requirements(), mlflow_model=description,
                                     metadata={"input": INPUT_DESCRIPTION,
                                               "params": {"k": f"int, default {default_k}"}})
            for cache in local.rglob("__pycache__"):
                shutil.rmtree(cache, ignore_errors=True)
            client.log_model_artifacts(logged.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    except Exception:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    log.info("logged pyfunc %s (models:/%s) to run %s", name, logged.model_id, run_id)
    return f"models:/{logged.model_id}"


def register(tracking_uri: str, model_uri: str, registered_name: str, tags: dict[str, Any] | None = None) -> str:
    """Register a logged model (models:/<model_id>) as a new version of registered_name (created if missing);
    the version number."""
    client = MlflowClient(tracking_uri)
    try:
        client.create_registered_model(registered_name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    logged = client.get_logged_model(model_uri.removeprefix("models:/"))
    # The artifact location, not the models:/ URI: the sqlite registry would resolve that URI through
    # the process-wide tracking URI (an MLflow TODO in SqlAlchemyStore.create_model_version).
    version = client.create_model_version(registered_name, source=logged.artifact_location,
                                          run_id=logged.source_run_id, model_id=logged.model_id,
                                          tags={k: str(v) for k, v in (tags or {}).items()})
    log.info("registered %s version %s from %s", registered_name, version.version, model_uri)
    return str(version.version)


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    """Point models:/<name>@<alias> at `version` (moving it from any previous version)."""
    MlflowClient(tracking_uri).set_registered_model_alias(name, alias, str(version))
    log.info("alias %s@%s -> version %s", name, alias, version)


def undo_change(tracking_uri: str, change: RegistryChange) -> None:
    """Put the registry back as it was before `change`: the alias on its previous version (or removed
    when there was none), if it still points at the run's version, and the run's version deleted."""
    client, name = MlflowClient(tracking_uri), change.published.name
    current = champion_version(tracking_uri, name, change.alias)
    if current is not None and str(current.version) == change.published.version:
        if change.previous is not None:
            client.set_registered_model_alias(name, change.alias, change.previous)
        else:
            client.delete_registered_model_alias(name, change.alias)
    try:
        client.delete_model_version(name, change.published.version)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
    log.warning("registry: withdrew %s version %s (alias %s back on %s)", name, change.published.version,
                change.alias, change.previous or "no version")


def withdraw(tracking_uri: str, change: RegistryChange) -> None:
    """`undo_change` for a run that is failing: a failure to undo is logged (with what to do by hand), never
    raised over the run's own error."""
    try:
        undo_change(tracking_uri, change)
    except Exception as problem:  # noqa: BLE001 - the run's own error is the one to report
        log.error("registry: could not withdraw %s version %s (%s): delete that version and point alias %s back "
                  "at %s by hand (MLflow UI, Models)", change.published.name, change.published.version, problem,
                  change.alias, change.previous or "no version")


def champion_version(tracking_uri: str, name: str, alias: str = "champion") -> ModelVersion | None:
    """The version the alias points at; None when the registered model or the alias does not exist."""
    try:
        return MlflowClient(tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException as error:
        missing_model = error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)
        # A missing alias is INVALID_PARAMETER_VALUE "Registered model alias <alias> not found." (sqlite store).
        missing_alias = error.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE) and "not found" in error.message
        if missing_model or missing_alias:
            return None
        raise


def download_version(tracking_uri: str, name: str, version: str, dest: Path) -> Path:
    """Download a registered version's pyfunc into dest; the folder holding its MLmodel file."""
    dest.mkdir(parents=True, exist_ok=True)
    # The version's storage location, not models:/<name>/<version>: MLflow resolves that URI through
    # the process-wide registry URI whatever tracking_uri says.
    location = MlflowClient(tracking_uri).get_model_version_download_uri(name, str(version))
    local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dest), tracking_uri=tracking_uri)
    return Path(local)


def download_champion(tracking_uri: str, name: str, alias: str, dest: Path) -> Path | None:
    """Download the aliased version's pyfunc into dest (folder with MLmodel); None when there is no champion."""
    version = champion_version(tracking_uri, name, alias)
    if version is None:
        return None
    return download_version(tracking_uri, name, version.version, dest)


def read_package(root: Path) -> PackagedModel:
    """The model file, catalogue and metadata of a downloaded pyfunc folder (see `download_champion`)."""
    artifacts = root / "artifacts"
    meta = json.loads((artifacts / "meta.json").read_text())
    catalogue = read_catalogue(artifacts / "items.json")
    items = pl.DataFrame({"item_idx": range(1, catalogue.n_items), "item_id": catalogue.item_ids,
                          "role": catalogue.roles}, schema={"item_idx": pl.Int32, "item_id": pl.String,
                                                            "role": pl.String})
    return PackagedModel(root=root, model_file=artifacts / "model.pt", items=items, meta=meta)


def load_pyfunc(path: Path) -> mlflow.pyfunc.PyFuncModel:
    """A downloaded pyfunc folder loaded for predict(DataFrame with history lists, params={"k": ...})."""
    return mlflow.pyfunc.load_model(str(path))


def load_champion_pyfunc(tracking_uri: str, name: str, alias: str, dest: Path) -> mlflow.pyfunc.PyFuncModel | None:
    """The champion as a ready-to-predict pyfunc (downloaded into dest); None when there is none."""
    root = download_champion(tracking_uri, name, alias, dest)
    return None if root is None else load_pyfunc(root)


# Prefect tasks: thin wrappers with retries, as the registry is an outside service. Live objects and
# registry state are not cacheable (a rerun must register again), hence NO_CACHE.

@task(name="register-model", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_model(trained: TrainedModel, prepared: PreparedData, max_seq_len: int, dest: Path, tracking_uri: str,
                   run_id: str, name: str, alias: str, tags: dict[str, Any] | None = None,
                   max_request_bytes: int = MAX_REQUEST_BYTES) -> RegistryChange:
    """Prefect task: package the model, log it to the run and register it as a new version, the alias not
    moved yet; the change, for `promote_model` at the run's end or `undo_change` on a failure."""
    previous = champion_version(tracking_uri, name, alias)
    artifacts = package_model(trained, prepared, max_seq_len, dest, max_request_bytes=max_request_bytes)
    model_uri = log_recommender(tracking_uri, run_id, artifacts)
    published = PublishedModel(name=name, version=register(tracking_uri, model_uri, name, tags), model_uri=model_uri)
    return RegistryChange(published, alias, None if previous is None else str(previous.version))


@task(name="promote-model", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def promote_model(tracking_uri: str, change: RegistryChange) -> None:
    """Prefect task: point the alias at the run's version (a run's last step)."""
    set_alias(tracking_uri, change.published.name, change.alias, change.published.version)


@task(name="fetch-champion", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def fetch_champion(tracking_uri: str, name: str, alias: str, dest: Path) -> PackagedModel | None:
    """Prefect task: download the current champion's parts, or None when no version holds the alias."""
    root = download_champion(tracking_uri, name, alias, dest)
    return None if root is None else read_package(root)
