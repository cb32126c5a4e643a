"""Run a trained model on manifest rows or uploaded images: one code path for evaluate, promote
(re-scoring the champion on today's test split) and serve.

A model travels with its train_info.json (classes, image size, metadata encoding), so a model
trained months ago is fed exactly as it was trained.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from pipelines.data import make_dataset
from pipelines.features import encode_metadata
from pipelines.zoo import load_model


def load_bundle(model_dir: Path) -> tuple[keras.Model, dict[str, Any]]:
    """A model directory (models/<arch>/ or a downloaded MLflow artifact) -> (model, train_info)."""
    info = json.loads((model_dir / "train_info.json").read_text(encoding="utf-8"))
    return load_model(model_dir / "model.keras", compile=False), info


def metadata_for(frame: pd.DataFrame, info: Mapping[str, Any]) -> np.ndarray | None:
    if not info.get("metadata_columns"):
        return None
    return encode_metadata(frame, info["metadata_columns"], info["categorical_values"])


def predict_frame(model: keras.Model, info: Mapping[str, Any], frame: pd.DataFrame, root: Path,
                  batch_size: int = 64) -> np.ndarray:
    """Class probabilities [n, C] for manifest rows whose `path` is relative to `root`."""
    ds = make_dataset(frame, root, info["classes"], int(info["image_size"]), batch_size,
                      metadata=metadata_for(frame, info), with_labels=False)
    return np.asarray(model.predict(ds, verbose=0), dtype=np.float64)


def label_indices(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return frame["label"].map(index).to_numpy(dtype=np.int64)


def top_k(probs: np.ndarray, classes: Sequence[str], k: int = 5) -> list[list[dict[str, float]]]:
    """The k most probable diagnoses per row, most probable first."""
    order = np.argsort(-probs, axis=1)[:, : min(k, probs.shape[1])]
    return [[{"label": classes[j], "probability": round(float(row[j]), 6)} for j in idx]
            for row, idx in zip(probs, order)]
