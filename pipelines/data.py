"""tf.data input pipelines: decode, resize, cache, shuffle (or class-balanced sampling), batch,
augment (train only), prefetch.

Images arrive as the normalised RGB PNGs written by ingest, so decoding is uniform. Decoded,
resized images are cached in memory as uint8 (a quarter of the float32 footprint) after the
first epoch; augmentation runs after the cache, on whole batches, so every epoch sees fresh
random transforms at a fraction of the per-image cost. Each image's per-channel mean (what
contrast pivots on) is cached beside it: no symmetry of the square changes it. The random draws
are made in the graph, the pixel work (one gather for the geometry, one affine colour map, the
clip) is compiled with XLA, which fuses it: 1.5x the uncompiled pipeline, side by side
(bench/results/training_speed.md).

Augmentation (params.yaml `augment`), applied per image but vectorised over the batch:
- exact geometry: random horizontal/vertical flips and random 90-degree rotations
  (``tf.image.rot90``; both together: a uniform draw from the 8 symmetries of the square);
  cells and lesions have no canonical orientation and these lose no pixel;
- colour/stain: hue and saturation (a rotation and scaling of chroma in YIQ space), brightness
  and contrast, one random draw per image and all folded into one affine colour map, because
  stain and lighting differ from slide to slide and camera to camera;
- opt-in interpolating geometry (``rotation``/``zoom``/``shift``, Keras layers, reflect fill):
  5-7x slower than all of the above together (bench/results/training_speed.md).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
SAMPLING = ("natural", "balanced")
# Cached beside "image" and removed before a batch leaves make_dataset (never a model input).
CHANNEL_MEAN = "_channel_mean"


def slow_geometry(params: Mapping) -> keras.Sequential:
    """The opt-in interpolating transforms (Keras preprocessing layers, reflect fill)."""
    layers: list[keras.layers.Layer] = []
    if params.get("rotation"):
        layers.append(keras.layers.RandomRotation(params["rotation"], fill_mode="reflect"))
    if params.get("zoom"):
        layers.append(keras.layers.RandomZoom(params["zoom"], fill_mode="reflect"))
    if params.get("shift"):
        layers.append(keras.layers.RandomTranslation(params["shift"], params["shift"], fill_mode="reflect"))
    return keras.Sequential(layers, name="slow_geometry")


def _per_image(seed: tf.Tensor, n: tf.Tensor, low: float, high: float) -> tf.Tensor:
    """One uniform draw per image, shaped [B]."""
    return tf.random.stateless_uniform([n], seed, low, high)


def _turn(k: int) -> Callable[[tf.Tensor], tf.Tensor]:
    return lambda x: tf.image.rot90(x, k)


def _transposed(view: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[tf.Tensor], tf.Tensor]:
    return lambda x: view(tf.transpose(x, [0, 2, 1, 3]))


SYMMETRIES = ("flips", "rot90", "d4")


def symmetries(kind: str) -> list[Callable[[tf.Tensor], tf.Tensor]]:
    """Exact views of a batch of square images [B, S, S, C], the identity first.

    ``flips``: identity, horizontal, vertical, both; ``rot90``: the four turns by 90 degrees;
    ``d4``: all eight symmetries of the square (the four turns, with and without a transpose).
    Shared by training augmentation and test-time augmentation (pipelines.inference).
    """
    if kind == "flips":
        return [lambda x: x, tf.image.flip_left_right, tf.image.flip_up_down, _turn(2)]
    if kind == "rot90":
        return [_turn(k) for k in range(4)]
    if kind == "d4":
        return [_turn(k) for k in range(4)] + [_transposed(_turn(k)) for k in range(4)]
    raise ValueError(f"unknown symmetry group {kind!r}; choose one of {list(SYMMETRIES)}")


def apply_views(images: tf.Tensor, kind: str, view: tf.Tensor) -> tf.Tensor:
    """Image i through view ``view[i]`` of ``symmetries(kind)``, exactly.

    Every view of a square image is a fixed permutation of its pixels: the views are applied
    once to a grid of pixel indices, and each image is then one gather of its view's
    permutation (one pass over the bytes, and XLA-compilable, unlike a partition and stitch).
    """
    shape = tf.shape(images)
    n, size = shape[0], shape[1]
    grid = tf.reshape(tf.range(size * size), [1, size, size, 1])
    permutations = tf.stack([tf.reshape(v(grid), [-1]) for v in symmetries(kind)])  # [views, S*S]
    pixels = tf.reshape(images, [n, size * size, shape[3]])
    return tf.reshape(tf.gather(pixels, tf.gather(permutations, view), batch_dims=1), shape)


def random_symmetry(images: tf.Tensor, kind: str, seed: tf.Tensor) -> tf.Tensor:
    """Each image through its own uniformly drawn view from ``symmetries(kind)`` (exact)."""
    n = tf.shape(images)[0]
    view = tf.random.stateless_uniform([n], seed, 0, len(symmetries(kind)), dtype=tf.int32)
    return apply_views(images, kind, view)


# RGB <-> YIQ: Y is luma; hue is the angle and saturation the radius of (I, Q). A hue shift and a
# saturation change are then one 3x3 matrix per image, far cheaper than an HSV round trip.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def colour_matrices(hue_turns: tf.Tensor, saturation: tf.Tensor) -> tf.Tensor:
    """[B, 3, 3] matrices M with rgb_row @ M = the pixel with hue rotated and saturation scaled.

    ``hue_turns`` is the hue shift as a fraction of the full circle, ``saturation`` the factor
    on chroma; (0, 1) gives the identity and greys stay grey for any values.
    """
    angle = 2.0 * np.pi * hue_turns
    cos, sin = tf.cos(angle) * saturation, tf.sin(angle) * saturation
    one, zero = tf.ones_like(cos), tf.zeros_like(cos)
    rotate = tf.stack([tf.stack([one, zero, zero], -1), tf.stack([zero, cos, -sin], -1),
                       tf.stack([zero, sin, cos], -1)], -2)  # [B, 3, 3] acting on YIQ columns
    to_yiq = tf.constant(_RGB_TO_YIQ, tf.float32)
    to_rgb = tf.constant(_YIQ_TO_RGB, tf.float32)
    # Column form: rgb' = to_rgb @ rotate @ to_yiq @ rgb; row form transposes the product.
    return tf.transpose(to_rgb[None] @ rotate @ to_yiq[None], [0, 2, 1])


def _symmetry_group(params: Mapping) -> str | None:
    """The group the recipe's exact geometry draws from (None: no geometry)."""
    flip, rot90 = bool(params.get("flip")), bool(params.get("rot90"))
    return "d4" if flip and rot90 else "flips" if flip else "rot90" if rot90 else None


