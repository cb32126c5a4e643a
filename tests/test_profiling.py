"""Model profiling: exact FLOPs on a hand-countable model, sane cost numbers on zoo models."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipelines.profiling import count_flops, profile_model
from pipelines.zoo import build_model

FAST = {"batch_sizes": (1, 4), "warmup": 1, "repeats": 3}


def test_flops_equal_twice_the_hand_counted_macs() -> None:
    inputs = keras.Input((4, 4, 3), name="image")
    x = keras.layers.Conv2D(2, 3, use_bias=False)(inputs)  # 2x2x2 outputs x 27 MACs = 216
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5, use_bias=False)(x)  # 8 x 5 MACs = 40
    assert count_flops(keras.Model(inputs, outputs)) == 2 * (216 + 40)


def _conv_dense_macs(model: keras.Model) -> int:
    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            macs += int(np.prod(layer.output.shape[1:]) * np.prod(layer.kernel.shape[:3]))
        elif isinstance(layer, keras.layers.Dense):
            macs += int(np.prod(layer.kernel.shape))
    return macs


@pytest.mark.parametrize("metadata_dim", [0, 3])
def test_profile_model_reports_sane_costs(metadata_dim: int) -> None:
    spec = {"builder": "custom_cnn", "conv_blocks": 2, "filters": 8, "dense_units": 16}
    model = build_model(spec, (32, 32, 3), 4, metadata_dim)
    report = profile_model(model, metadata_dim=metadata_dim, **FAST)
    assert report["params"] == model.count_params() > 0
    assert report["trainable_params"] == report["params"]
    # Conv/Dense dominate; bias adds and pooling add a little on top of 2 x MACs.
    assert 2 * _conv_dense_macs(model) <= report["flops"] <= 1.2 * 2 * _conv_dense_macs(model)
    assert report["params"] * 4 / 2**20 <= report["size_mb"] <= report["params"] * 4 / 2**20 + 1
    assert 0 < report["latency_ms_p50"] <= report["latency_ms_p95"] < 10_000
    assert report["throughput_ips"] > 0
    assert report["latency_batch_size"] == 1 and report["throughput_batch_size"] == 4
    assert set(report["per_batch"]) == {"1", "4"}
    assert report["throughput_ips"] == report["per_batch"]["4"]["throughput_ips"]


def test_profile_model_works_on_a_keras_application_with_attention() -> None:
    spec = {
        "builder": "keras_app",
        "backbone": "MobileNetV3Small",
        "alpha": 0.75,
        "attention": True,
    }
    report = profile_model(
        build_model(spec, (32, 32, 3), 3, 2), batch_sizes=(1, 2), warmup=1, repeats=2
    )
    assert report["flops"] > 2 * 1_000_000  # a few MFLOPs even at 32x32
    assert report["size_mb"] > 1


def test_profile_model_checks_its_arguments() -> None:
    model = build_model({"builder": "lenet5"}, (32, 32, 3), 3, 2)
    with pytest.raises(ValueError, match="metadata_dim=5"):
        profile_model(model, metadata_dim=5, **FAST)
    with pytest.raises(ValueError, match="batch_sizes"):
        profile_model(model, batch_sizes=(0,))
    with pytest.raises(ValueError, match="warmup"):
        profile_model(model, warmup=0)
