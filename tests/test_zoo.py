"""Model zoo: every family and backbone builds and predicts, saves and reloads, loads weight files.

Sizes are the smallest each network accepts (32x32; 75x75 for InceptionResNetV2) and only
forward passes run, so the file stays fast on a shared 2-core machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from pipelines import zoo
from pipelines.zoo import BACKBONES, BUILDERS, build_model, custom_cnn, keras_apps, split_image_size
from pipelines.zoo.heads import SoftAttention

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
META = 4
SMALL = (32, 32, 3)


def _inputs(
    input_shape: tuple[int, int, int], metadata_dim: int, batch: int = 2, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = {"image": rng.uniform(0, 255, size=(batch, *input_shape)).astype("float32")}
    if metadata_dim:
        x["metadata"] = rng.standard_normal((batch, metadata_dim)).astype("float32")
    return x


def _check_contract(
    model: keras.Model, input_shape: tuple[int, int, int], metadata_dim: int, attention: bool
) -> None:
    """Shapes, names and probabilities the train/evaluate/Grad-CAM stages rely on."""
    names = [t.name for t in model.inputs]
    assert names == (["image", "metadata"] if metadata_dim else ["image"])
    assert tuple(model.inputs[0].shape[1:]) == input_shape
    assert model.output.dtype == "float32"
    assert model.layers[-1].name == zoo.PROBS_LAYER
    assert len(model.get_layer(zoo.FEATURES_LAYER).output.shape) == 4
    layer_names = {layer.name for layer in model.layers}
    assert (zoo.ATTENTION_LAYER in layer_names) is attention
    probs = np.asarray(model(_inputs(input_shape, metadata_dim), training=False))
    assert probs.shape == (2, NUM_CLASSES)
    assert probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


SMALL_FAMILIES = ["custom_cnn", "malaria_cnn", "lenet5", "alexnet_small", "googlenet_small"]


@pytest.mark.parametrize("attention", [False, True], ids=["plain", "attention"])
@pytest.mark.parametrize("metadata_dim", [0, META], ids=["image", "metadata"])
@pytest.mark.parametrize("builder", SMALL_FAMILIES)
def test_small_families_build_and_predict(builder: str, metadata_dim: int, attention: bool) -> None:
    model = build_model(
        {"builder": builder, "attention": attention}, SMALL, NUM_CLASSES, metadata_dim
    )
    _check_contract(model, SMALL, metadata_dim, attention)


@pytest.mark.parametrize("conv_blocks", sorted(custom_cnn.LAYOUTS))
def test_custom_cnn_depths_follow_the_study_table(conv_blocks: int) -> None:
    model = build_model(
        {"builder": "custom_cnn", "conv_blocks": conv_blocks, "filters": 8}, SMALL, NUM_CLASSES
    )
    convs = [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]
    pools = [la for la in model.layers if isinstance(la, keras.layers.MaxPooling2D)]
    expected_convs, expected_pools = {
        1: (2, 2),
        2: (3, 2),
        3: (4, 2),
        4: (4, 3),
        5: (5, 3),
        6: (6, 3),
    }[conv_blocks]
    assert (len(convs), len(pools)) == (expected_convs, expected_pools)
    assert [c.filters for c in convs][-1] == 8 * 2 ** (len(custom_cnn.LAYOUTS[conv_blocks]) - 1)
    _check_contract(model, SMALL, 0, attention=False)


def _size(backbone: str) -> tuple[int, int, int]:
    side = keras_apps.min_input_size(backbone)
    return (side, side, 3)


# Every backbone with attention + metadata and, except the two slowest (built once, at their
# minimum size), plain; the head code is shared, so the full 2x2 grid runs on the cheapest
# backbone only.
SLOW_BACKBONES = {"DenseNet201", "InceptionResNetV2"}
APP_CASES = (
    [(b, True, META) for b in BACKBONES]
    + [(b, False, 0) for b in BACKBONES if b not in SLOW_BACKBONES]
    + [("MobileNetV3Small", True, 0), ("MobileNetV3Small", False, META)]
)


@pytest.mark.parametrize(("backbone", "attention", "metadata_dim"), APP_CASES)
def test_keras_app_backbones_build_and_predict(
    backbone: str, attention: bool, metadata_dim: int
) -> None:
    spec = {"builder": "keras_app", "backbone": backbone, "attention": attention}
    model = build_model(spec, _size(backbone), NUM_CLASSES, metadata_dim)
    _check_contract(model, _size(backbone), metadata_dim, attention)


def test_min_input_sizes_are_enforced() -> None:
    with pytest.raises(ValueError, match="at least 75x75"):
        build_model(
            {"builder": "keras_app", "backbone": "InceptionResNetV2"}, (64, 64, 3), NUM_CLASSES
        )
    with pytest.raises(ValueError, match="at least 10x10"):
        build_model({"builder": "lenet5"}, (8, 8, 3), NUM_CLASSES)


ROUND_TRIP_SPECS = [
    ({"builder": "custom_cnn", "conv_blocks": 2, "filters": 8}, SMALL),
    ({"builder": "malaria_cnn"}, SMALL),
    ({"builder": "lenet5"}, SMALL),
    ({"builder": "alexnet_small", "filters": [8, 16, 16, 16, 8], "dense_units": 32}, SMALL),
    ({"builder": "googlenet_small", "blocks": 3, "width": 0.125}, SMALL),
    ({"builder": "keras_app", "backbone": "MobileNetV2", "alpha": 0.35}, (64, 64, 3)),
    ({"builder": "keras_app", "backbone": "MobileNetV3Small", "alpha": 0.75}, SMALL),
    ({"builder": "keras_app", "backbone": "EfficientNetB0"}, SMALL),
]


@pytest.mark.parametrize(
    ("spec", "input_shape"),
    ROUND_TRIP_SPECS,
    ids=[s.get("backbone", s["builder"]) for s, _ in ROUND_TRIP_SPECS],
)
def test_attention_metadata_models_survive_save_and_load(
    spec: dict[str, Any], input_shape: tuple[int, int, int], tmp_path: Path
) -> None:
    model = build_model({**spec, "attention": True}, input_shape, NUM_CLASSES, META)
    # Nudge gamma off its initial value so the reload must restore it, not re-initialise it.
    attention = model.get_layer(zoo.ATTENTION_LAYER)
    attention.gamma.assign(0.37)
    x = _inputs(input_shape, META, batch=3)
    before = np.asarray(model(x, training=False))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = zoo.load_model(path, compile=False)
    after = np.asarray(loaded(x, training=False))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    assert float(loaded.get_layer(zoo.ATTENTION_LAYER).gamma.numpy()) == pytest.approx(0.37)
    assert [t.name for t in loaded.inputs] == ["image", "metadata"]


def _backbone_weights(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(w) for w in zoo.feature_extractor(model).weights]


def _assert_same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b) > 0
    for wa, wb in zip(a, b, strict=True):
        np.testing.assert_array_equal(wa, wb)


MOBILE = {"builder": "keras_app", "backbone": "MobileNetV2", "alpha": 0.35}


@pytest.fixture(scope="module")
def scratch_mobilenet() -> keras.Model:
    """A scratch MobileNetV2 model whose backbone weights the weight-file tests export."""
    return build_model(MOBILE, SMALL, NUM_CLASSES)


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.filterwarnings("ignore:Skipping loading weights for layer")
@pytest.mark.parametrize("export", ["native", "legacy_backbone", "legacy_full_model"])
def test_weights_from_file_load_into_backbone(
    export: str, scratch_mobilenet: keras.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = scratch_mobilenet
    if export == "native":  # Keras 3 format, by structure
        path = tmp_path / "backbone.weights.h5"
        zoo.feature_extractor(source).save_weights(path)
    elif export == "legacy_backbone":  # the format of Keras's ImageNet files, by name
        path = tmp_path / "backbone.h5"
        zoo.feature_extractor(source).save(path)
    else:  # a whole legacy model with another head: head layers are ignored or skipped
        path = tmp_path / "full.h5"
        source.save(path)
    # Relative paths are resolved against the project root (MEDSCAN_ROOT), like params.yaml paths.
    monkeypatch.setenv("MEDSCAN_ROOT", str(tmp_path))
    target = build_model(
        {**MOBILE, "weights": path.name, "attention": True}, SMALL, NUM_CLASSES + 2, META
    )
    _assert_same_weights(_backbone_weights(source), _backbone_weights(target))
    x = _inputs(SMALL, 0)["image"]
    np.testing.assert_allclose(
        np.asarray(zoo.feature_extractor(target)(x, training=False)),
        np.asarray(zoo.feature_extractor(source)(x, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # Keras lists every layer it skipped
def test_weights_file_that_matches_nothing_is_an_error(tmp_path: Path) -> None:
    other = build_model({"builder": "lenet5"}, SMALL, NUM_CLASSES)
    native, legacy = tmp_path / "lenet.weights.h5", tmp_path / "lenet.h5"
    zoo.feature_extractor(other).save_weights(native)
    zoo.feature_extractor(other).save(legacy)
    for path in (native, legacy):
        with pytest.raises(ValueError, match="no weights"):
            build_model({**MOBILE, "weights": str(path)}, SMALL, NUM_CLASSES)
    with pytest.raises(FileNotFoundError):
        build_model({**MOBILE, "weights": str(tmp_path / "missing.h5")}, SMALL, NUM_CLASSES)


def test_imagenet_weights_are_requested_from_keras(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ``weights="imagenet"`` call is made (it downloads; here that is replaced)."""
    calls: list[dict[str, Any]] = []
    real = keras.applications.MobileNetV2

    def recording(**kwargs: Any) -> keras.Model:
        calls.append(dict(kwargs))
        return real(**{**kwargs, "weights": None})

    monkeypatch.setitem(keras_apps.BACKBONES, "MobileNetV2", (recording, "tf", 32, True))
    build_model({**MOBILE, "weights": "imagenet"}, (96, 96, 3), NUM_CLASSES)
    assert calls[0]["weights"] == "imagenet"
    assert calls[0]["include_top"] is False