def _colour_ranges(params: Mapping) -> tuple[float, float, float, float]:
    return tuple(float(params.get(k) or 0.0) for k in ("hue", "saturation", "brightness", "contrast"))


def draw_augmentation(params: Mapping, seed: tf.Tensor, n: tf.Tensor) -> dict[str, tf.Tensor]:
    """The recipe's random draws for a batch of ``n`` images, one of each per image.

    ``seed`` is a stateless seed pair; each transform derives its own, so a batch is
    reproducible. Drawn outside the compiled pixel work (XLA would pick another random
    algorithm), so a seed gives the same transforms compiled or not.
    """
    seeds = tf.random.experimental.stateless_split(seed, 5)
    group = _symmetry_group(params)
    hue, saturation, brightness, contrast = _colour_ranges(params)
    draws = {
        "turns": _per_image(seeds[1], n, -hue, hue) if hue else tf.zeros([n]),
        "chroma": _per_image(seeds[2], n, 1 - saturation, 1 + saturation) if saturation else tf.ones([n]),
        "factor": _per_image(seeds[3], n, 1 - contrast, 1 + contrast) if contrast else tf.ones([n]),
        "shift": 255.0 * _per_image(seeds[4], n, -brightness, brightness) if brightness else tf.zeros([n]),
    }
    if group:
        draws["view"] = tf.random.stateless_uniform([n], seeds[0], 0, len(symmetries(group)), dtype=tf.int32)
    return draws


