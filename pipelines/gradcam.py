"""Grad-CAM heatmaps: where in the image the model looked for the class it scored.

Why: a clinician (and a reviewer of the model) needs to see whether a "melanoma" call rests on the
lesion or on a ruler, a hair or a dermatoscope vignette. Works on functional and Sequential Keras
models, with an optional "metadata" input beside "image", and with keras.applications backbones
nested as a single layer (the target layer may sit inside them).

The model is split at the target layer into head (inputs -> feature map) and tail (feature map,
inputs -> probabilities); the feature map is watched explicitly, so frozen (non-trainable)
backbones still give gradients.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import matplotlib
import numpy as np
import tensorflow as tf
from PIL import Image

from pipelines.plots import new_figure, save_figure, short_label

Head = Callable[[list[tf.Tensor]], tuple[tf.Tensor, Any]]
Tail = Callable[[tf.Tensor, Any], tf.Tensor]
IMAGE_KEY = "image"


def _graph_node_ids(model: keras.Model) -> set[int]:
    """Ids of the nodes that make up model's graph (Sequential keeps a Functional inside)."""
    graph = getattr(model, "_functional", None) or model
    by_depth = getattr(graph, "_nodes_by_depth", None)
    if by_depth is None:
        raise ValueError(
            f"{model.name}: Grad-CAM needs a functional or Sequential model; subclassed models "
            "have no graph to cut at a layer"
        )
    return {id(node) for nodes in by_depth.values() for node in nodes}


def _node(layer: keras.layers.Layer, model: keras.Model) -> Any:
    """The call of `layer` that belongs to `model` (a layer may be called in several graphs)."""
    ids = _graph_node_ids(model)
    for node in reversed(layer._inbound_nodes):
        if id(node) in ids:
            return node
    raise ValueError(f"layer {layer.name!r} is not called inside model {model.name!r}")


def _output(layer: keras.layers.Layer, model: keras.Model) -> Any:
    """Symbolic output of `layer` in `model` (for a nested model, its call site, not its inside)."""
    outputs = _node(layer, model).output_tensors
    if len(outputs) != 1:
        raise ValueError(f"layer {layer.name!r} has {len(outputs)} outputs; Grad-CAM needs one")
    return outputs[0]


def _rank(layer: keras.layers.Layer, model: keras.Model) -> int | None:
    try:
        return len(_output(layer, model).shape)
    except ValueError:
        return None


def _find_last_4d(model: keras.Model) -> list[keras.layers.Layer] | None:
    """Path to the last layer with a 4-D (N, H, W, C) output, looking inside nested models."""
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        rank = _rank(layer, model)
        if rank == 4:
            return [layer]
        if isinstance(layer, keras.Model):
            inner = _find_last_4d(layer)
            if inner:
                return [layer, *inner]
    return None


def _find_named(model: keras.Model, name: str) -> list[keras.layers.Layer] | None:
    """Path to the layer called `name`: this model's own layers first, then nested models."""
    for layer in model.layers:
        if layer.name == name:
            return [layer]
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            inner = _find_named(layer, name)
            if inner:
                return [layer, *inner]
    return None


