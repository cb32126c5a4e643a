"""Class weights W_c = N / (C * N_c) and the two training losses, against hand computations."""

from __future__ import annotations

import logging
import math

import keras
import numpy as np
import pytest

from pipelines.losses import WeightedCategoricalCrossentropy, class_weights, make_loss

# Two samples, three classes: true classes 1 and 0.
Y_TRUE = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype="float32")
Y_PRED = np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]], dtype="float32")
WEIGHTS = {0: 2.0, 1: 0.5, 2: 1.0}


def test_class_weights_match_hand_computation() -> None:
    labels = [0, 0, 0, 1, 2, 2]  # N = 6, C = 3, N_c = 3, 1, 2
    weights = class_weights(labels, 3)
    assert weights == pytest.approx({0: 6 / 9, 1: 6 / 3, 2: 6 / 6})
    # With every class present, the mean weight over the training samples is exactly 1.
    assert np.mean([weights[y] for y in labels]) == pytest.approx(1.0)
    assert class_weights(np.array([2, 0, 1, 2, 0, 1]), 3) == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0})
    assert class_weights(np.array([[0], [1], [1]]), 2) == pytest.approx({0: 1.5, 1: 0.75})


def test_absent_class_gets_zero_weight_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipelines.losses"):
        weights = class_weights([0, 0, 1], 3)
    assert weights == pytest.approx({0: 3 / 6, 1: 3 / 3, 2: 0.0})
    assert "[2]" in caplog.text


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([], "at least one label"),
        ([0, 3], r"must lie in \[0, 3\)"),
        ([-1, 0], r"must lie in \[0, 3\)"),
        ([0.5, 1.0], "non-integer"),
        (np.eye(3), "1-D array of class indices"),  # one-hot by mistake
    ],
)
def test_class_weights_reject_bad_labels(labels: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        class_weights(labels, 3)  # type: ignore[arg-type]


def test_categorical_crossentropy_plain_and_weighted_by_hand() -> None:
    ce = [-math.log(0.7), -math.log(0.5)]
    plain = make_loss("categorical_crossentropy")
    assert isinstance(plain, keras.losses.CategoricalCrossentropy)
    assert float(plain(Y_TRUE, Y_PRED)) == pytest.approx(np.mean(ce), rel=1e-5)
    weighted = make_loss("categorical_crossentropy", class_weights=WEIGHTS)
    assert float(weighted(Y_TRUE, Y_PRED)) == pytest.approx(
        (0.5 * ce[0] + 2.0 * ce[1]) / 2, rel=1e-5
    )
    # Same number as the fit(class_weight=...) route, which turns weights into sample weights.
    sample_weight = np.array([WEIGHTS[1], WEIGHTS[0]], dtype="float32")
    assert float(weighted(Y_TRUE, Y_PRED)) == pytest.approx(
        float(plain(Y_TRUE, Y_PRED, sample_weight=sample_weight)), rel=1e-5
    )


def test_focal_loss_matches_hand_computation() -> None:
    # FL = -alpha_y * (1 - p_y)**gamma * log(p_y), averaged over the batch.
    fl = [-(0.3**2) * math.log(0.7), -(0.5**2) * math.log(0.5)]
    focal = make_loss("focal", gamma=2.0)
    assert isinstance(focal, keras.losses.CategoricalFocalCrossentropy)
    assert float(focal(Y_TRUE, Y_PRED)) == pytest.approx(np.mean(fl), rel=1e-5)  # 0.1026938
    balanced = make_loss("focal", gamma=2.0, class_weights=WEIGHTS)
    assert float(balanced(Y_TRUE, Y_PRED)) == pytest.approx(
        (0.5 * fl[0] + 2.0 * fl[1]) / 2, rel=1e-5
    )
    # gamma = 0 turns the focal loss back into cross-entropy.
    assert float(make_loss("focal", gamma=0.0)(Y_TRUE, Y_PRED)) == pytest.approx(
        float(make_loss("categorical_crossentropy")(Y_TRUE, Y_PRED)), rel=1e-5
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "hinge"},
            r"unknown loss 'hinge'; choose one of \['categorical_crossentropy', 'focal'\]",
        ),
        ({"name": "focal", "gamma": -1.0}, "gamma must be >= 0"),
        ({"name": "focal", "class_weights": {0: 1.0, 2: 1.0}}, "every class 0..C-1"),
        ({"name": "categorical_crossentropy", "class_weights": {0: 1.0, 1: -2.0}}, ">= 0"),
    ],
)
def test_make_loss_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_loss(**kwargs)


@pytest.mark.parametrize("name", ["categorical_crossentropy", "focal"])
def test_weighted_losses_serialise_and_train_a_step(name: str, tmp_path) -> None:
    loss = make_loss(name, class_weights=WEIGHTS)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert float(clone(Y_TRUE, Y_PRED)) == pytest.approx(float(loss(Y_TRUE, Y_PRED)), rel=1e-6)
    if name == "categorical_crossentropy":
        assert isinstance(clone, WeightedCategoricalCrossentropy)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    model.compile(optimizer="sgd", loss=loss)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 8)]
    history = model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    model.save(tmp_path / "m.keras")
    from pipelines.zoo import load_model

    reloaded = load_model(tmp_path / "m.keras")
    assert float(reloaded.evaluate(x, y, verbose=0)) == pytest.approx(
        float(model.evaluate(x, y, verbose=0)), rel=1e-5
    )


def test_label_smoothing_by_hand_for_all_three_losses() -> None:
    eps, c = 0.1, 3
    smooth = Y_TRUE * (1 - eps) + eps / c  # [[.033, .933, .033], [.933, .033, .033]]
    ce = -(smooth * np.log(Y_PRED)).sum(1)
    plain = make_loss("categorical_crossentropy", label_smoothing=eps)
    assert float(plain(Y_TRUE, Y_PRED)) == pytest.approx(ce.mean(), rel=1e-5)
    assert float(plain(Y_TRUE, Y_PRED)) > float(make_loss("categorical_crossentropy")(Y_TRUE, Y_PRED))
    # The weighted loss smooths the target but weights by the true (unsmoothed) class.
    weighted = make_loss("categorical_crossentropy", class_weights=WEIGHTS, label_smoothing=eps)
    assert float(weighted(Y_TRUE, Y_PRED)) == pytest.approx((0.5 * ce[0] + 2.0 * ce[1]) / 2, rel=1e-5)
    # Focal: Keras smooths the target the same way before the focal term.
    focal = make_loss("focal", gamma=2.0, label_smoothing=eps)
    fl = -(smooth * (1 - Y_PRED) ** 2 * np.log(Y_PRED)).sum(1)
    assert float(focal(Y_TRUE, Y_PRED)) == pytest.approx(fl.mean(), rel=1e-5)
    # A confident, correct prediction is no longer optimal: smoothing penalises saturation.
    sure = np.array([[1e-6, 1 - 2e-6, 1e-6]], "float32")
    assert float(plain(Y_TRUE[:1], sure)) > float(plain(Y_TRUE[:1], np.array([[0.05, 0.9, 0.05]], "float32")))


def test_label_smoothing_survives_serialisation_and_is_validated() -> None:
    loss = make_loss("categorical_crossentropy", class_weights=WEIGHTS, label_smoothing=0.2)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert clone.label_smoothing == pytest.approx(0.2)
    with pytest.raises(ValueError, match="label_smoothing"):
        make_loss("focal", label_smoothing=1.0)
