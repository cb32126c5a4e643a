"""Grad-CAM: correct localisation on a hand-built model, multi-input and nested-backbone models."""
from __future__ import annotations

from pathlib import Path

import keras
import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest

from pipelines.gradcam import find_target_layer, gradcam, overlay, save_gradcam_grid

SIZE = 16


@pytest.fixture(autouse=True)
def _seed() -> None:
    keras.utils.set_random_seed(0)


def _brightness_model() -> keras.Model:
    """feature = mean RGB (1x1 conv), class 0 score rises with mean brightness, class 1 falls."""
    image = keras.Input((SIZE, SIZE, 3), name="image")
    feat = keras.layers.Conv2D(1, 1, use_bias=False, activation="relu", name="feat")(image)
    pooled = keras.layers.GlobalAveragePooling2D()(feat)
    probs = keras.layers.Dense(2, activation="softmax", name="probs")(pooled)
    model = keras.Model(image, probs)
    model.get_layer("feat").set_weights([np.full((1, 1, 3, 1), 1 / 3, dtype="float32")])
    model.get_layer("probs").set_weights([np.array([[4.0, -4.0]], "float32"), np.zeros(2, "float32")])
    return model


def _patch_image() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((SIZE, SIZE), dtype=np.float32)
    mask[2:6, 9:13] = 1.0
    image = np.repeat(mask[None, ..., None], 3, axis=-1) * 0.9
    return image.astype("float32"), mask


def test_heatmap_localises_the_evidence_and_follows_class_index() -> None:
    model = _brightness_model()
    image, mask = _patch_image()
    heat = gradcam(model, image, class_index=0)
    assert heat.shape == (1, SIZE, SIZE) and heat.dtype == np.float32
    # For this model CAM is proportional to the feature map, i.e. exactly the bright patch.
    np.testing.assert_allclose(heat[0], mask, atol=1e-5)
    # Class 1 is evidenced *against* by brightness: ReLU leaves nothing to show.
    assert np.abs(gradcam(model, image, class_index=1)).max() == 0.0
    # None = predicted class (class 0 here, brightness is positive evidence for it).
    np.testing.assert_allclose(gradcam(model, image), heat)


def test_per_sample_class_indices_and_batching() -> None:
    model = _brightness_model()
    image, mask = _patch_image()
    batch = np.concatenate([image] * 5)
    heat = gradcam(model, batch, class_index=[0, 1, 0, 1, 0], batch_size=2)
    assert heat.shape == (5, SIZE, SIZE)
    assert [float(h.max()) for h in heat] == pytest.approx([1, 0, 1, 0, 1])


def _metadata_model() -> keras.Model:
    image = keras.Input((SIZE, SIZE, 3), name="image")
    meta = keras.Input((4,), name="metadata")
    x = keras.layers.Rescaling(1 / 255)(image)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_1")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Concatenate()([x, keras.layers.Dense(4, activation="relu")(meta)])
    probs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model({"image": image, "metadata": meta}, probs)


def _inputs(n: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32"),
        "metadata": rng.normal(size=(n, 4)).astype("float32"),
    }


def test_metadata_input_model() -> None:
    model = _metadata_model()
    assert find_target_layer(model)[-1].name == "last_conv"
    heat = gradcam(model, _inputs(), class_index=2)
    assert heat.shape == (3, SIZE, SIZE)  # upsampled from the 8x8 feature map
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    peaks = heat.reshape(3, -1).max(axis=1)
    assert np.all(np.isclose(peaks, 1.0) | (peaks == 0.0))  # each map is normalised to peak at 1
    early = gradcam(model, _inputs(), class_index=2, layer_name="conv_1")
    assert early.shape == heat.shape and not np.allclose(early, heat)
    with pytest.raises(ValueError, match="dict"):
        gradcam(model, _inputs()["image"])
    with pytest.raises(ValueError, match="metadata"):
        gradcam(model, {"image": _inputs()["image"]})


def _nested(pool_inside: bool, frozen: bool = False) -> keras.Model:
    inner_in = keras.Input((SIZE, SIZE, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="inner_conv")(inner_in)
    y = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="inner_last")(y)
    if pool_inside:
        y = keras.layers.GlobalAveragePooling2D(name="inner_pool")(y)
    backbone = keras.Model(inner_in, y, name="backbone")
    backbone.trainable = not frozen
    image = keras.Input((SIZE, SIZE, 3), name="image")
    x = backbone(keras.layers.Rescaling(1 / 255)(image))
    if not pool_inside:
        x = keras.layers.GlobalAveragePooling2D()(x)
    probs = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(image, probs)


