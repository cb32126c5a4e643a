"""Run a trained model on manifest rows or uploaded images: one code path for evaluate, promote
(re-scoring the champion on today's test split) and serve.

A model travels with its train_info.json (classes, image size, metadata encoding, test-time
augmentation), so a model trained months ago is fed exactly as it was trained and scored.

Test-time augmentation (TTA) averages the class probabilities over exact views of each image:
``flips`` = identity, horizontal, vertical and both (4 views); ``d4`` = the 4 rotations by 90
degrees, each with and without a transpose (all 8 symmetries of the square). Cells and lesions
have no canonical orientation, so every view is an equally valid picture of the same case.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pipelines.candidate import model_path, read_train_info
from pipelines.contract import ModelContract, as_contract
from pipelines.data import make_dataset, symmetries
from pipelines.zoo import load_model


def load_bundle(model_dir: Path) -> tuple[keras.Model, dict[str, Any]]:
    """A model directory (models/<arch>/ or a downloaded MLflow artifact) -> (model, train_info)."""
    return load_model(model_path(model_dir), compile=False), read_train_info(model_dir)


def metadata_for(frame: pd.DataFrame, info: ModelContract | Mapping[str, Any]) -> np.ndarray | None:
    """The rows' metadata through the one checked encoding (pipelines.model_inputs)."""
    from pipelines.model_inputs import metadata_matrix

    return metadata_matrix(as_contract(info), frame)


TTA_MODES = ("none", "flips", "d4")


def tta_views(mode: str) -> list[Callable[[tf.Tensor], tf.Tensor]]:
    """The exact views (functions on a [B, H, W, C] batch) that TTA `mode` averages over."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown tta {mode!r}; choose one of {list(TTA_MODES)}")
    return [lambda x: x] if mode == "none" else symmetries(mode)


def predict_frame(model: keras.Model, info: ModelContract | Mapping[str, Any], frame: pd.DataFrame, root: Path,
                  batch_size: int = 64, tta: str | None = None) -> np.ndarray:
    """Class probabilities [n, C] for manifest rows whose `path` is relative to `root`.

    ``tta`` defaults to the model's own ``train_info["tta"]`` (params.yaml `evaluate.tta` when it
    was trained; "none" for older models), so evaluate and promote score it alike.
    """
    contract = as_contract(info)
    mode = tta if tta is not None else contract.tta
    ds = make_dataset(frame, root, list(contract.classes), contract.image_size, batch_size,
                      metadata=metadata_for(frame, info), with_labels=False)
    total = None
    views = tta_views(mode)
    for view in views:
        viewed = ds.map(lambda x, view=view: {**x, "image": view(x["image"])})
        probs = np.asarray(model.predict(viewed, verbose=0), dtype=np.float64)
        total = probs if total is None else total + probs
    return total / len(views)


def save_probabilities(path: Path, frame: pd.DataFrame, probs: np.ndarray, classes: Sequence[str]) -> Path:
    """Write one split's probabilities keyed by each row's `path` (read back by :func:`saved_probabilities`)."""
    table = pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=list(classes))
    table.insert(0, "path", frame["path"].astype(str).to_numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path, index=False)
    return path


def saved_probabilities(path: Path, frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray | None:
    """The saved probabilities of `frame`'s rows in its order, or None when the file is absent or
    does not cover them with these classes (then the caller scores the images itself)."""
    if not path.exists():
        return None
    table = pd.read_parquet(path)
    if list(table.columns) != ["path", *classes] or table["path"].duplicated().any():
        return None
    rows = table.set_index("path").reindex(frame["path"].astype(str))
    if rows.isna().any(axis=None):
        return None
    return rows.to_numpy(dtype=np.float64)


def label_indices(frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return frame["label"].map(index).to_numpy(dtype=np.int64)


def top_k(probs: np.ndarray, classes: Sequence[str], k: int = 5) -> list[list[dict[str, float]]]:
    """The k most probable diagnoses per row, most probable first."""
    order = np.argsort(-probs, axis=1)[:, : min(k, probs.shape[1])]
    return [[{"label": classes[j], "probability": round(float(row[j]), 6)} for j in idx]
            for row, idx in zip(probs, order)]
