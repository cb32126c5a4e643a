"""The learning-rate schedule: constant, or linear warm-up then cosine to min_lr."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pipelines.schedules import learning_rate

TRAIN = {"learning_rate": 0.01, "epochs": 10, "warmup_epochs": 2, "min_lr": 0.001}


def _lr(schedule, step: int) -> float:
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_constant_is_a_plain_float() -> None:
    assert learning_rate({**TRAIN, "lr_schedule": "constant"}, 5) == 0.01
    assert learning_rate({"learning_rate": 0.003, "epochs": 3}, 5) == 0.003  # old params: constant


def test_warmup_then_cosine_values() -> None:
    steps = 5  # per epoch: warm-up 10 steps, decay 40 steps
    schedule = learning_rate({**TRAIN, "lr_schedule": "cosine"}, steps)
    assert _lr(schedule, 0) == pytest.approx(0.0)
    assert _lr(schedule, 5) == pytest.approx(0.005, rel=1e-5)      # half-way up
    assert _lr(schedule, 10) == pytest.approx(0.01, rel=1e-5)      # the peak
    for t in (10, 20, 30, 50):                                      # cosine from the peak to min_lr
        frac = (t - 10) / 40
        expected = 0.001 + (0.01 - 0.001) * 0.5 * (1 + math.cos(math.pi * frac))
        assert _lr(schedule, t) == pytest.approx(expected, rel=1e-5)
    assert _lr(schedule, 80) == pytest.approx(0.001, rel=1e-5)     # stays at the floor
    values = [_lr(schedule, t) for t in range(51)]
    assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) <= 1e-9)


def test_cosine_without_warmup_starts_at_the_peak() -> None:
    schedule = learning_rate({**TRAIN, "lr_schedule": "cosine", "warmup_epochs": 0}, 4)
    assert _lr(schedule, 0) == pytest.approx(0.01)
    assert _lr(schedule, 20) == pytest.approx(0.001 + 0.009 * 0.5, rel=1e-5)


def test_the_optimizer_follows_the_schedule_while_training() -> None:
    schedule = learning_rate({**TRAIN, "lr_schedule": "cosine", "epochs": 3, "warmup_epochs": 1}, 2)
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="categorical_crossentropy")
    x, y = np.zeros((8, 2), "float32"), np.eye(2, dtype="float32")[[0, 1] * 4]
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # 2 steps = the warm-up epoch
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.01, rel=1e-5)


@pytest.mark.parametrize(("changes", "message"), [
    ({"lr_schedule": "step"}, "unknown lr_schedule"),
    ({"lr_schedule": "cosine", "warmup_epochs": 10}, "warmup_epochs"),
    ({"lr_schedule": "cosine", "min_lr": 0.1}, "min_lr"),
])
def test_bad_schedules_are_clear_errors(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        learning_rate({**TRAIN, **changes}, 3)
