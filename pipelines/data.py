"""tf.data input pipelines: decode, resize, cache, shuffle (or class-balanced sampling), batch,
augment (train only), prefetch.

Images arrive as the normalised RGB PNGs written by ingest, so decoding is uniform. Decoded,
resized images are cached in memory as uint8 (a quarter of the float32 footprint) after the
first epoch; augmentation runs after the cache, on whole batches, so every epoch sees fresh
random transforms at a fraction of the per-image cost.

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


def random_symmetry(images: tf.Tensor, kind: str, seed: tf.Tensor) -> tf.Tensor:
    """Each image through its own uniformly drawn view from ``symmetries(kind)`` (exact).

    The batch is partitioned by the drawn view, each part transformed once, then stitched back
    in order: three passes over the bytes, against ~4 for a per-image ``tf.where`` per transform.
    """
    views = symmetries(kind)
    n = tf.shape(images)[0]
    choice = tf.random.stateless_uniform([n], seed, 0, len(views), dtype=tf.int32)
    parts = tf.dynamic_partition(images, choice, len(views))
    rows = tf.dynamic_partition(tf.range(n), choice, len(views))
    return tf.dynamic_stitch(rows, [view(part) for view, part in zip(views, parts)])


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


def augment_batch(images: tf.Tensor, params: Mapping, seed: tf.Tensor) -> tf.Tensor:
    """The fast recipe on a batch [B, S, S, 3] (uint8 or float in [0, 255]) -> float32 in [0, 255].

    Geometry runs first, on the input dtype (uint8 from the cache: a quarter of the bytes to
    move). Colour is then one affine map per image: x @ (c * M) + offset, with M the hue and
    saturation matrix, c the contrast factor about the per-channel mean (as
    ``tf.image.adjust_contrast``) and the brightness shift folded into the offset. ``seed`` is a
    stateless seed pair; each transform derives its own, so a batch is reproducible.
    """
    seeds = tf.random.experimental.stateless_split(seed, 5)
    n = tf.shape(images)[0]
    flip, rot90 = bool(params.get("flip")), bool(params.get("rot90"))
    x = images
    if flip or rot90:
        x = random_symmetry(x, "d4" if flip and rot90 else "flips" if flip else "rot90", seeds[0])
    x = tf.cast(x, tf.float32)
    hue, saturation = float(params.get("hue") or 0.0), float(params.get("saturation") or 0.0)
    brightness, contrast = float(params.get("brightness") or 0.0), float(params.get("contrast") or 0.0)
    if not (hue or saturation or brightness or contrast):
        return x
    turns = _per_image(seeds[1], n, -hue, hue) if hue else tf.zeros([n])
    chroma = _per_image(seeds[2], n, 1 - saturation, 1 + saturation) if saturation else tf.ones([n])
    factor = _per_image(seeds[3], n, 1 - contrast, 1 + contrast) if contrast else tf.ones([n])
    shift = 255.0 * _per_image(seeds[4], n, -brightness, brightness) if brightness else tf.zeros([n])
    matrix = colour_matrices(turns, chroma)                                  # [B, 3, 3]
    mean = tf.einsum("bc,bcd->bd", tf.reduce_mean(x, axis=[1, 2]), matrix)   # [B, 3] after colour
    offset = (1.0 - factor)[:, None] * mean + shift[:, None]
    x = tf.einsum("bhwc,bcd->bhwd", x, matrix * factor[:, None, None]) + offset[:, None, None, :]
    return tf.clip_by_value(x, 0.0, 255.0)


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
    features: dict[str, tf.data.Dataset] = {"image": tf.data.Dataset.from_tensor_slices(
        tf.constant(files, tf.string)).map(lambda p: decode_image(p, image_size), num_parallel_calls=AUTOTUNE)}
    if metadata is not None and metadata.shape[1] > 0:
        features["metadata"] = tf.data.Dataset.from_tensor_slices(metadata.astype(np.float32))
    if not with_labels:
        return tf.data.Dataset.zip(features).cache()
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([index[c] for c in frame["label"]], np.int64)
    onehot = tf.one_hot(labels, len(class_names), dtype=tf.float32)
    return tf.data.Dataset.zip((tf.data.Dataset.zip(features), tf.data.Dataset.from_tensor_slices(onehot))).cache()


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
        return {**x, "image": image}

    if any(recipe.get(k) for k in ("flip", "rot90", "hue", "saturation", "brightness", "contrast")):
        # A stateless seed pair per batch: (seed, a random draw re-drawn every epoch), so a run is
        # reproducible from its seed and every epoch still sees fresh transforms.
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def fast(batch, draw):
            x, *y = batch if isinstance(batch, tuple) else (batch,)
            pair = tf.stack([tf.constant(seed, tf.int64), draw])
            x = with_image(x, augment_batch(x["image"], recipe, pair))
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
