"""A small AlexNet-style network (Krizhevsky et al., 2012) for 32-128 pixel inputs.

Five convolutions (5x5, 5x5, 3x3, 3x3, 3x3; widths default to 32-64-96-96-64, the original
96-256-384-384-256 ratios scaled down), overlapping 3x3/2 max-pools after conv1, conv2 and
conv5, then two Dropout+Dense layers and the shared head. BatchNormalization stands in for
the original local response normalisation. The first conv has stride ``stem_stride``
(1 by default; 4 matches the original on 224-pixel inputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from pipelines.zoo import heads


def build(
    *,
    filters: Sequence[int] = (32, 64, 96, 96, 64),
    stem_stride: int = 1,
    dense_units: int = 256,
    dropout: float = 0.5,
) -> heads.Body:
    """The small AlexNet; ``features`` is the conv5 map."""
    if len(filters) != 5:
        raise ValueError(f"alexnet_small filters needs 5 widths (conv1..conv5), got {filters!r}")
    kernels, strides = (5, 5, 3, 3, 3), (stem_stride, 1, 1, 1, 1)

    def stack(x: keras.KerasTensor) -> keras.KerasTensor:
        for i, (width, k, stride) in enumerate(zip(filters, kernels, strides, strict=True), 1):
            x = layers.Conv2D(int(width), k, strides=stride, padding="same", name=f"conv{i}")(x)
            if i <= 2:
                x = layers.BatchNormalization(name=f"conv{i}_bn")(x)
            x = layers.Activation("relu", name=f"conv{i}_relu")(x)
            if i <= 2:
                x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{i}")(x)
        return x

    def top(x: keras.KerasTensor) -> keras.KerasTensor:
        for i in (6, 7):
            x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
            x = layers.Dense(dense_units, activation="relu", name=f"fc{i}")(x)
        return x

    return heads.Body(name="alexnet_small", stack=stack, top=top,
                      pool=layers.MaxPooling2D(3, strides=2, padding="same", name="pool5"))
