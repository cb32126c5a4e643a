"""Small CNN for thin-smear malaria cell images, designed for 128x128 inputs.

Three stages of 3x3 ReLU convolution (16, 32, 64 filters) each followed by 2x2 max-pool and
Dropout, then flatten, Dense(64) + Dropout and the shared softmax head. Cell crops are small
and the two classes differ in local texture (parasite stain), so a shallow net suffices.
With ``attention: true`` the attention block's pool replaces the last stage's pool + dropout.
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
    filters: Sequence[int] = (16, 32, 64),
    dense_units: int = 64,
    dropout: float = 0.2,
    dense_dropout: float = 0.5,
    attention: bool = heads.HEAD_DEFAULTS["attention"],
    attention_heads: int = heads.HEAD_DEFAULTS["attention_heads"],
    metadata_units: int = heads.HEAD_DEFAULTS["metadata_units"],
    metadata_dropout: float = heads.HEAD_DEFAULTS["metadata_dropout"],
    name: str = "malaria_cnn",
) -> keras.Model:
    """Build the malaria CNN; ``filters`` sets the stage widths (one stage per entry)."""
    if not filters or any(int(f) < 1 for f in filters):
        raise ValueError(
            f"malaria_cnn filters must be a non-empty list of positive ints, got {filters!r}"
        )
    image, metadata = heads.model_inputs(input_shape, metadata_dim)
    x = layers.Rescaling(1.0 / 255, name="rescale")(image)
    for s, width in enumerate(filters, start=1):
        x = layers.Conv2D(int(width), 3, padding="same", activation="relu", name=f"conv{s}")(x)
        if s == len(filters):
            x = heads.mark_features(x)
            if attention:
                x = heads.attention_pool(x, heads=attention_heads)
                break
        x = layers.MaxPooling2D(2, padding="same", name=f"pool{s}")(x)
        x = layers.Dropout(dropout, name=f"dropout{s}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = layers.Dropout(dense_dropout, name="head_dropout")(x)
    return heads.assemble(
        image,
        metadata,
        x,
        num_classes=num_classes,
        name=name,
        metadata_units=metadata_units,
        metadata_dropout=metadata_dropout,
    )