def test_backbone_freezing_and_partial_fine_tuning(scratch_mobilenet: keras.Model) -> None:
    frozen = build_model({**MOBILE, "trainable_backbone": False}, SMALL, NUM_CLASSES)
    assert zoo.feature_extractor(frozen).trainable_weights == []
    assert {w.path.split("/")[0] for w in frozen.trainable_weights} == {"probs"}
    partial = build_model({**MOBILE, "fine_tune_last": 10}, SMALL, NUM_CLASSES)
    trainable_layers = [la for la in zoo.feature_extractor(partial).layers if la.trainable_weights]
    assert 0 < len(trainable_layers) <= 10
    assert not any(isinstance(la, keras.layers.BatchNormalization) for la in trainable_layers)
    full = len(zoo.feature_extractor(scratch_mobilenet).trainable_weights)
    assert len(zoo.feature_extractor(partial).trainable_weights) < full
    with pytest.raises(ValueError, match="fine_tune_last"):
        build_model(
            {**MOBILE, "trainable_backbone": False, "fine_tune_last": 3}, SMALL, NUM_CLASSES
        )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"builder": "resnet9000"},
            r"unknown zoo builder 'resnet9000'; known builders: \['alexnet_small'",
        ),
        ({"conv_blocks": 2}, "needs a 'builder' key"),
        (
            {"builder": "custom_cnn", "filtres": 8},
            r"does not accept option\(s\) \['filtres'\]; allowed: \[.*'filters'",
        ),
        ({"builder": "custom_cnn", "name": "x"}, r"does not accept option\(s\) \['name'\]"),
        ({"builder": "custom_cnn", "conv_blocks": 7}, "conv_blocks must be one of"),
        ({"builder": "keras_app"}, r"requires option\(s\) \['backbone'\]"),
        ({"builder": "keras_app", "backbone": "VGG16"}, "backbone must be one of"),
        (
            {"builder": "keras_app", "backbone": "ResNet50", "alpha": 0.5},
            "only applies to MobileNet",
        ),
        (
            {"builder": "keras_app", "backbone": "MobileNetV2", "weights": "model.bin"},
            "must end in",
        ),
        ({"builder": "googlenet_small", "blocks": 10}, "blocks must be in"),
    ],
)
def test_bad_specs_raise_clear_errors(spec: dict[str, Any], message: str, tmp_path: Path) -> None:
    if spec.get("weights") == "model.bin":
        (tmp_path / "model.bin").write_bytes(b"\0")
        spec = {**spec, "weights": str(tmp_path / "model.bin")}
    with pytest.raises(ValueError, match=message):
        build_model(spec, SMALL, NUM_CLASSES)