def apply_augmentation(images: tf.Tensor, params: Mapping, draws: Mapping[str, tf.Tensor],
                       channel_mean: tf.Tensor | None = None) -> tf.Tensor:
    """The recipe's pixel work for given draws: [B, S, S, 3] uint8 or float -> float32 in [0, 255].

    Geometry runs first, on the input dtype (uint8 from the cache: a quarter of the bytes to
    move). Colour is then one affine map per image: x @ (c * M) + offset, with M the hue and
    saturation matrix, c the contrast factor about the per-channel mean (as
    ``tf.image.adjust_contrast``) and the brightness shift folded into the offset.
    ``channel_mean`` [B, 3] is each input image's per-channel mean when already known (the cache
    keeps it); otherwise it is computed here. Pure tensor work: make_dataset compiles it (XLA).
    """
    group = _symmetry_group(params)
    x = apply_views(images, group, draws["view"]) if group else images
    x = tf.cast(x, tf.float32)
    if not any(_colour_ranges(params)):
        return x
    matrix = colour_matrices(draws["turns"], draws["chroma"])                # [B, 3, 3]
    if channel_mean is None:
        channel_mean = tf.reduce_mean(x, axis=[1, 2])
    mean = tf.einsum("bc,bcd->bd", tf.cast(channel_mean, tf.float32), matrix)  # [B, 3] after colour
    factor = draws["factor"]
    offset = (1.0 - factor)[:, None] * mean + draws["shift"][:, None]
    x = tf.einsum("bhwc,bcd->bhwd", x, matrix * factor[:, None, None]) + offset[:, None, None, :]
    return tf.clip_by_value(x, 0.0, 255.0)


def augment_batch(images: tf.Tensor, params: Mapping, seed: tf.Tensor,
                  channel_mean: tf.Tensor | None = None) -> tf.Tensor:
    """The fast recipe on a batch (``draw_augmentation`` then ``apply_augmentation``)."""
    return apply_augmentation(images, params, draw_augmentation(params, seed, tf.shape(images)[0]),
                              channel_mean)


def _decoded(path: tf.Tensor, image_size: int) -> dict[str, tf.Tensor]:
    """The cached image features: the uint8 image and its per-channel mean (float32 [3])."""
    image = decode_image(path, image_size)
    return {"image": image, CHANNEL_MEAN: tf.reduce_mean(tf.cast(image, tf.float32), axis=[0, 1])}


def decode_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """PNG bytes on disk -> uint8 [size, size, 3] (resized with antialiasing, rounded)."""
    return resize_pixels(tf.io.decode_png(tf.io.read_file(path), channels=3), image_size)


