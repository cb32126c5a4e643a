"""A small GoogLeNet-style network (Szegedy et al., 2014) built from inception blocks.

Stem: 3x3 conv -> 3x3/2 max-pool -> 1x1 conv -> 3x3 conv -> 3x3/2 max-pool (the original's
7x7/2 first conv becomes 3x3/1 for small inputs). Then the first ``blocks`` inception blocks
of GoogLeNet in order (3a, 3b, 4a..4e, 5a, 5b) with the original 3x3/2 max-pools after 3b
and 4e, each block's widths scaled by ``width``. Global average pool + Dropout(0.4) feed the
shared head, as in the original; the auxiliary classifiers are left out. Blocks are plain
Keras layers (four branches concatenated), so Grad-CAM and saving need nothing custom.
"""

from __future__ import annotations

import keras
from keras import layers

from pipelines.zoo import heads

# GoogLeNet Table 1: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) per block.
INCEPTION_BLOCKS: tuple[tuple[str, tuple[int, int, int, int, int, int]], ...] = (
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
)
POOL_AFTER = {"3b", "4e"}


def _conv(
    x: keras.KerasTensor, filters: int, kernel: int, name: str, strides: int = 1
) -> keras.KerasTensor:
    return layers.Conv2D(
        filters, kernel, strides=strides, padding="same", activation="relu", name=name
    )(x)


def inception_block(x: keras.KerasTensor, widths: tuple[int, ...], name: str) -> keras.KerasTensor:
    """Four parallel branches (1x1 | 1x1->3x3 | 1x1->5x5 | 3x3 pool->1x1), concatenated."""
    b1, r3, b3, r5, b5, pp = widths
    branch1 = _conv(x, b1, 1, f"{name}_1x1")
    branch3 = _conv(_conv(x, r3, 1, f"{name}_3x3_reduce"), b3, 3, f"{name}_3x3")
    branch5 = _conv(_conv(x, r5, 1, f"{name}_5x5_reduce"), b5, 5, f"{name}_5x5")
    pooled = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    branch_pool = _conv(pooled, pp, 1, f"{name}_pool_proj")
    return layers.Concatenate(name=f"{name}_concat")([branch1, branch3, branch5, branch_pool])


def build(*, blocks: int = 4, width: float = 0.25, dropout: float = 0.4) -> heads.Body:
    """The small GoogLeNet; ``features`` is the output of the last inception block."""
    if not 1 <= blocks <= len(INCEPTION_BLOCKS):
        raise ValueError(
            f"googlenet_small blocks must be in 1..{len(INCEPTION_BLOCKS)}, got {blocks!r}"
        )
    if width <= 0:
        raise ValueError(f"googlenet_small width must be > 0, got {width!r}")

    def scaled(n: int) -> int:
        return max(1, round(n * width))

    def stack(x: keras.KerasTensor) -> keras.KerasTensor:
        x = _conv(x, scaled(64), 3, "stem_conv1")
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool1")(x)
        x = _conv(x, scaled(64), 1, "stem_conv2_reduce")
        x = _conv(x, scaled(192), 3, "stem_conv2")
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool2")(x)
        chosen = INCEPTION_BLOCKS[:blocks]
        for i, (block_name, widths) in enumerate(chosen):
            x = inception_block(x, tuple(scaled(w) for w in widths), f"inception{block_name}")
            if block_name in POOL_AFTER and i < len(chosen) - 1:
                x = layers.MaxPooling2D(3, strides=2, padding="same",
                                        name=f"pool_after_{block_name}")(x)
        return x

    return heads.Body(name="googlenet_small", stack=stack,
                      pool=layers.GlobalAveragePooling2D(name="avg_pool"),
                      top=heads.dense_top(0, dropout))