def test_every_builder_rejects_unknown_options() -> None:
    for builder in BUILDERS:
        spec = {"builder": builder, "backbone": "MobileNetV2", "bogus": 1}
        if builder != "keras_app":
            spec.pop("backbone")
        with pytest.raises(ValueError, match=r"\['bogus'\]"):
            build_model(spec, SMALL, NUM_CLASSES)


def test_params_yaml_zoo_entries_build_at_the_training_size() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for arch, entry in params["zoo"].items():
        if entry.get("builder") == "warm_start":  # no family: the registry champion's model
            continue
        spec, size = split_image_size(entry, params["train"]["image_size"])
        model = build_model(spec, (size, size, 3), NUM_CLASSES, META, name=arch)
        assert model.name == arch
        assert model.output.shape == (None, NUM_CLASSES)


def test_soft_attention_equals_its_3d_convolution_definition() -> None:
    """Conv3D with a (3,3,C) kernel over F as an H x W x C x 1 volume, softmax over space."""
    rng = np.random.default_rng(1)
    heads_k, (b, h, w, c) = 4, (2, 5, 6, 7)
    x = rng.standard_normal((b, h, w, c)).astype("float32")
    layer = SoftAttention(heads=heads_k, gamma_init=0.5, return_attention_map=True)
    attended, amap = (np.asarray(t) for t in layer(x))
    kernel, bias = np.asarray(layer.kernel), np.asarray(layer.bias)
    assert kernel.shape == (3, 3, c, 1, heads_k)
    volume = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))[..., None]  # 'same' spatially, none on C
    conv3d = np.asarray(keras.ops.conv(volume, kernel, strides=1, padding="valid"))
    assert conv3d.shape == (b, h, w, 1, heads_k)
    logits = np.maximum(conv3d[:, :, :, 0, :] + bias, 0).reshape(b, h * w, heads_k)
    alpha = np.exp(logits - logits.max(axis=1, keepdims=True))
    alpha /= alpha.sum(axis=1, keepdims=True)
    expected_map = alpha.sum(axis=-1).reshape(b, h, w)
    np.testing.assert_allclose(amap, expected_map, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(amap.sum(axis=(1, 2)), heads_k, rtol=1e-5)
    np.testing.assert_allclose(attended, 0.5 * x * expected_map[..., None], rtol=1e-4, atol=1e-5)
    clone = SoftAttention.from_config(layer.get_config())
    assert (clone.heads, clone.kernel_size, clone.gamma_init) == (heads_k, 3, 0.5)


def test_attention_map_and_features_are_reachable_for_visualisation() -> None:
    model = build_model(
        {"builder": "custom_cnn", "filters": 8, "attention": True}, SMALL, NUM_CLASSES, META
    )
    amap, probs = zoo.attention_map_model(model)(_inputs(SMALL, META))
    feature_map = model.get_layer(zoo.FEATURES_LAYER).output
    assert tuple(amap.shape) == (2, *feature_map.shape[1:3])
    np.testing.assert_allclose(np.asarray(amap).sum(axis=(1, 2)), 16, rtol=1e-4)
    assert probs.shape == (2, NUM_CLASSES)
    # Grad-CAM: gradients of a class score reach the features layer.
    grad_model = keras.Model(model.inputs, [feature_map, model.output])
    x = {k: tf.constant(v) for k, v in _inputs(SMALL, META).items()}
    with tf.GradientTape() as tape:
        feats, out = grad_model(x, training=False)
        score = out[:, 1]
    grads = tape.gradient(score, feats)
    assert grads.shape == feats.shape and float(tf.reduce_max(tf.abs(grads))) > 0
    with pytest.raises(ValueError, match="no 'soft_attention' layer"):
        zoo.attention_map_model(build_model({"builder": "lenet5"}, SMALL, NUM_CLASSES))


def test_models_accept_dict_or_positional_inputs() -> None:
    model = build_model({"builder": "lenet5"}, SMALL, NUM_CLASSES, META)
    x = _inputs(SMALL, META)
    by_name = np.asarray(model(x, training=False))
    by_position = np.asarray(model([x["image"], x["metadata"]], training=False))
    np.testing.assert_allclose(by_name, by_position, rtol=1e-6)


@pytest.mark.parametrize(
    ("mode", "reference"),
    [
        ("tf", keras.applications.mobilenet_v2.preprocess_input),
        ("tf", keras.applications.inception_resnet_v2.preprocess_input),
        ("caffe", keras.applications.resnet50.preprocess_input),
        ("torch", keras.applications.densenet.preprocess_input),
    ],
)
def test_in_model_preprocessing_matches_keras_preprocess_input(mode: str, reference: Any) -> None:
    pixels = np.random.default_rng(2).uniform(0, 255, size=(2, 4, 4, 3)).astype("float32")
    layer = keras_apps.ImageNetPreprocess.from_config(
        keras_apps.ImageNetPreprocess(mode).get_config()
    )
    ours = np.asarray(layer(pixels))
    np.testing.assert_allclose(ours, reference(pixels.copy()), rtol=1e-5, atol=1e-4)
