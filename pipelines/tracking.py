"""MLflow wiring: where runs and the registry live, and the pipeline's parent run.

Default: a SQLite store (mlflow.db) and an artifact folder (mlartifacts/) in the project, so the
registry works with no server. Scale-out: set MLFLOW_TRACKING_URI (e.g. a server backed by Postgres
and S3); nothing else changes.

One parent run per pipeline execution: an orchestrator names the execution (MEDSCAN_EXECUTION_ID,
or the Airflow run id Airflow exports to its tasks); otherwise an execution is the data (splits
digest), the training params digest and the DVC experiment name, and a parent that already has a
finished child for an architecture is a past execution, so a rerun opens a new one.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from pipelines import lifecycle
from pipelines.config import Paths

PIPELINE_KEY_TAG = "medscan.pipeline_key"
EXECUTION_ENV = ("MEDSCAN_EXECUTION_ID", "AIRFLOW_CTX_DAG_RUN_ID")
# `custom_model_development` is the MLflow UI's non-GenAI kind: the experiment opens on its runs
# (mlflow/server/js: ExperimentKind), not on the GenAI traces page.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"   # what the UI shows as the experiment's description


def experiment_tags(dataset: str) -> dict[str, str]:
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, "medscan.task": "image-classification",
            "medscan.domain": "computer-vision", "medscan.dataset": dataset,
            DESCRIPTION_TAG: (f"Medscan diagnostic-support image classifiers on {dataset}: one parent "
                              "run per pipeline execution, one child run per architecture (train "
                              "and evaluate), the promotion verdict on the parent.")}


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
    if experiment is None:
        location = paths.mlflow_artifacts.as_uri() if user_uri is None else None
        return mlflow.create_experiment(name, artifact_location=location, tags=experiment_tags(dataset))
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made before the tags existed
        client = mlflow.MlflowClient()
        for key, value in experiment_tags(dataset).items():
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def params_digest(params: Mapping[str, Any]) -> str:
    """Digest of what shapes the trained models: train, augment, the architectures and their zoo
    entries (so epochs 3 and epochs 12 are two executions, not one)."""
    archs = list(params.get("architectures") or [])
    shaping = {"train": params.get("train"), "augment": params.get("augment"), "architectures": archs,
               "zoo": {a: (params.get("zoo") or {}).get(a) for a in archs},
               "tta": (params.get("evaluate") or {}).get("tta")}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:12]


def execution(dataset: str, splits_digest: str, params: Mapping[str, Any],
              env: Mapping[str, str] = os.environ) -> tuple[str, str, bool]:
    """(pipeline key, readable run name, whether an orchestrator named it) of this execution."""
    stamp = time.strftime("%Y-%m-%d %H:%M")
    named = next((env[k] for k in EXECUTION_ENV if env.get(k)), None)
    if named:
        return f"{dataset}-exec-{named}", f"{dataset} {stamp} run {named}", True
    digest = params_digest(params)
    exp = env.get("DVC_EXP_NAME")
    key = f"{dataset}-splits-{splits_digest}-params-{digest}" + (f"-exp-{exp}" if exp else "")
    name = f"{dataset} {stamp} splits {splits_digest[:6]} params {digest[:4]}" + (f" exp {exp}" if exp else "")
    return key, name, False


def _has_finished_child(experiment_id: str, parent: str, arch: str) -> bool:
    return bool(mlflow.search_runs(
        experiment_ids=[experiment_id], max_results=1, output_format="list",
        filter_string=(f"tags.`mlflow.parentRunId` = '{parent}' and tags.`medscan.arch` = '{arch}' "
                       "and attributes.status = 'FINISHED'")))


def parent_run_id(experiment_id: str, pipeline_key: str, run_name: str, arch: str | None = None,
                  named: bool = False) -> str:
    """The parent run that groups one pipeline execution's per-architecture runs (found or created).

    The newest parent with this key, unless `arch` already finished under it and the key was
    derived (not `named` by an orchestrator): then this is a new execution and gets its own parent.
    """
    found = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{pipeline_key}'",
        max_results=1, order_by=["attributes.start_time DESC"], output_format="list")
    if found and (named or arch is None or not _has_finished_child(experiment_id, found[0].info.run_id, arch)):
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


def log_split_datasets(frames: Mapping[str, Any], dataset: str, source: Path) -> dict[str, str]:
    """Log each split as an MLflow dataset of the active run (context train/val/test); returns
    the digests MLflow computed, so the run page shows exactly which rows a model saw."""
    import warnings

    digests = {}
    for split, frame in frames.items():
        with warnings.catch_warnings():  # MLflow registers two equivalent local sources for paths
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            # width/height are integers and never missing: MLflow's hint about missing ints is noise
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
            data = mlflow.data.from_pandas(frame.reset_index(drop=True), source=source.as_uri(),
                                           targets="label", name=f"{dataset}-{split}")
            mlflow.log_input(data, context=split)   # the schema is inferred here too
        digests[split] = data.digest
    return digests
