"""The model contract and the one input path: validation, calibration, bytes-vs-evaluate parity."""
from __future__ import annotations

import io
import math

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines import contract as contract_mod
from pipelines.calibration import (abstain_threshold, apply_temperature, calibration_report,
                                   coverage, fit_temperature)
from pipelines.contract import ModelContract, from_train_info
from pipelines.features import encode_metadata
from pipelines.images import ImageLimits, normalize_image
from pipelines.inference import predict_frame
from pipelines.model_inputs import (InvalidInput, answers, check_metadata, diagnose, metadata_matrix,
                                    model_inputs, predict_inputs)
from pipelines.train import model_inputs_info

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def ham_contract(image_size: int = 24, tta: str = "none") -> ModelContract:
    info = {"dataset": "ham10000", "arch": "t", "classes": CLASSES, "image_size": image_size, "tta": tta,
            **model_inputs_info("ham10000", True)}
    params = {"ingest": {"store_max_side": 64}, "bounds": {"age_range": [0, 110]}}
    return from_train_info(info, params)


def test_contract_round_trips_and_carries_the_training_facts(tmp_path):
    c = ham_contract()
    assert c.store_max_side == 64 and c.age_range == (0.0, 110.0) and c.image_limits().store_max_side == 64
    assert c.display_name("mel") != "mel" and len(c.display_names) == len(c.classes)
    assert c.metadata_features == model_inputs_info("ham10000", True)["metadata_features"]
    calibrated = c.calibrated(1.7, 0.55, 0.9)
    loaded = contract_mod.load(contract_mod.save(calibrated, tmp_path / "contract.json"))
    assert loaded == calibrated and loaded.temperature == 1.7 and loaded.abstain_threshold == 0.55


@pytest.mark.parametrize(("record", "field"), [
    ({"age": "abc"}, "age"), ({"age": math.inf}, "age"), ({"age": 130}, "age"), ({"age": -1}, "age"),
    ({"age": True}, "age"), ({"age": [60]}, "age"), ({"sex": "alien"}, "sex"),
    ({"localization": "elbow"}, "localization"),
])
def test_invalid_metadata_names_the_field_and_never_the_value(record, field):
    with pytest.raises(InvalidInput) as err:
        metadata_matrix(ham_contract(), pd.DataFrame([record]))
    assert err.value.field == field and str(err.value).startswith(f"{field}:")
    value = str(next(iter(record.values())))
    assert value.isdigit() or value not in str(err.value)   # never echoes patient data


def test_missing_metadata_is_unknown_and_valid_metadata_encodes_as_training_did():
    c = ham_contract()
    frame = pd.DataFrame([{"age": 60, "sex": "Male", "localization": "back"},
                          {"age": "45", "sex": "", "localization": None},
                          {"age": float("nan")}, {}])
    checked = check_metadata(frame, c)
    assert checked["sex"].tolist() == ["male", "unknown", "unknown", "unknown"]
    expected = encode_metadata(checked, c.metadata_columns, c.categorical_values)
    assert np.array_equal(metadata_matrix(c, frame), expected)
    assert metadata_matrix(c, frame)[3, 1] == 1.0   # age_missing flag


def test_temperature_fixes_overconfidence_and_the_threshold_meets_its_target():
    rng = np.random.default_rng(0)
    n, k = 400, 3
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.0
    overconfident = apply_temperature(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 0.25)
    t = fit_temperature(overconfident, y)
    assert 3.0 < t < 5.0           # undoes the factor 4 sharpening
    cal = apply_temperature(overconfident, t)
    assert np.array_equal(cal.argmax(1), overconfident.argmax(1))
    threshold, reachable = abstain_threshold(cal, y, 0.8)
    got = coverage(cal, y, threshold)
    assert reachable and got["accepted_accuracy"] >= 0.8
    conf = cal.max(1)
    lower = coverage(cal, y, conf[conf < threshold].max())   # the next lower threshold misses the target
    assert lower["accepted"] > got["accepted"] and lower["accepted_accuracy"] < 0.8
    assert abstain_threshold(cal, np.full(n, -1), 0.8)[1] is False   # never right: unreachable


def test_threshold_rule_on_a_worked_example():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.55, 0.45]])
    y = np.array([0, 0, 1, 1, 0])   # confidences 0.9 ok, 0.8 ok, 0.7 ok, 0.6 wrong, 0.55 ok
    assert abstain_threshold(probs, y, 0.75) == (0.55, True)   # the largest coverage meeting 0.75
    assert abstain_threshold(probs, y, 0.8) == (0.55, True)    # 4/5 = 0.8 at full coverage
    assert abstain_threshold(probs, y, 0.85) == (0.7, True)    # 3/3; 3/4 and 4/5 fall short
    report = calibration_report(None, None, probs, y, 0.9)
    assert report["temperature"] == 1.0 and report["threshold"] == 0.0 and report["note"]


