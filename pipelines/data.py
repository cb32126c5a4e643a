"""tf.data input pipelines: decode, resize, cache, shuffle, batch, augment (train only), prefetch.

Images arrive as the normalised RGB PNGs written by ingest, so decoding is uniform. Decoded,
resized images are cached in memory after the first epoch; augmentation runs after the cache so
every epoch sees fresh random transforms.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import keras

AUTOTUNE = tf.data.AUTOTUNE


def augmentation(params: Mapping) -> keras.Sequential:
    """Keras preprocessing layers from the params.yaml `augment` section (identity when all off)."""
    layers: list[keras.layers.Layer] = []
    if params.get("flip"):
        layers.append(keras.layers.RandomFlip("horizontal_and_vertical"))
    if params.get("rotation"):
        layers.append(keras.layers.RandomRotation(params["rotation"], fill_mode="reflect"))
    if params.get("zoom"):
        layers.append(keras.layers.RandomZoom(params["zoom"], fill_mode="reflect"))
    if params.get("shift"):
        layers.append(keras.layers.RandomTranslation(params["shift"], params["shift"], fill_mode="reflect"))
    if params.get("brightness"):
        layers.append(keras.layers.RandomBrightness(params["brightness"], value_range=(0, 255)))
    if params.get("contrast"):
        layers.append(keras.layers.RandomContrast(params["contrast"]))
    return keras.Sequential(layers, name="augmentation")


def decode_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """PNG bytes on disk -> float32 [size, size, 3] in [0, 255]."""
    image = tf.io.decode_png(tf.io.read_file(path), channels=3)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


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
) -> tf.data.Dataset:
    """Batches of ({"image": ..., ["metadata": ...]}, one-hot labels) for one split."""
    files = [str(root / p) for p in frame["path"]]
    features: dict[str, tf.data.Dataset] = {"image": tf.data.Dataset.from_tensor_slices(files).map(
        lambda p: decode_image(p, image_size), num_parallel_calls=AUTOTUNE)}
    if metadata is not None and metadata.shape[1] > 0:
        features["metadata"] = tf.data.Dataset.from_tensor_slices(metadata.astype(np.float32))
    parts: tuple = (tf.data.Dataset.zip(features),)
    if with_labels:
        index = {c: i for i, c in enumerate(class_names)}
        labels = np.array([index[c] for c in frame["label"]], np.int64)
        onehot = tf.one_hot(labels, len(class_names), dtype=tf.float32)
        parts += (tf.data.Dataset.from_tensor_slices(onehot),)
    ds = tf.data.Dataset.zip(parts if with_labels else parts[0]).cache()
    if training:
        ds = ds.shuffle(max(len(files), 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if training and augment:
        aug = augmentation(augment)
        if aug.layers:
            def apply(x, *y):
                x = dict(x)
                x["image"] = aug(x["image"], training=True)
                return (x, *y) if y else x
            ds = ds.map(apply, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