def test_nested_backbone_inner_layer_matches_call_site() -> None:
    model = _nested(pool_inside=False)
    assert [layer.name for layer in find_target_layer(model)] == ["backbone"]
    at_call_site = gradcam(model, _inputs()["image"], class_index=1)
    inside = gradcam(model, _inputs()["image"], class_index=1, layer_name="inner_last")
    # The backbone's output *is* inner_last's output: both cuts must give the same map.
    np.testing.assert_allclose(inside, at_call_site, atol=1e-5)
    assert at_call_site.max() > 0


def test_nested_pooled_frozen_backbone_is_searched_inside() -> None:
    model = _nested(pool_inside=True, frozen=True)
    assert [layer.name for layer in find_target_layer(model)] == ["backbone", "inner_last"]
    heat = gradcam(model, _inputs(), class_index=0)  # dict with an unused "metadata" key is fine
    assert heat.shape == (3, SIZE, SIZE) and heat.max() > 0 and heat.min() >= 0


def test_sequential_model() -> None:
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    heat = gradcam(model, {"image": _inputs(2)["image"]}, class_index=0)
    assert heat.shape == (2, SIZE, SIZE)  # 14x14 conv output resized to the input


def test_keras_applications_backbone() -> None:
    backbone = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    image = keras.Input((32, 32, 3), name="image")
    probs = keras.layers.Dense(3, activation="softmax")(backbone(image))
    model = keras.Model(image, probs)
    path = find_target_layer(model)
    assert path[0] is backbone and path[-1].name == "out_relu"
    heat = gradcam(model, np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32"))
    assert heat.shape == (2, 32, 32) and 0 <= heat.min() <= heat.max() <= 1


def test_model_graph_is_left_intact_and_still_saves(tmp_path: Path) -> None:
    model = _nested(pool_inside=True)
    def node_counts() -> list[tuple[str, int, int]]:
        layers = [*model.layers, *model.get_layer("backbone").layers]
        return [(x.name, len(x._inbound_nodes), len(x._outbound_nodes)) for x in layers]
    before = node_counts()
    heat = gradcam(model, _inputs()["image"], layer_name="inner_conv")
    assert node_counts() == before
    model.save(tmp_path / "m.keras")  # cut models left behind would break this
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    again = gradcam(reloaded, _inputs()["image"], layer_name="inner_conv")
    np.testing.assert_allclose(again, heat, atol=1e-5)


def test_bad_layer_names() -> None:
    model = _metadata_model()
    with pytest.raises(ValueError, match="no layer named"):
        gradcam(model, _inputs(), layer_name="nope")
    with pytest.raises(ValueError, match="4-D"):
        gradcam(model, _inputs(), layer_name="pool")
    with pytest.raises(ValueError, match="class_index"):
        gradcam(model, _inputs(), class_index=3)


def test_overlay_blends_jet_at_alpha() -> None:
    black = np.zeros((4, 4, 3), dtype=np.uint8)
    out = overlay(black, np.ones((2, 2)), alpha=0.4)  # heatmap resized to the image
    assert out.shape == (4, 4, 3)
    np.testing.assert_allclose(out, 0.4 * np.array(matplotlib.colormaps["jet"](1.0)[:3]) * np.ones((4, 4, 1)))
    grey = overlay(np.full((4, 4), 255.0), np.zeros((4, 4)), alpha=0.4)  # float 0..255, grey
    np.testing.assert_allclose(grey[..., 0], 0.6 + 0.4 * matplotlib.colormaps["jet"](0.0)[0])


def test_save_gradcam_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, SIZE, SIZE, 3), dtype=np.uint8)
    heat = rng.uniform(0, 1, (5, 8, 8))
    titles = [f"true: Melanoma Skin Cancer Nevi and Moles / pred: class {i}" for i in range(5)]
    out = save_gradcam_grid(images, heat, titles, tmp_path / "g" / "gradcam.png")
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = mpimg.imread(out)
    assert png.shape[1] > png.shape[0]  # 4 columns x 2 rows
    with pytest.raises(ValueError, match="titles"):
        save_gradcam_grid(images, heat, titles[:2], tmp_path / "bad.png")