def resize_pixels(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: the one resize of training, evaluation and serving."""
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def _examples(frame: pd.DataFrame, root: Path, class_names: Sequence[str], image_size: int,
              metadata: np.ndarray | None, with_labels: bool) -> tf.data.Dataset:
    """Cached, unbatched (features[, one-hot label]) for the rows of `frame`."""
    files = [str(root / p) for p in frame["path"]]
    features = tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string)).map(
        lambda p: _decoded(p, image_size), num_parallel_calls=AUTOTUNE)
    if metadata is not None and metadata.shape[1] > 0:
        features = tf.data.Dataset.zip((features, tf.data.Dataset.from_tensor_slices(
            metadata.astype(np.float32)))).map(lambda f, m: {**f, "metadata": m})
    if not with_labels:
        return features.cache()
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([index[c] for c in frame["label"]], np.int64)
    onehot = tf.one_hot(labels, len(class_names), dtype=tf.float32)
    return tf.data.Dataset.zip((features, tf.data.Dataset.from_tensor_slices(onehot))).cache()


def _balanced(frame: pd.DataFrame, class_names: Sequence[str], metadata: np.ndarray | None, build,
              seed: int) -> tf.data.Dataset:
    """Endless stream drawing every class present with equal probability (each class cached once)."""
    labels = frame["label"].to_numpy()
    present = [c for c in class_names if c in set(labels)]
    streams = []
    for c in present:
        rows = np.flatnonzero(labels == c)
        part = build(frame.iloc[rows], None if metadata is None else metadata[rows])
        streams.append(part.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True).repeat())
    return tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 / len(streams)] * len(streams),
                                                seed=seed)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one pass over `n` examples (what an endless balanced stream calls an epoch)."""
    return max(1, math.ceil(n / batch_size))


def make_dataset(
    frame: pd.DataFrame,
    root: Path,
    class_names: Sequence[str],
    image_size: int,
    batch_size: int,
    *,
    metadata: np.ndarray | None = None,
    training: bool = False,
    augment: Mapping | None = None,
    seed: int = 0,
    with_labels: bool = True,
    sampling: str = "natural",
) -> tf.data.Dataset:
    """Batches of ({"image": float32 in [0, 255], ["metadata": ...]}, one-hot labels) for one split.

    ``sampling="balanced"`` (training only) returns an *endless* stream in which every class is
    equally likely; pass ``steps_per_epoch(len(frame), batch_size)`` to ``fit``.
    """
    if sampling not in SAMPLING:
        raise ValueError(f"unknown sampling {sampling!r}; choose one of {list(SAMPLING)}")
    if sampling == "balanced" and not (training and with_labels):
        raise ValueError("balanced sampling applies to a labelled training split only")

    def build(rows: pd.DataFrame, meta: np.ndarray | None) -> tf.data.Dataset:
        return _examples(rows, root, class_names, image_size, meta, with_labels)

    if sampling == "balanced":
        ds = _balanced(frame, class_names, metadata, build, seed)
    else:
        ds = build(frame, metadata)
        if training:
            ds = ds.shuffle(max(len(frame), 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    recipe = dict(augment or {}) if training else {}
    slow = slow_geometry(recipe)

    def with_image(x: Mapping, image: tf.Tensor) -> dict:
        """The model's features: `image` replaced, the cached channel mean dropped."""
        return {**{k: v for k, v in x.items() if k != CHANNEL_MEAN}, "image": image}

    if any(recipe.get(k) for k in ("flip", "rot90", "hue", "saturation", "brightness", "contrast")):
        # A stateless seed pair per batch: (seed, a random draw re-drawn every epoch), so a run is
        # reproducible from its seed and every epoch still sees fresh transforms.
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        @tf.function(jit_compile=True)  # XLA fuses the gather, cast, colour map and clip
        def pixels(images, draws, mean):
            return apply_augmentation(images, recipe, draws, mean)

        def fast(batch, draw):
            x, *y = batch if isinstance(batch, tuple) else (batch,)
            pair = tf.stack([tf.constant(seed, tf.int64), draw])
            draws = draw_augmentation(recipe, pair, tf.shape(x["image"])[0])
            x = with_image(x, pixels(x["image"], draws, x[CHANNEL_MEAN]))
            return (x, *y) if y else x

        ds = tf.data.Dataset.zip((ds, draws)).map(fast, num_parallel_calls=AUTOTUNE)
    else:
        def to_float(x, *y):  # uint8 from the cache -> float32 in [0, 255]
            x = with_image(x, tf.cast(x["image"], tf.float32))
            return (x, *y) if y else x

        ds = ds.map(to_float, num_parallel_calls=AUTOTUNE)
    if slow.layers:
        def apply(x, *y):
            x = with_image(x, slow(x["image"], training=True))
            return (x, *y) if y else x

        ds = ds.map(apply, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
