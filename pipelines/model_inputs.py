"""The one input path: image bytes + patient metadata -> model inputs, and model output -> answer.

Serving (pipelines.serve, the MLflow pyfunc, the web app), Grad-CAM and evaluate all go through
here, so an upload is fed exactly as training fed the stored copy of the same file:

    bytes -> pipelines.images.normalized_pixels (ingest's normalisation: RGB, EXIF upright,
             longest side <= store_max_side, the `bounds:` size limits)
          -> pipelines.data.resize_pixels (training's resize to image_size)
    metadata -> check_metadata (a project error naming the field for a non-numeric or
             out-of-range age or an unknown sex/site; missing -> 'unknown')
          -> pipelines.features.encode_metadata (training's encoding)

Batch scoring of stored PNGs keeps tf.data (pipelines.inference.predict_frame) and shares the
resize (data.decode_image calls resize_pixels) and `metadata_matrix`.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
import pandas as pd

from pipelines.contract import ModelContract
from pipelines.features import UNKNOWN, encode_metadata
from pipelines.images import ImageRejected, normalized_pixels

MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "null", "none", UNKNOWN})


class InvalidInput(ValueError):
    """An input the model cannot take; `field` names it (image, age, sex, localization).

    The message never quotes the value: it is patient data and error messages reach logs.
    """

    def __init__(self, field: str, detail: str, reason: str = "invalid_metadata") -> None:
        super().__init__(f"{field}: {detail}")
        self.field, self.detail, self.reason = field, detail, reason


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_TEXT


def check_age(value: Any, age_range: tuple[float, float]) -> float:
    """Age in years (NaN when missing); InvalidInput for a non-number, inf or out-of-range age."""
    if _missing(value):
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (Real, str, np.number)):
        raise InvalidInput("age", f"must be a number of years, got a {type(value).__name__}")
    try:
        age = float(value)
    except ValueError:
        raise InvalidInput("age", "must be a number of years") from None
    low, high = age_range
    if not math.isfinite(age) or not low <= age <= high:
        raise InvalidInput("age", f"must be within bounds.age_range [{low:g}, {high:g}]")
    return age


def check_category(column: str, value: Any, allowed: Sequence[str]) -> str:
    """The lower-cased value, 'unknown' when missing; InvalidInput for one outside `allowed`."""
    if _missing(value):
        return UNKNOWN
    folded = str(value).strip().lower()
    choices = [a.lower() for a in allowed if a != UNKNOWN]
    if folded not in choices:
        raise InvalidInput(column, f"must be one of {choices} (or empty for unknown)")
    return folded


def check_metadata(frame: pd.DataFrame, contract: ModelContract) -> pd.DataFrame:
    """The frame's metadata columns checked and typed; other columns are not looked at."""
    out = pd.DataFrame(index=frame.index)
    for col in contract.metadata_columns:
        raw = frame[col].tolist() if col in frame else [None] * len(frame)
        if col == "age":
            out[col] = [check_age(v, contract.age_range) for v in raw]
        else:
            allowed = contract.categorical_values.get(col, ())
            out[col] = [check_category(col, v, allowed) for v in raw]
    return out


def metadata_matrix(contract: ModelContract, frame: pd.DataFrame) -> np.ndarray | None:
    """Encoded, validated metadata [n, features] for the frame's rows; None for an image-only model."""
    if not contract.metadata_columns:
        return None
    return encode_metadata(check_metadata(frame, contract), contract.metadata_columns,
                           {k: list(v) for k, v in contract.categorical_values.items()})


@functools.lru_cache(maxsize=8)
def _resizer(image_size: int) -> Any:
    """training's `resize_pixels` as one traced graph for this size: the same ops, but one call
    instead of four eager op dispatches (a quarter of the app's CPU per upload, measured)."""
    import tensorflow as tf   # only once there is an image

    from pipelines.data import resize_pixels

    return tf.function(lambda image: resize_pixels(image, image_size),
                       input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])


def image_pixels(contract: ModelContract, image: bytes) -> np.ndarray:
    """uint8 [S, S, 3] for one upload, as training saw its stored copy; InvalidInput if unusable."""
    try:
        pixels = normalized_pixels(image, contract.image_limits())
    except ImageRejected as err:
        raise InvalidInput("image", f"{err.reason}: {err.detail}", reason=str(err.reason)) from err
    return _resizer(int(contract.image_size))(np.ascontiguousarray(pixels, np.uint8)).numpy()


def model_inputs(contract: ModelContract, images: Sequence[bytes],
                 metadata: Sequence[Mapping[str, Any] | None] | None = None) -> dict[str, np.ndarray]:
    """The model's input batch for uploads (metadata per image, or None: all unknown).

    Raises InvalidInput naming the first bad field.
    """
    rows = list(metadata) if metadata is not None else [None] * len(images)
    if len(rows) != len(images):
        raise ValueError(f"{len(images)} images but {len(rows)} metadata records")
    meta = metadata_matrix(contract, pd.DataFrame([dict(r or {}) for r in rows], index=range(len(rows))))
    pixels = np.stack([image_pixels(contract, raw) for raw in images]) if images else \
        np.zeros((0, contract.image_size, contract.image_size, 3), np.uint8)
    inputs = {"image": pixels.astype(np.float32)}
    if meta is not None and meta.shape[1] > 0:
        inputs["metadata"] = meta
    return inputs


def predict_inputs(model: Any, contract: ModelContract, inputs: Mapping[str, np.ndarray],
                   batch_size: int = 64) -> np.ndarray:
    """Uncalibrated class probabilities [n, C], averaged over the contract's TTA views."""
    import tensorflow as tf

    from pipelines.inference import tta_views

    n = len(inputs["image"])
    views = tta_views(contract.tta)
    total = np.zeros((n, len(contract.classes)), np.float64)
    for start in range(0, n, batch_size):
        chunk = {k: tf.constant(v[start:start + batch_size]) for k, v in inputs.items()}
        for view in views:   # a direct call: model.predict's per-call set-up costs more than a batch
            viewed = {**chunk, "image": view(chunk["image"])}
            total[start:start + batch_size] += np.asarray(model(viewed, training=False), np.float64)
    return total / len(views)


def answers(contract: ModelContract, probs: np.ndarray, k: int = 5) -> list[dict[str, Any]]:
    """Per row: the top-k (label, readable name, probability), the top one and `abstain`.

    `probs` are calibrated (pipelines.calibration.apply_temperature); the model abstains
    ("uncertain: refer") when the top probability is below the contract's threshold.
    """
    order = np.argsort(-probs, axis=1)[:, : min(k, probs.shape[1])]
    out = []
    for row, idx in zip(probs, order):
        top = [{"label": contract.classes[j], "name": contract.display_names[j],
                "probability": round(float(row[j]), 6)} for j in idx]
        out.append({**top[0], "abstain": bool(float(row[idx[0]]) < contract.abstain_threshold),
                    "top": top})
    return out


def diagnose(model: Any, contract: ModelContract, images: Sequence[bytes],
             metadata: Sequence[Mapping[str, Any] | None] | None = None, k: int = 5) -> list[dict[str, Any]]:
    """Uploads -> one answer per image (see `answers`); raises InvalidInput for a bad field."""
    from pipelines.calibration import apply_temperature

    probs = predict_inputs(model, contract, model_inputs(contract, images, metadata))
    return answers(contract, apply_temperature(probs, contract.temperature), k)
