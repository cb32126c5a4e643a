"""A candidate's model folder (Paths.model_dir): written by train and assemble, read back by evaluate,
promote and the registry, so its files are saved, logged and loaded in one place.

  model.keras        the Keras model (zoo.load_model reads it back)
  history.json       per-epoch metrics (empty for a candidate that trained nothing, the ensemble)
  train_info.json    how it was trained: classes, image size, run ids, split sizes, ...
The same files go to the active MLflow run under config.ARTIFACT_DIR, where the registry and
serving find a registered version's train_info (config.artifact(TRAIN_INFO_FILE)).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras

from pipelines.config import ARTIFACT_DIR, MODEL_FILE, TRAIN_INFO_FILE, Paths


def save_candidate(paths: Paths, arch: str, model: keras.Model, history: Mapping[str, Any],
                   train_info: Mapping[str, Any]) -> None:
    """Write model, history and train_info into models/<arch>/ and log the two JSON files to the
    active MLflow run (the model itself is logged by the caller, as a pyfunc or a Keras flavour)."""
    import mlflow  # only where a model is written: readers of a model folder need no MLflow

    paths.model_dir(arch).mkdir(parents=True, exist_ok=True)
    model.save(paths.model_file(arch))
    paths.history(arch).write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")
    paths.train_info(arch).write_text(json.dumps(train_info, indent=2) + "\n", encoding="utf-8")
    mlflow.log_artifact(str(paths.train_info(arch)), artifact_path=ARTIFACT_DIR)
    mlflow.log_artifact(str(paths.history(arch)), artifact_path=ARTIFACT_DIR)


def read_train_info(model_dir: Path) -> dict[str, Any]:
    """train_info.json of a model folder (models/<arch>/ or a downloaded MLflow artifact folder)."""
    return json.loads((model_dir / TRAIN_INFO_FILE).read_text(encoding="utf-8"))


def model_path(model_dir: Path) -> Path:
    return model_dir / MODEL_FILE
