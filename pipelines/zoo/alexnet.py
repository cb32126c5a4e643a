"""A small AlexNet-style network (Krizhevsky et al., 2012) for 32-128 pixel inputs.

Five convolutions (5x5, 5x5, 3x3, 3x3, 3x3; widths default to 32-64-96-96-64, the original
96-256-384-384-256 ratios scaled down), overlapping 3x3/2 max-pools after conv1, conv2 and
conv5, then two Dropout+Dense layers and the softmax head. BatchNormalization stands in for
the original local response normalisation. The first conv has stride ``stem_stride``
(1 by default; 4 matches the original on 224-pixel inputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from pipelines.zoo import heads


def build(
    input_shape: tuple[int, int, int],
    num_classes: int,
    metadata_dim: int = 0,
    *,
    filters: Sequence[int] = (32, 64, 96, 96, 64),
    stem_stride: int = 1,
    dense_units: int = 256,
    dropout: float = 0.5,
    attention: bool = heads.HEAD_DEFAULTS["attention"],
    attention_heads: int = heads.HEAD_DEFAULTS["attention_heads"],
    metadata_units: int = heads.HEAD_DEFAULTS["metadata_units"],
    metadata_dropout: float = heads.HEAD_DEFAULTS["metadata_dropout"],
    name: str = "alexnet_small",
) -> keras.Model:
    """Build the small AlexNet; ``features`` is the conv5 map."""
    if len(filters) != 5:
        raise ValueError(f"alexnet_small filters needs 5 widths (conv1..conv5), got {filters!r}")
    image, metadata = heads.model_inputs(input_shape, metadata_dim)
    x = layers.Rescaling(1.0 / 255, name="rescale")(image)
    kernels, strides = (5, 5, 3, 3, 3), (stem_stride, 1, 1, 1, 1)
    for i, (width, k, stride) in enumerate(zip(filters, kernels, strides, strict=True), start=1):
        x = layers.Conv2D(int(width), k, strides=stride, padding="same", name=f"conv{i}")(x)
        if i <= 2:
            x = layers.BatchNormalization(name=f"conv{i}_bn")(x)
        x = layers.Activation("relu", name=f"conv{i}_relu")(x)
        if i <= 2:
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{i}")(x)
    x = heads.mark_features(x)
    if attention:
        x = heads.attention_pool(x, heads=attention_heads)
    else:
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool5")(x)
    x = layers.Flatten(name="flatten")(x)
    for i in (6, 7):
        x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
        x = layers.Dense(dense_units, activation="relu", name=f"fc{i}")(x)
    return heads.assemble(
        image,
        metadata,
        x,
        num_classes=num_classes,
        name=name,
        metadata_units=metadata_units,
        metadata_dropout=metadata_dropout,
    )
