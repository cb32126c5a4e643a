"""MLflow wiring: where runs and the registry live, and the pipeline's parent run.

Default: a SQLite store (mlflow.db) and an artifact folder (mlartifacts/) in the project, so the
registry works with no server. Scale-out: set MLFLOW_TRACKING_URI (e.g. a server backed by Postgres
and S3); nothing else changes.
"""
from __future__ import annotations

import os
from pathlib import Path

import mlflow

from pipelines import lifecycle
from pipelines.config import Paths

PIPELINE_KEY_TAG = "medscan.pipeline_key"


# URIs this module derived itself. MLflow copies whatever set_tracking_uri/set_registry_uri get
# into os.environ, so without this a second configure() in one process (another project, or a
# test) would take the first project's store for a user's setting.
_DERIVED: set[str] = set()


def _user_setting(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value in _DERIVED else value


def configure(paths: Paths, dataset: str) -> str:
    """Point MLflow at the project store and return the data set's experiment id.

    In a stage or CLI process this also makes its runs end KILLED when the process is stopped or
    its `dvc repro` dies (pipelines.lifecycle): every entry point that logs to MLflow comes here.
    """
    lifecycle.install_for_stage()
    user_uri = _user_setting("MLFLOW_TRACKING_URI")
    uri = user_uri or f"sqlite:///{paths.mlflow_db}"
    registry = _user_setting("MLFLOW_REGISTRY_URI") or uri
    _DERIVED.update(v for v in (uri, registry) if v != user_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    name = f"medscan-{dataset}"
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = paths.mlflow_artifacts.as_uri() if user_uri is None else None
    return mlflow.create_experiment(name, artifact_location=location)


def parent_run_id(experiment_id: str, pipeline_key: str, run_name: str) -> str:
    """The parent run that groups one pipeline execution's per-architecture runs (found or created)."""
    found = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{pipeline_key}'",
        max_results=1, output_format="list")
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name=run_name, tags={PIPELINE_KEY_TAG: pipeline_key})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def file_digest(path: Path, length: int = 12) -> str:
    """Short content hash of a file (identifies the data a pipeline run saw)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
