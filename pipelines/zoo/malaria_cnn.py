"""Small CNN for thin-smear malaria cell images, designed for 128x128 inputs.

Three stages of 3x3 ReLU convolution (16, 32, 64 filters) each followed by 2x2 max-pool and
Dropout, then flatten, Dense(64) + Dropout and the shared head (:mod:`pipelines.zoo.heads`).
Cell crops are small and the two classes differ in local texture (parasite stain), so a
shallow net suffices.
With ``attention: true`` the attention block's pool replaces the last stage's pool + dropout.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from pipelines.zoo import heads


def _pool(stage: int, dropout: float) -> heads.Stage:
    """2x2 max-pool + Dropout, which ends every stage."""

    def pool(x: keras.KerasTensor) -> keras.KerasTensor:
        x = layers.MaxPooling2D(2, padding="same", name=f"pool{stage}")(x)
        return layers.Dropout(dropout, name=f"dropout{stage}")(x)

    return pool


def build(
    *,
    filters: Sequence[int] = (16, 32, 64),
    dense_units: int = 64,
    dropout: float = 0.2,
    dense_dropout: float = 0.5,
) -> heads.Body:
    """The malaria CNN; ``filters`` sets the stage widths (one stage per entry)."""
    if not filters or any(int(f) < 1 for f in filters):
        raise ValueError(
            f"malaria_cnn filters must be a non-empty list of positive ints, got {filters!r}"
        )

    def stack(x: keras.KerasTensor) -> keras.KerasTensor:
        for s, width in enumerate(filters, start=1):
            if s > 1:
                x = _pool(s - 1, dropout)(x)
            x = layers.Conv2D(int(width), 3, padding="same", activation="relu", name=f"conv{s}")(x)
        return x

    return heads.Body(name="malaria_cnn", stack=stack, pool=_pool(len(filters), dropout),
                      top=heads.dense_top(dense_units, dense_dropout))