def find_target_layer(
    model: keras.Model, layer_name: str | None = None
) -> list[keras.layers.Layer]:
    """Resolve the Grad-CAM layer as a path [outer layer, ..., target] through nested models."""
    if layer_name is None:
        path = _find_last_4d(model)
        if path is None:
            raise ValueError(f"{model.name}: no layer with a 4-D output to explain")
        return path
    path = _find_named(model, layer_name)
    if path is None:
        raise ValueError(f"{model.name}: no layer named {layer_name!r}")
    container = model if len(path) == 1 else path[-2]
    if _rank(path[-1], container) != 4:
        raise ValueError(f"layer {layer_name!r} has no 4-D (N, H, W, C) output")
    return path


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of model, nested models' layers included (each once)."""
    seen: dict[int, keras.layers.Layer] = {}
    stack: list[keras.layers.Layer] = [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen[id(layer)] = layer
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
    return list(seen.values())


@contextmanager
def _graph_preserved(model: keras.Model) -> Iterator[None]:
    """Undo the graph nodes that building the cut models adds to the model's layers.

    Keras records every functional graph built from a layer's tensors in that layer's node lists
    (and re-points the original Input tensors at the new nodes); left there, they break a later
    `model.save` ("could not find node key"). The cut models are only used inside this block.
    """
    layers = _all_layers(model)
    saved = [(layer, list(layer._inbound_nodes), list(layer._outbound_nodes)) for layer in layers]
    tensors = {
        id(t): (t, t._keras_history)
        for layer in layers for node in layer._inbound_nodes
        for t in (*node.output_tensors, *node.input_tensors) if hasattr(t, "_keras_history")
    }
    try:
        yield
    finally:
        for layer, inbound, outbound in saved:
            layer._inbound_nodes[:] = inbound
            layer._outbound_nodes[:] = outbound
        for tensor, history in tensors.values():
            tensor._keras_history = history


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _split(model: keras.Model, path: Sequence[keras.layers.Layer]) -> tuple[Head, Tail]:
    """Cut `model` at path[-1] into head (inputs -> features) and tail (features, ctx -> probs)."""
    if len(model.outputs) != 1:
        raise ValueError(f"{model.name}: Grad-CAM needs a single-output model")
    layer, rest = path[0], path[1:]
    inputs = list(model.inputs)
    cut = _output(layer, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tail may not use every original input: intended
        # Cutting at the model's own output (a backbone's last layer) leaves an identity tail.
        tail_model = (
            None if cut is model.outputs[0] else keras.Model([cut, *inputs], model.outputs[0])
        )
        if not rest:
            head_model = keras.Model(inputs, cut)
        else:
            feed = _as_list(_node(layer, model).input_tensors)
            input_pos = {id(t): i for i, t in enumerate(inputs)}
            feed_model = (
                None if all(id(t) in input_pos for t in feed) else keras.Model(inputs, feed)
            )

    if not rest:
        def head(xs: list[tf.Tensor]) -> tuple[tf.Tensor, Any]:
            return head_model(xs, training=False), xs

        def tail(feat: tf.Tensor, xs: Any) -> tf.Tensor:
            return feat if tail_model is None else tail_model([feat, *xs], training=False)

        return head, tail

    inner_head, inner_tail = _split(layer, rest)

    def nested_head(xs: list[tf.Tensor]) -> tuple[tf.Tensor, Any]:
        if feed_model is None:
            inner_xs = [xs[input_pos[id(t)]] for t in feed]
        else:
            inner_xs = _as_list(feed_model(xs, training=False))
        feat, inner_ctx = inner_head(inner_xs)
        return feat, (xs, inner_ctx)

    def nested_tail(feat: tf.Tensor, ctx: Any) -> tf.Tensor:
        xs, inner_ctx = ctx
        inner_out = inner_tail(feat, inner_ctx)
        return inner_out if tail_model is None else tail_model([inner_out, *xs], training=False)

    return nested_head, nested_tail


def _input_list(
    model: keras.Model, inputs: Mapping[str, np.ndarray] | np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """Order the caller's arrays like model.inputs; also return the image array (for its size)."""
    tensors = list(model.inputs)
    if not isinstance(inputs, Mapping):
        if len(tensors) != 1:
            names = [t.name for t in tensors]
            raise ValueError(f"model has inputs {names}: pass a dict of arrays")
        arrays = [np.asarray(inputs)]
        return arrays, arrays[0]
    graph = getattr(model, "_functional", None) or model
    struct = getattr(graph, "_inputs_struct", None)
    key_of = {id(t): k for k, t in struct.items()} if isinstance(struct, Mapping) else {}
    arrays = []
    for t in tensors:
        key = next((k for k in (key_of.get(id(t)), t.name) if k is not None and k in inputs), None)
        if key is None and len(tensors) == 1:
            key = IMAGE_KEY if IMAGE_KEY in inputs else (next(iter(inputs)) if len(inputs) == 1 else None)
        if key is None:
            raise ValueError(f"no array for model input {t.name!r}; got keys {sorted(inputs)}")
        arrays.append(np.asarray(inputs[key]))
    image = inputs.get(IMAGE_KEY)
    if image is None:
        image = next((a for a in arrays if a.ndim == 4), None)
    if image is None:
        raise ValueError("no 4-D image array among the inputs")
    return arrays, np.asarray(image)


def gradcam(
    model: keras.Model,
    inputs: dict[str, np.ndarray] | np.ndarray,
    class_index: int | Sequence[int] | None = None,
    layer_name: str | None = None,
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """Grad-CAM heatmaps (N, H, W) in [0, 1] at the input image resolution.

    inputs: the image batch, or a dict like {"image": ..., "metadata": ...} as the model takes it,
    already preprocessed the way the model expects. class_index: one class for all samples, one per
    sample, or None for each sample's predicted class. layer_name: the feature layer to explain
    (may live inside a nested backbone); None picks the last layer with a 4-D output.
    """
    arrays, image = _input_list(model, inputs)
    if image.ndim != 4:
        raise ValueError(f"image batch must be (N, H, W, C), got {image.shape}")
    n, height, width = image.shape[:3]
    if n == 0:
        return np.zeros((0, height, width), dtype=np.float32)
    if class_index is None:
        targets = None
    else:
        targets = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (n,))
        num_classes = model.outputs[0].shape[-1]
        if num_classes is not None and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(f"class_index must lie in [0, {num_classes - 1}]")
    path = find_target_layer(model, layer_name)
    with _graph_preserved(model):
        return _gradcam_batches(model, path, arrays, targets, (height, width), batch_size)


def _gradcam_batches(
    model: keras.Model,
    path: Sequence[keras.layers.Layer],
    arrays: Sequence[np.ndarray],
    targets: np.ndarray | None,
    size: tuple[int, int],
    batch_size: int,
) -> np.ndarray:
    """Heatmaps batch by batch: features from the head, gradients of the class score via the tail."""
    head, tail = _split(model, path)
    dtypes = [t.dtype for t in model.inputs]
    n = len(arrays[0])
    heatmaps = []
    for start in range(0, n, batch_size):
        xs = [
            tf.convert_to_tensor(a[start:start + batch_size], dtype=d)
            for a, d in zip(arrays, dtypes, strict=True)
        ]
        feat, ctx = head(xs)
        with tf.GradientTape() as tape:
            tape.watch(feat)
            probs = tail(feat, ctx)
            if targets is None:
                idx = tf.argmax(probs, axis=-1, output_type=tf.int64)
            else:
                idx = tf.constant(targets[start:start + batch_size])
            score = tf.gather(probs, idx, axis=1, batch_dims=1)
        grads = tape.gradient(score, feat)
        if grads is None:
            raise ValueError(f"layer {path[-1].name!r} does not influence the model output")
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * feat, axis=-1))
        cam = tf.image.resize(cam[..., None], size, method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.math.divide_no_nan(cam, peak)  # each map peaks at 1 (all-zero maps stay 0)
        heatmaps.append(np.clip(cam.numpy(), 0.0, 1.0).astype(np.float32))
    return np.concatenate(heatmaps, axis=0)


def _to_rgb_unit(image: np.ndarray) -> np.ndarray:
    """uint8 or 0..255 float (0..1 float tolerated), grey or RGB -> float RGB in [0, 1]."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] < 3:
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got {np.shape(image)}")
    img = img[..., :3]
    scale = 1.0 if (np.issubdtype(np.asarray(image).dtype, np.floating) and img.max() <= 1.0) else 255.0
    return np.clip(img / scale, 0.0, 1.0)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a jet-coloured heatmap over the image; float RGB in [0, 1] at the image size."""
    rgb = _to_rgb_unit(image)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != rgb.shape[:2]:
        size = (rgb.shape[1], rgb.shape[0])
        resized = Image.fromarray(heat).resize(size, Image.Resampling.BILINEAR)  # float32 -> mode F
        heat = np.asarray(resized)
    colour = matplotlib.colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3]
    return (1.0 - alpha) * rgb + alpha * colour


def save_gradcam_grid(
    images: np.ndarray,
    heatmaps: np.ndarray,
    titles: Sequence[str],
    path: Path | str,
    *,
    alpha: float = 0.4,
    cols: int = 4,
) -> Path:
    """Grid PNG of Grad-CAM overlays (jet, alpha 0.4), one panel per image with its title."""
    if len(images) != len(heatmaps):
        raise ValueError(f"{len(images)} images but {len(heatmaps)} heatmaps")
    if titles and len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    n = len(images)
    cols = max(1, min(cols, n)) if n else 1
    rows = max(1, math.ceil(n / cols))
    # Keep the caller's line breaks ("true X\npred Y 0.93"); wrap each line on its own. Each row
    # gets room for its longest title, so captions never run into the image above them.
    captions = ["\n".join(short_label(t, width=30, max_lines=2) for t in str(title).split("\n"))
                for title in titles] if titles else []
    caption_lines = max((c.count("\n") + 1 for c in captions), default=0)
    fig = new_figure(2.8 * cols, (2.8 + 0.2 * caption_lines) * rows)
    if n == 0:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no images for Grad-CAM", ha="center", va="center")
        ax.set_axis_off()
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(overlay(images[i], heatmaps[i], alpha), interpolation="nearest")
        if captions:
            ax.set_title(captions[i], fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, path)
