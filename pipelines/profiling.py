"""What a model costs to ship and run: parameters, FLOPs, file size, latency, throughput.

- ``flops``: floating-point operations of one image's forward pass, counted by TensorFlow's
  graph profiler (``tf.compat.v1.profiler``, ``float_operation``) on the model's inference
  graph traced at batch 1 with variables frozen to constants. It counts Conv2D/Depthwise/MatMul
  as 2 x MACs and also the element-wise ops it knows (bias adds, multiplies, ...); ops without
  a registered count (most activations) add nothing, so it is a little above 2 x MACs.
- ``size_mb``: size of the model saved as a ``.keras`` file (weights + config), in MiB.
- ``latency_ms_p50`` / ``latency_ms_p95``: wall time of one forward pass at the smallest batch
  size, through a ``tf.function`` calling ``model(x, training=False)``, after ``warmup`` calls
  (which also pay the tracing), over ``repeats`` timed calls, each ending in a device-to-host
  copy of the output so asynchronous execution cannot flatter it. Runs on ``device``
  (CPU by default: that is where diagnostic-support inference is assumed to run).
- ``throughput_ips``: images per second at the largest batch size, same procedure.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (  # no public equivalent in TF 2.21
    convert_variables_to_constants_v2,
)


def _input_specs(model: keras.Model, metadata_dim: int) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of each named model input; checks ``metadata_dim`` if one was given."""
    specs: dict[str, tuple[int, ...]] = {}
    for tensor in model.inputs:
        shape = tuple(tensor.shape[1:])
        if any(d is None for d in shape):
            raise ValueError(f"input {tensor.name!r} has an undefined dimension: {tensor.shape}")
        specs[tensor.name] = shape
    if metadata_dim and specs.get("metadata", (0,))[0] != metadata_dim:
        raise ValueError(
            f"metadata_dim={metadata_dim} but the model's metadata input is {specs.get('metadata')}"
        )
    return specs


def _in_model_structure(model: keras.Model, by_name: dict[str, Any]) -> Any:
    """Arrange per-input values like ``model.input`` (tensor, list or dict) to avoid warnings."""
    return keras.tree.map_structure(lambda t: by_name[t.name], model.input)


def _random_inputs(
    model: keras.Model, specs: dict[str, tuple[int, ...]], batch: int, rng: np.random.Generator
) -> Any:
    """Pixels uniform in [0, 255] for the image, standard normal for anything else."""
    out = {}
    for name, shape in specs.items():
        if name == "image":
            values = rng.uniform(0.0, 255.0, size=(batch, *shape))
        else:
            values = rng.standard_normal(size=(batch, *shape))
        out[name] = tf.constant(values, dtype=tf.float32)
    return _in_model_structure(model, out)


def count_flops(model: keras.Model) -> int:
    """FLOPs of one forward pass at batch 1 (inference mode), from TF's graph profiler."""
    specs = _input_specs(model, 0)
    signature = {
        name: tf.TensorSpec((1, *shape), tf.float32, name=name) for name, shape in specs.items()
    }

    @tf.function
    def forward(inputs: Any) -> tf.Tensor:
        return model(inputs, training=False)

    concrete = forward.get_concrete_function(_in_model_structure(model, signature))
    frozen = convert_variables_to_constants_v2(concrete)
    graph_def = frozen.graph.as_graph_def()
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        options = (
            tf.compat.v1.profiler.ProfileOptionBuilder(
                tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
            )
            .with_empty_output()
            .build()
        )
        logger, level = tf.get_logger(), tf.get_logger().level
        logger.setLevel("ERROR")  # the v1 profiler logs deprecation notices about itself
        try:
            report = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
        finally:
            logger.setLevel(level)
    return int(report.total_float_ops)


def saved_size_mb(model: keras.Model) -> float:
    """Size in MiB of the model written as a ``.keras`` archive."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        return os.path.getsize(path) / 2**20


def _time_calls(fn: Any, inputs: Any, warmup: int, repeats: int) -> np.ndarray:
    """Seconds per call, after ``warmup`` untimed calls; ``.numpy()`` forces completion."""
    for _ in range(warmup):
        fn(inputs).numpy()
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn(inputs).numpy()
        times[i] = time.perf_counter() - start
    return times


def profile_model(
    model: keras.Model,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 3,
    repeats: int = 20,
    metadata_dim: int = 0,
    device: str = "/CPU:0",
    seed: int = 0,
) -> dict[str, Any]:
    """Measure ``model`` (see the module docstring for what each number means).

    Returns ``params``, ``trainable_params``, ``flops``, ``flops_method``, ``size_mb``,
    ``latency_ms_p50``, ``latency_ms_p95`` (smallest batch size), ``throughput_ips`` (largest
    batch size), and ``per_batch``: {str(batch size): {p50_ms, p95_ms, throughput_ips}}.
    """
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes must be positive, got {batch_sizes}")
    if warmup < 1 or repeats < 1:
        raise ValueError("warmup and repeats must be >= 1 (warm-up also pays the tracing)")
    specs = _input_specs(model, metadata_dim)
    rng = np.random.default_rng(seed)
    flops = count_flops(model)

    @tf.function(reduce_retracing=True)
    def forward(inputs: Any) -> tf.Tensor:
        return model(inputs, training=False)

    per_batch: dict[str, dict[str, float]] = {}
    with tf.device(device):
        for batch in sorted(set(int(b) for b in batch_sizes)):
            inputs = _random_inputs(model, specs, batch, rng)
            seconds = _time_calls(forward, inputs, warmup, repeats)
            per_batch[str(batch)] = {
                "p50_ms": float(np.percentile(seconds, 50) * 1e3),
                "p95_ms": float(np.percentile(seconds, 95) * 1e3),
                "throughput_ips": float(batch * repeats / seconds.sum()),
            }
    smallest, largest = min(int(b) for b in per_batch), max(int(b) for b in per_batch)
    return {
        "params": int(model.count_params()),
        "trainable_params": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
        "flops": flops,
        "flops_method": "tf.compat.v1.profiler float_operation, frozen graph, batch 1",
        "size_mb": saved_size_mb(model),
        "latency_ms_p50": per_batch[str(smallest)]["p50_ms"],
        "latency_ms_p95": per_batch[str(smallest)]["p95_ms"],
        "latency_batch_size": smallest,
        "throughput_ips": per_batch[str(largest)]["throughput_ips"],
        "throughput_batch_size": largest,
        "device": device,
        "per_batch": per_batch,
    }
