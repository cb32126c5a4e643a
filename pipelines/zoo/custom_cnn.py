"""The six plain CNNs of increasing depth compared in the source study.

``conv_blocks`` picks one of six layouts, from 2 conv + 2 pool to 6 conv + 3 pool. A layout is
a list of stages; each stage is ``n`` 3x3 'same' ReLU convolutions followed by a 2x2
max-pool, and stage ``s`` has ``filters * 2**s`` filters. Every network ends in flatten +
Dense(dense_units) + Dropout, then the shared head (:mod:`pipelines.zoo.heads`).

    conv_blocks  stages     convs + pools
    1            [1, 1]     2 + 2
    2            [1, 2]     3 + 2
    3            [2, 2]     4 + 2
    4            [1, 1, 2]  4 + 3
    5            [1, 2, 2]  5 + 3
    6            [2, 2, 2]  6 + 3

With ``attention: true`` the soft-attention block takes the last conv map and its own 2x2
max-pool replaces the last stage's pool, so the flattened size is unchanged.
"""

from __future__ import annotations

import keras
from keras import layers

from pipelines.zoo import heads

LAYOUTS: dict[int, tuple[int, ...]] = {
    1: (1, 1),
    2: (1, 2),
    3: (2, 2),
    4: (1, 1, 2),
    5: (1, 2, 2),
    6: (2, 2, 2),
}


def _pool(stage: int) -> layers.Layer:
    return layers.MaxPooling2D(2, padding="same", name=f"block{stage}_pool")


def build(
    *,
    conv_blocks: int = 2,
    filters: int = 32,
    kernel_size: int = 3,
    dense_units: int = 128,
    dropout: float = 0.5,
) -> heads.Body:
    """Study CNN number ``conv_blocks`` (1..6, see the table in the module docstring)."""
    if conv_blocks not in LAYOUTS:
        raise ValueError(
            f"custom_cnn conv_blocks must be one of {sorted(LAYOUTS)}, got {conv_blocks!r}"
        )
    stages = LAYOUTS[conv_blocks]

    def stack(x: keras.KerasTensor) -> keras.KerasTensor:
        for s, n_conv in enumerate(stages, start=1):
            if s > 1:
                x = _pool(s - 1)(x)
            for c in range(1, n_conv + 1):
                x = layers.Conv2D(filters * 2 ** (s - 1), kernel_size, padding="same",
                                  activation="relu", name=f"block{s}_conv{c}")(x)
        return x

    return heads.Body(name="custom_cnn", stack=stack, pool=_pool(len(stages)),
                      top=heads.dense_top(dense_units, dropout))
