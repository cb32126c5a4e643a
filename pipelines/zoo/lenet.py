"""LeNet-5 (LeCun et al., 1998): the smallest convolutional baseline in the zoo.

conv 6@5x5 ('same', so 28- or 32-pixel inputs both work) -> 2x2 average pool ->
conv 16@5x5 ('valid') -> 2x2 average pool -> Dense 120 -> Dense 84 -> the shared head.
The 1998 network used scaled tanh and trainable subsampling; ``activation`` defaults to ReLU,
which trains faster from scratch, and "tanh" restores the original flavour. The second conv is
'valid' as in the original, so inputs must be at least 10x10.
"""

from __future__ import annotations

import keras
from keras import layers

from pipelines.zoo import heads


def build(*, activation: str = "relu", dropout: float = 0.0) -> heads.Body:
    """LeNet-5; ``features`` is the 16-channel map of the second convolution."""

    def stack(x: keras.KerasTensor) -> keras.KerasTensor:
        if min(x.shape[1:3]) < 10:
            raise ValueError(f"lenet5 needs inputs of at least 10x10, got {tuple(x.shape[1:])}")
        x = layers.Conv2D(6, 5, padding="same", activation=activation, name="c1")(x)
        x = layers.AveragePooling2D(2, name="s2")(x)
        return layers.Conv2D(16, 5, padding="valid", activation=activation, name="c3")(x)

    def top(x: keras.KerasTensor) -> keras.KerasTensor:
        x = layers.Dense(120, activation=activation, name="c5")(x)
        x = layers.Dense(84, activation=activation, name="f6")(x)
        return heads.dense_top(0, dropout)(x)

    return heads.Body(name="lenet5", stack=stack, top=top,
                      pool=layers.AveragePooling2D(2, padding="same", name="s4"))
