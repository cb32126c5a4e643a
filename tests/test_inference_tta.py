"""Test-time augmentation in the shared predict path (evaluate, promote)."""
from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from pipelines.inference import predict_frame, tta_views

CLASSES = ["a", "b", "c"]


def _frame(tmp_path, n=5):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": CLASSES[i % 3]})
    return pd.DataFrame(rows)


def _model(symmetric: bool) -> keras.Model:
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(image)
    # Global pooling forgets where pixels are: invariant to every flip and turn. Flatten does not.
    x = keras.layers.GlobalAveragePooling2D()(x) if symmetric else keras.layers.Flatten()(x)
    return keras.Model({"image": image}, keras.layers.Dense(3, activation="softmax")(x))


INFO = {"classes": CLASSES, "image_size": 8}


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_tta_on_a_symmetric_model_equals_plain_prediction(tmp_path, mode):
    frame, model = _frame(tmp_path), _model(symmetric=True)
    plain = predict_frame(model, INFO, frame, tmp_path)
    np.testing.assert_allclose(predict_frame(model, INFO, frame, tmp_path, tta=mode), plain, atol=1e-6)


def test_tta_is_the_mean_over_views_and_follows_train_info(tmp_path):
    frame, model = _frame(tmp_path), _model(symmetric=False)
    plain = predict_frame(model, INFO, frame, tmp_path)
    d4 = predict_frame(model, INFO, frame, tmp_path, tta="d4")
    assert not np.allclose(d4, plain)
    np.testing.assert_allclose(d4.sum(1), 1.0, atol=1e-6)
    from pipelines.data import make_dataset
    batch = next(iter(make_dataset(frame, tmp_path, CLASSES, 8, 64, with_labels=False)))["image"]
    manual = np.mean([model.predict({"image": v(batch)}, verbose=0) for v in tta_views("d4")], axis=0)
    np.testing.assert_allclose(d4, manual, atol=1e-6)
    # The model's own train_info decides when the caller does not; "none" for older models.
    np.testing.assert_allclose(predict_frame(model, {**INFO, "tta": "d4"}, frame, tmp_path), d4, atol=1e-7)
    with pytest.raises(ValueError, match="unknown tta"):
        predict_frame(model, INFO, frame, tmp_path, tta="rot45")


def test_view_counts():
    assert [len(tta_views(m)) for m in ("none", "flips", "d4")] == [1, 4, 8]
    x = tf.zeros((1, 4, 4, 3))
    assert all(v(x).shape == x.shape for v in tta_views("d4"))
