"""The ensemble candidate: its model is the mean of its members (pipelines/ensemble.py) and the
stage (pipelines/assemble.py) picks members on validation and writes a candidate like train does."""
from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf

from pipelines import assemble, evaluate
from pipelines.config import ENSEMBLE, Paths, candidates
from pipelines.ensemble import (build_ensemble, check_compatible, explained_member, member_names,
                                union_fingerprint)
from pipelines.fingerprint import ARTIFACT, read_fingerprint, write_fingerprint
from pipelines.gradcam import gradcam
from pipelines.inference import load_bundle
from pipelines.zoo import build_model, load_model

CLASSES = ["a", "b", "c"]
META = 4
SPEC = {"builder": "custom_cnn", "conv_blocks": 1, "filters": 4, "dropout": 0.0}


def tiny(size: int, seed: int, metadata_dim: int = META) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_model(SPEC, (size, size, 3), len(CLASSES), metadata_dim)


def batch(n: int = 6, size: int = 24) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"image": rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32),
            "metadata": rng.uniform(0, 1, (n, META)).astype(np.float32)}


def members_and_reference() -> tuple[dict[str, keras.Model], dict[str, np.ndarray], np.ndarray]:
    big, small = tiny(24, 1), tiny(16, 2)
    x = batch()
    # What the 16 px member sees: the 24 px image resized as pipelines.data.decode_image resizes.
    x_small = {**x, "image": tf.image.resize(x["image"], (16, 16), antialias=True).numpy()}
    reference = (big.predict(x, verbose=0) + small.predict(x_small, verbose=0)) / 2
    return {"big": big, "small": small}, x, reference


def test_output_is_the_mean_of_the_members_at_their_own_sizes():
    members, x, reference = members_and_reference()
    model = build_ensemble(members, {"big": 24, "small": 16}, META)
    assert [t.name for t in model.inputs] == ["image", "metadata"] and model.inputs[0].shape[1:] == (24, 24, 3)
    out = model.predict(x, verbose=0)
    np.testing.assert_allclose(out, reference, atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert member_names(model) == ["big", "small"] and model.get_layer("resize_small") is not None


def test_image_only_members_and_one_family_twice():
    a, b = tiny(24, 3, 0), tiny(24, 4, 0)
    assert a.name == b.name  # one builder, one default name: the ensemble renames them
    x = batch()["image"]
    model = build_ensemble({"a": a, "b": b}, {"a": 24, "b": 24})
    assert [t.name for t in model.inputs] == ["image"]
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               (a.predict(x, verbose=0) + b.predict(x, verbose=0)) / 2, atol=1e-6)


def test_save_load_round_trip_and_gradcam(tmp_path: Path):
    members, x, reference = members_and_reference()
    model = build_ensemble(members, {"big": 24, "small": 16}, META)
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras", compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), reference, atol=1e-6)
    heat = gradcam(loaded, x)  # evaluate's call: the last member's feature map is explained
    assert heat.shape == (6, 24, 24) and 0.0 <= heat.min() and heat.max() <= 1.0
    assert explained_member(loaded) == "small"
    loaded.save(tmp_path / "again.keras")  # Grad-CAM left the graph saveable


def test_members_must_agree_on_inputs_and_classes():
    with pytest.raises(ValueError, match="metadata"):
        build_ensemble({"a": tiny(24, 1), "b": tiny(24, 2, 0)}, {"a": 24, "b": 24}, META)
    with pytest.raises(ValueError, match="at least 2"):
        build_ensemble({"a": tiny(24, 1)}, {"a": 24}, META)
    with pytest.raises(ValueError, match="classes"):
        check_compatible({"a": {"classes": ["x", "y"]}, "b": {"classes": ["y", "x"]}})


def test_union_fingerprint_covers_every_member():
    f1 = {"format": 1, "splits": ["train", "val"], "sha256": ["s1", "s2"], "group_ids": ["g1"]}
    f2 = {"format": 1, "splits": ["train", "val"], "sha256": ["s2", "s3"], "group_ids": ["g2"]}
    union = union_fingerprint([f1, f2])
    assert union["sha256"] == ["s1", "s2", "s3"] and union["group_ids"] == ["g1", "g2"]
    assert union["counts"]["unique_images"] == 3


# ---------------------------------------------------------------- the stage

def _val(value: float) -> dict:
    return {"balanced_accuracy": value}


def write_candidate(paths: Paths, arch: str, size: int, seed: int, val: float | None,
                    skipped: str | None = None, classes: list[str] = CLASSES) -> None:
    """What train + evaluate leave for one architecture (a real tiny model, a fake MLflow run id)."""
    paths.eval_report(arch).parent.mkdir(parents=True, exist_ok=True)
    if skipped:
        paths.eval_report(arch).write_text(json.dumps({"skipped": skipped, "arch": arch}))
        return
    out = paths.model_dir(arch)
    out.mkdir(parents=True)
    tiny(size, seed).save(out / "model.keras")
    info = {"arch": arch, "builder": "custom_cnn", "spec": SPEC, "dataset": "ham10000", "classes": classes,
            "image_size": size, "metadata_columns": ["age"], "categorical_values": {},
            "metadata_features": [f"f{i}" for i in range(META)], "run_id": f"run-{arch}",
            "parent_run_id": "p", "train_seconds": 10.0, "epochs_run": 1, "best_epoch": 1,
            "split_sizes": {"train": 7, "val": 2, "test": 2}, "sampling": "natural", "tta": "none"}
    (out / "train_info.json").write_text(json.dumps(info))
    write_fingerprint(paths.train_fingerprint(arch), {"format": 1, "splits": ["train", "val"],
                                                      "sha256": [f"sha-{arch}"], "group_ids": [f"g-{arch}"]})
    paths.eval_report(arch).write_text(json.dumps({"val": _val(val) if val is not None else None}))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Paths, dict]:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)  # the project's own store under tmp_path
    paths = Paths(tmp_path)
    paths.splits.parent.mkdir(parents=True)
    import pandas as pd  # the candidate's run logs the splits as MLflow datasets, as train does

    pd.DataFrame({"image_id": ["a", "b", "c"], "label": ["x", "y", "x"],
                  "split": ["train", "val", "test"]}).to_parquet(paths.splits, index=False)
    write_candidate(paths, "low", 24, 1, 0.40)
    write_candidate(paths, "best", 24, 2, 0.90)
    write_candidate(paths, "second", 16, 3, 0.70)
    write_candidate(paths, "no_val", 24, 4, None)
    write_candidate(paths, "warm_start", 24, 5, None, skipped="no champion")
    params = {"dataset": {"name": "ham10000"}, "promote": {"metric": "balanced_accuracy"},
              "architectures": ["low", "best", "second", "no_val", "warm_start"],
              "ensemble": {"enabled": True, "members": 2}, "evaluate": {"tta": "flips"}}
    return paths, params


