"""LeNet-5 (LeCun et al., 1998): the smallest convolutional baseline in the zoo.

conv 6@5x5 ('same', so 28- or 32-pixel inputs both work) -> 2x2 average pool ->
conv 16@5x5 ('valid') -> 2x2 average pool -> Dense 120 -> Dense 84 -> softmax head.
The 1998 network used scaled tanh and trainable subsampling; ``activation`` defaults to ReLU,
which trains faster from scratch, and "tanh" restores the original flavour. The second conv is
'valid' as in the original, so inputs must be at least 10x10.
"""

from __future__ import annotations

import keras
from keras import layers

from pipelines.zoo import heads


def build(
    input_shape: tuple[int, int, int],
    num_classes: int,
    metadata_dim: int = 0,
    *,
    activation: str = "relu",
    dropout: float = 0.0,
    attention: bool = heads.HEAD_DEFAULTS["attention"],
    attention_heads: int = heads.HEAD_DEFAULTS["attention_heads"],
    metadata_units: int = heads.HEAD_DEFAULTS["metadata_units"],
    metadata_dropout: float = heads.HEAD_DEFAULTS["metadata_dropout"],
    name: str = "lenet5",
) -> keras.Model:
    """Build LeNet-5; ``features`` is the 16-channel map of the second convolution."""
    if min(input_shape[:2]) < 10:
        raise ValueError(f"lenet5 needs inputs of at least 10x10, got {input_shape}")
    image, metadata = heads.model_inputs(input_shape, metadata_dim)
    x = layers.Rescaling(1.0 / 255, name="rescale")(image)
    x = layers.Conv2D(6, 5, padding="same", activation=activation, name="c1")(x)
    x = layers.AveragePooling2D(2, name="s2")(x)
    x = layers.Conv2D(16, 5, padding="valid", activation=activation, name="c3")(x)
    x = heads.mark_features(x)
    if attention:
        x = heads.attention_pool(x, heads=attention_heads)
    else:
        x = layers.AveragePooling2D(2, padding="same", name="s4")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation=activation, name="c5")(x)
    x = layers.Dense(84, activation=activation, name="f6")(x)
    if dropout:
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
