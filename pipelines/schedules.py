"""The learning-rate schedule from params.yaml `train`: constant (with ReduceLROnPlateau) or
cosine decay after a linear warm-up.

Warm-up keeps the first, noisy steps from wrecking freshly initialised (or pretrained) weights;
the cosine decay then anneals to ``train.min_lr`` by the last planned epoch, which beats waiting
for plateaus when the validation split is small and noisy. ReduceLROnPlateau only makes sense
with a constant rate (it cannot rewrite a schedule), so train adds it for `constant` only.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

SCHEDULES = ("constant", "cosine")


def learning_rate(train: Mapping[str, Any], steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate: a float (constant) or a Keras ``CosineDecay`` with warm-up.

    Warm-up rises linearly from 0 to ``learning_rate`` over ``warmup_epochs`` epochs; the cosine
    then falls from ``learning_rate`` to ``min_lr`` over the remaining ``epochs - warmup_epochs``.
    """
    kind = str(train.get("lr_schedule", "constant"))
    peak = float(train["learning_rate"])
    if kind == "constant":
        return peak
    if kind != "cosine":
        raise ValueError(f"unknown lr_schedule {kind!r}; choose one of {list(SCHEDULES)}")
    epochs, warmup = int(train["epochs"]), int(train.get("warmup_epochs", 0))
    if not 0 <= warmup < epochs:
        raise ValueError(f"warmup_epochs must lie in [0, epochs={epochs}), got {warmup}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    floor = float(train.get("min_lr", 0.0))
    if not 0.0 <= floor <= peak:
        raise ValueError(f"min_lr must lie in [0, learning_rate={peak}], got {floor}")
    warmup_steps = warmup * steps_per_epoch
    decay_steps = (epochs - warmup) * steps_per_epoch
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps, alpha=floor / peak, warmup_target=peak, warmup_steps=warmup_steps)
    return keras.optimizers.schedules.CosineDecay(peak, decay_steps, alpha=floor / peak)
