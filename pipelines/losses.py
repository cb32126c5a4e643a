"""Class weights and the training losses (categorical cross-entropy, categorical focal loss).

Medical data sets are skewed (HAM10000: two thirds naevi), so rare classes are up-weighted
with W_c = N / (C * N_c): a balanced set gets all-ones weights and, when every class is
present, the mean weight over training samples is exactly 1, so the learning rate keeps its
meaning.

Apply class weights through exactly one route, never both:
- ``model.fit(..., class_weight=class_weights(...))`` (per-sample weights, training only), or
- ``make_loss(..., class_weights=...)`` which bakes them into the loss (also weights the
  validation loss, and travels with the compiled model).

Labels are one-hot for both losses. Label smoothing (``label_smoothing=eps``) trains against
(1 - eps) * one_hot + eps / C: it keeps the network from chasing saturated probabilities on a
few slides or lesions, which calibrates it better on unseen patients. In the weighted loss the
class weight still follows the *true* class (the unsmoothed label).

With class-balanced sampling (``train.sampling: balanced``) the batches are already balanced;
train then uses no class weights at all, so the correction is not applied twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

log = logging.getLogger(__name__)

LOSSES = ("categorical_crossentropy", "focal")


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> dict[int, float]:
    """W_c = N / (C * N_c) for every class index 0..C-1 (the Keras ``class_weight`` dict).

    A class with no training samples gets 0.0: the formula is undefined for it, no training
    sample can carry its weight anyway, and an explicit entry keeps the dict complete (Keras
    falls back to 1.0 for missing keys, which would hide the gap). A warning is logged.
    """
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"class_weights expects a 1-D array of class indices, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("class_weights needs at least one label")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("class_weights expects integer class indices, got non-integer values")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    counts = np.bincount(y, minlength=num_classes)
    absent = [c for c in range(num_classes) if counts[c] == 0]
    if absent:
        log.warning("classes %s have no training samples; their class weight is 0.0", absent)
    n = float(y.size)
    return {c: (n / (num_classes * counts[c]) if counts[c] else 0.0) for c in range(num_classes)}


@keras.saving.register_keras_serializable(package="medscan")
class WeightedCategoricalCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy with each sample weighted by its true class: -w_y * log p_y.

    Equivalent to ``fit(class_weight=...)`` with one-hot labels, but part of the loss, so the
    validation loss is weighted the same way as the training loss.
    """

    def __init__(
        self,
        class_weights: Sequence[float],
        label_smoothing: float = 0.0,
        name: str = "weighted_categorical_crossentropy",
        reduction: str = "sum_over_batch_size",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.class_weights = [float(w) for w in class_weights]
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        ce = keras.losses.categorical_crossentropy(y_true, y_pred, label_smoothing=self.label_smoothing)
        weights = ops.convert_to_tensor(self.class_weights, dtype=y_pred.dtype)
        return ce * ops.sum(y_true * weights, axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "class_weights": self.class_weights,
                "label_smoothing": self.label_smoothing}


def _weight_vector(weights: Mapping[int, float]) -> list[float]:
    """Dense per-class list from a ``{class: weight}`` dict; every index 0..C-1 must be present."""
    keys = sorted(int(c) for c in weights)
    if keys != list(range(len(keys))):
        raise ValueError(f"class_weights must map every class 0..C-1 to a weight; got keys {keys}")
    vector = [float(weights[c]) for c in keys]
    if any(w < 0 for w in vector):
        raise ValueError(f"class weights must be >= 0, got {vector}")
    return vector


def make_loss(
    name: str,
    *,
    gamma: float = 2.0,
    class_weights: Mapping[int, float] | None = None,
    label_smoothing: float = 0.0,
) -> keras.losses.Loss:
    """The training loss by name: "categorical_crossentropy" or "focal" (one-hot labels).

    "focal" is Keras's ``CategoricalFocalCrossentropy``: -alpha_y * (1 - p_y)**gamma * log p_y.
    Without class weights alpha is 1 (plain focal loss; Keras's default 0.25 comes from the
    binary detection setting and would only rescale the loss). With class weights alpha is the
    per-class weight vector, i.e. class-balanced focal loss. ``label_smoothing`` in [0, 1) applies
    to all three (Keras's own argument for the plain and focal losses).
    """
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
    weights = _weight_vector(class_weights) if class_weights else None
    if name == "categorical_crossentropy":
        if weights is None:
            return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        return WeightedCategoricalCrossentropy(weights, label_smoothing=label_smoothing)
    if name == "focal":
        return keras.losses.CategoricalFocalCrossentropy(
            alpha=weights if weights is not None else 1.0, gamma=gamma, label_smoothing=label_smoothing
        )
    raise ValueError(f"unknown loss {name!r}; choose one of {list(LOSSES)}")