def test_stage_picks_members_on_validation_and_writes_a_candidate(project):
    paths, params = project
    write_candidate(paths, "other_labels", 24, 6, 0.80, classes=["c", "b", "a"])
    params["architectures"].append("other_labels")
    info = assemble.run(paths, params)
    out = paths.model_dir(ENSEMBLE)
    assert out == paths.root / "derived" / "models" / ENSEMBLE
    assert info["members"] == ["best", "second"]
    assert info["selection"]["values"] == {"best": 0.90, "second": 0.70}
    assert info["selection"]["excluded"] == {"no_val": "no validation balanced_accuracy",
                                             "warm_start": "skipped: no champion",
                                             "other_labels": "differs from 'best' in ['classes']"}
    saved = json.loads((out / "train_info.json").read_text())
    assert saved == info and saved["image_size"] == 24 and saved["tta"] == "flips"
    assert saved["member_run_ids"] == {"best": "run-best", "second": "run-second"}
    # Every key train writes is there (evaluate, compare and promote read them).
    for key in ("arch", "builder", "spec", "dataset", "classes", "image_size", "metadata_columns",
                "categorical_values", "metadata_features", "run_id", "parent_run_id", "train_seconds",
                "epochs_run", "best_epoch", "class_weights", "split_sizes", "sampling", "tta"):
        assert key in saved, key
    assert json.loads((out / "history.json").read_text()) == {}
    fingerprint = read_fingerprint(paths.train_fingerprint(ENSEMBLE))
    assert fingerprint["sha256"] == ["sha-best", "sha-second"]

    model, loaded_info = load_bundle(out)
    x = batch(3)
    best = load_model(paths.model_dir("best") / "model.keras", compile=False)
    second = load_model(paths.model_dir("second") / "model.keras", compile=False)
    x16 = {**x, "image": tf.image.resize(x["image"], (16, 16), antialias=True).numpy()}
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               (best.predict(x, verbose=0) + second.predict(x16, verbose=0)) / 2, atol=1e-6)

    run = mlflow.MlflowClient().get_run(info["run_id"])  # configure() pointed MLflow at tmp_path
    assert run.data.tags["medscan.arch"] == ENSEMBLE and run.data.tags["mlflow.parentRunId"] == info["parent_run_id"]
    assert run.data.params["ensemble.members"] == "best,second"
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(info["run_id"], "medscan")}
    assert {"medscan/train_info.json", "medscan/history.json", ARTIFACT} <= logged
    # The model is logged once, by evaluate_ensemble, as the calibrated pyfunc promote registers.
    experiment = run.info.experiment_id
    assert mlflow.search_logged_models(experiment_ids=[experiment], output_format="list",
                                       filter_string=f"source_run_id = '{info['run_id']}'") == []


def test_lower_is_better_metrics_pick_the_smallest():
    docs = {"a": {"val": {"ece": 0.3}}, "b": {"val": {"ece": 0.1}}, "c": {"val": {"ece": float("nan")}}}
    ranked, excluded = assemble.rank_by_validation(docs, "ece")
    assert ranked == [("b", 0.1), ("a", 0.3)] and excluded == {"c": "no validation ece"}


@pytest.mark.parametrize("change, reason", [
    ({"ensemble": {"enabled": False, "members": 2}}, "ensemble.enabled is false"),
    ({"architectures": ["best", "no_val", "warm_start"]}, "1 eligible member(s)"),
])
def test_skipped_when_off_or_too_few_members(project, change, reason):
    paths, params = project
    stale = paths.model_dir(ENSEMBLE)
    stale.mkdir(parents=True)
    (stale / "model.keras").write_text("an earlier run's ensemble")
    marker = assemble.run(paths, {**params, **change})
    assert marker["arch"] == ENSEMBLE and reason in marker["skipped"]
    assert sorted(p.name for p in stale.iterdir()) == ["skipped.json"]  # nothing stale to evaluate
    report = evaluate.run(ENSEMBLE, paths, {"evaluate": {}})
    assert report == {"skipped": marker["skipped"], "arch": ENSEMBLE}
    assert json.loads(paths.eval_report(ENSEMBLE).read_text()) == report
    assert paths.eval_report(ENSEMBLE) == paths.root / "derived" / "reports" / "evaluate" / "ensemble.json"
    assert paths.plots_dir(ENSEMBLE).is_dir()


def test_candidates_are_the_architectures_then_the_configured_ensemble():
    assert candidates({"architectures": ["x", "y"], "ensemble": {}}) == ["x", "y", ENSEMBLE]
    assert candidates({"architectures": ["x"]}) == ["x"]  # a params.yaml without the section
