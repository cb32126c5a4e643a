"""The six plain CNNs of increasing depth compared in the source study.

``conv_blocks`` picks one of six layouts, from 2 conv + 2 pool to 6 conv + 3 pool. A layout is
a list of stages; each stage is ``n`` 3x3 'same' ReLU convolutions followed by a 2x2
max-pool, and stage ``s`` has ``filters * 2**s`` filters. Every network ends in flatten +
Dense(dense_units) + Dropout, then the shared head (metadata branch, softmax).

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


def build(
    input_shape: tuple[int, int, int],
    num_classes: int,
    metadata_dim: int = 0,
    *,
    conv_blocks: int = 2,
    filters: int = 32,
    kernel_size: int = 3,
    dense_units: int = 128,
    dropout: float = 0.5,
    attention: bool = heads.HEAD_DEFAULTS["attention"],
    attention_heads: int = heads.HEAD_DEFAULTS["attention_heads"],
    metadata_units: int = heads.HEAD_DEFAULTS["metadata_units"],
    metadata_dropout: float = heads.HEAD_DEFAULTS["metadata_dropout"],
    name: str = "custom_cnn",
) -> keras.Model:
    """Build study CNN number ``conv_blocks`` (1..6, see the table in the module docstring)."""
    if conv_blocks not in LAYOUTS:
        raise ValueError(
            f"custom_cnn conv_blocks must be one of {sorted(LAYOUTS)}, got {conv_blocks!r}"
        )
    image, metadata = heads.model_inputs(input_shape, metadata_dim)
    x = layers.Rescaling(1.0 / 255, name="rescale")(image)
    stages = LAYOUTS[conv_blocks]
    for s, n_conv in enumerate(stages, start=1):
        for c in range(1, n_conv + 1):
            x = layers.Conv2D(
                filters * 2 ** (s - 1),
                kernel_size,
                padding="same",
                activation="relu",
                name=f"block{s}_conv{c}",
            )(x)
        if s == len(stages):
            x = heads.mark_features(x)
            if attention:
                x = heads.attention_pool(x, heads=attention_heads)
                break
        x = layers.MaxPooling2D(2, padding="same", name=f"block{s}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return heads.assemble(
        image,
        metadata,
        x,
        num_classes=num_classes,
        name=name,
        metadata_units=metadata_units,
        metadata_dropout=metadata_dropout,
    )