def test_answers_carry_names_and_abstain():
    c = ham_contract().calibrated(1.0, 0.5, 0.9)
    probs = np.array([[0.6, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05], [0.3, 0.25, 0.2, 0.1, 0.05, 0.05, 0.05]])
    sure, unsure = answers(c, probs, k=5)
    assert sure["label"] == "akiec" and sure["name"] == c.display_name("akiec") and not sure["abstain"]
    assert unsure["abstain"] and len(unsure["top"]) == 5 and unsure["top"][0]["probability"] == 0.3


# ----------------------------------------------------------------------------- parity with evaluate
def _sources(n: int) -> list[tuple[bytes, str]]:
    """Original uploads of several kinds: big JPEGs (downscaled by ingest), RGBA and grey PNGs."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        h, w = int(rng.integers(40, 160)), int(rng.integers(40, 160))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        kind = i % 3
        if kind == 0:
            Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        elif kind == 1:
            Image.fromarray(np.dstack([pixels, pixels[..., :1]])).save(buf, "PNG")
        else:
            Image.fromarray(pixels[..., 0]).save(buf, "PNG")
        out.append((buf.getvalue(), CLASSES[i % len(CLASSES)]))
    return out


def _tiny_trained_model(c: ModelContract, inputs: dict, y: np.ndarray) -> keras.Model:
    from pipelines.zoo import build_model

    keras.utils.set_random_seed(0)
    model = build_model({"builder": "custom_cnn", "conv_blocks": 1, "filters": 4, "dropout": 0.0},
                        (c.image_size, c.image_size, 3), len(c.classes), len(c.metadata_features))
    model.compile("adam", "categorical_crossentropy")
    model.fit(inputs, keras.utils.to_categorical(y, len(c.classes)), epochs=1, batch_size=8, verbose=0)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("tta", ["none", "flips"])
def test_bytes_path_equals_evaluate_predict_frame(tmp_path, tta):
    """Ingest's stored copies through evaluate's tf.data path == the original bytes through serving."""
    c = ham_contract(tta=tta)
    sources = _sources(12)
    rng = np.random.default_rng(2)
    records = [{"age": float(rng.integers(1, 100)) if i % 4 else None,
                "sex": ["male", "female", ""][i % 3], "localization": ["back", "face", None][i % 3]}
               for i in range(len(sources))]
    rows = []
    for (raw, label), meta in zip(sources, records):
        stored = normalize_image(raw, tmp_path / "images", ImageLimits(store_max_side=c.store_max_side))
        rows.append({"path": f"images/{stored.stored_path.name}", "label": label, **meta})
    frame = pd.DataFrame(rows)
    served_inputs = model_inputs(c, [raw for raw, _ in sources], records)
    model = _tiny_trained_model(c, served_inputs, np.array([CLASSES.index(lab) for _, lab in sources]))

    evaluated = predict_frame(model, c, frame, tmp_path)
    served = predict_inputs(model, c, served_inputs)
    assert evaluated.shape == (12, 7)
    np.testing.assert_allclose(served, evaluated, atol=1e-5, rtol=0)
    answered = diagnose(model, c.calibrated(2.0, 0.0, None), [sources[0][0]], [records[0]])[0]
    expected = apply_temperature(evaluated[:1], 2.0)[0]
    assert answered["probability"] == pytest.approx(expected.max(), abs=1e-5)
    with pytest.raises(InvalidInput, match="^image:"):
        model_inputs(c, [b"not an image"], None)


def test_serve_predictor_batches_and_reports_bad_metadata_by_field():
    from pipelines.serve import Predictor
    from pipelines.zoo import build_model

    c = ham_contract().calibrated(1.0, 0.99, 0.9)
    keras.utils.set_random_seed(0)
    model = build_model({"builder": "custom_cnn", "conv_blocks": 1, "filters": 4, "dropout": 0.0},
                        (24, 24, 3), len(CLASSES), len(c.metadata_features))
    predictor = Predictor(model, {}, "medscan-ham10000/1", c)
    jpeg = _sources(1)[0][0]
    good, bad = predictor.predict([jpeg, b"junk"], {"age": 60, "sex": "male"}, k=3)
    assert good["model"] == "medscan-ham10000/1" and len(good["top"]) == 3 and good["abstain"] is True
    assert bad["error"] == "not_an_image"
    assert predictor.predict([jpeg], {"age": "inf"}) == [
        {"error": "invalid_metadata", "field": "age", "detail": "must be within bounds.age_range [0, 110]"}]
    assert predictor.predict_one(jpeg, {"age": 60, "sex": "male"}, k=3)["top"] == good["top"]
    with pytest.raises(InvalidInput, match="^sex:"):
        predictor.predict_one(jpeg, {"sex": "alien"})
