"""The blessing gate on constructed cases (pure), the promote stage against a real SQLite MLflow
store (first champion, fair comparison with exclusions, unscorable champion), and registry aliases."""
import json
import shutil
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines import registry
from pipelines.errors import RegistryError
from pipelines.fingerprint import training_fingerprint, write_fingerprint
from pipelines.gate import (COMPARED, NO_CHAMPION, OTHER_LABELS, UNSCORABLE, Comparison, Policy,
                            compare_models, decide, fair_test_images, policy_from_params)

HAM = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
BA = "balanced_accuracy"


def _comparison(challenger: float, champion: float, ci=None, sensitivity=None, n: int = 100):
    return Comparison(n_test=n, n_compared=n, excluded={"challenger": 0, "champion": 0},
                      challenger_score=challenger, champion_score=champion, delta_ci95=ci,
                      sensitivity=sensitivity or {})


def test_first_model_needs_the_floor_only():
    policy = Policy(BA, floor=0.6, guard_classes=("mel",), max_sensitivity_drop=0.0)
    ok = decide(policy, 0.61, NO_CHAMPION)
    assert ok.blessed and ok.reason.startswith("first champion: floor only")
    assert [c.name for c in ok.checks] == ["floor"] and ok.guard_outcome() == "not_applied"
    refused = decide(policy, 0.59, NO_CHAMPION)
    assert not refused.blessed and "below the floor" in refused.reason


def test_challenger_must_beat_champion_by_margin():
    policy = Policy("f1_macro", floor=0.5, min_delta=0.02)
    assert decide(policy, 0.80, COMPARED, _comparison(0.80, 0.75)).blessed
    assert not decide(policy, 0.76, COMPARED, _comparison(0.76, 0.75)).blessed
    assert not decide(Policy("f1_macro", 0.5), 0.70, COMPARED, _comparison(0.70, 0.75)).blessed
    # a better challenger under the floor is still refused
    refused = decide(policy, 0.45, COMPARED, _comparison(0.45, 0.30))
    assert not refused.blessed and "below the floor" in refused.reason


def _probs(pred: np.ndarray) -> np.ndarray:
    p = np.full((pred.size, len(HAM)), 0.01)
    p[np.arange(pred.size), pred] = 0.94
    return p


def test_a_challenger_that_wins_on_the_metric_but_loses_melanoma_sensitivity_is_refused():
    mel, nv, bkl = HAM.index("mel"), HAM.index("nv"), HAM.index("bkl")
    y = np.repeat(np.arange(len(HAM)), 10)  # 10 cases of each class
    champion = y.copy()
    champion[y != mel] = nv  # the champion finds every melanoma and little else
    champion[y == nv] = nv
    challenger = y.copy()  # right on every class ...
    challenger[np.flatnonzero(y == mel)[:5]] = bkl  # ... but misses half the melanomas
    groups = [f"lesion{i}" for i in range(y.size)]
    policy = policy_from_params({"metric": BA, "floor": 0.3, "min_delta": 0.0,
                                 "max_sensitivity_drop": 0.05, "bootstrap_resamples": 300,
                                 "guard_classes": {"ham10000": ["mel", "bcc", "akiec"]}},
                                "ham10000", HAM)
    comp = compare_models(y, groups, _probs(challenger), _probs(champion), HAM, policy,
                          n_test=y.size, excluded={"challenger": 0, "champion": 0})
    assert comp.challenger_score > comp.champion_score + 0.5  # it wins on the metric, clearly
    assert comp.delta_ci95[0] > 0  # even the interval's lower bound
    assert comp.sensitivity["mel"] == {"support": 10, "champion": 1.0, "challenger": 0.5, "drop": 0.5}
    decision = decide(policy, comp.challenger_score, COMPARED, comp)
    assert not decision.blessed and decision.guard_outcome() == "refused"
    assert "sensitivity of mel drops from 1.0000 (champion) to 0.5000 (challenger)" in decision.reason
    assert "max_sensitivity_drop 0.05" in decision.reason
    assert {c.name: c.passed for c in decision.checks} == {
        "floor": True, "min_delta": True, "sensitivity:mel": False, "sensitivity:bcc": True,
        "sensitivity:akiec": True}
    # the same challenger without the melanoma misses is blessed
    fixed = compare_models(y, groups, _probs(y), _probs(champion), HAM, policy, n_test=y.size,
                           excluded={})
    assert decide(policy, fixed.challenger_score, COMPARED, fixed).blessed


def test_a_guarded_class_with_no_compared_case_cannot_be_verified():
    policy = Policy(BA, floor=0.0, guard_classes=("mel",), max_sensitivity_drop=0.1)
    comp = _comparison(0.9, 0.5, sensitivity={"mel": {"support": 0, "champion": None,
                                                      "challenger": None, "drop": None}})
    decision = decide(policy, 0.9, COMPARED, comp)
    assert not decision.blessed and "sensitivity of mel cannot be checked" in decision.reason


def test_the_interval_requirement():
    loose = Policy(BA, floor=0.0, min_delta=0.0)
    strict = Policy(BA, floor=0.0, min_delta=0.0, require_ci_above_delta=True)
    wide = _comparison(0.73, 0.70, ci=(-0.01, 0.07))
    assert decide(loose, 0.73, COMPARED, wide).blessed
    refused = decide(strict, 0.73, COMPARED, wide)
    assert not refused.blessed
    assert "interval of the balanced_accuracy difference [-0.0100, +0.0700] does not lie above" in refused.reason
    assert decide(strict, 0.73, COMPARED, _comparison(0.73, 0.70, ci=(0.01, 0.05))).blessed
    assert not decide(strict, 0.73, COMPARED, _comparison(0.73, 0.70, ci=None)).blessed
    above_delta = Policy(BA, floor=0.0, min_delta=0.02, require_ci_above_delta=True)
    assert not decide(above_delta, 0.73, COMPARED, _comparison(0.73, 0.70, ci=(0.01, 0.05))).blessed


def _frames(n: int = 30) -> dict[str, pd.DataFrame]:
    rows = pd.DataFrame({"sha256": [f"sha{i}" for i in range(n)], "group_id": [f"g{i // 2}" for i in range(n)],
                         "label": ["a", "b"] * (n // 2)})
    return {"train": rows[:10], "val": rows[10:16], "test": rows[16:].reset_index(drop=True)}


def test_images_either_model_saw_are_excluded_from_the_comparison():
    frames = _frames()
    test = frames["test"]
    ours = training_fingerprint(frames)
    assert ours["counts"] == {"train": 10, "val": 6, "unique_images": 16, "groups": 8}
    assert ours["sha256"] == sorted(ours["sha256"]) and len(ours["digest"]) == 64
    # an older champion trained on a split where test images 16 and 20 (and 20's lesion) were train
    theirs = {"sha256": ["sha16", "sha20", "elsewhere"], "group_ids": ["g10"]}
    fair, excluded = fair_test_images(test, {"challenger": ours, "champion": theirs})
    assert excluded == {"challenger": 0, "champion": 3}  # sha16, sha20, and sha21 (lesion g10)
    assert sorted(set(test["sha256"]) - set(fair["sha256"])) == ["sha16", "sha20", "sha21"]
    # today's split put a second image of a lesion the challenger trained on into test
    moved = test.copy()
    moved.loc[0, "group_id"] = "g0"
    fair, excluded = fair_test_images(moved, {"challenger": ours, "champion": None})
    assert excluded == {"challenger": 1, "champion": 0} and len(fair) == len(test) - 1


def test_no_fair_image_left_refuses_and_says_why():
    comp = Comparison(n_test=12, n_compared=0, excluded={"challenger": 0, "champion": 12})
    decision = decide(Policy(BA, floor=0.0), 0.9, COMPARED, comp)
    assert not decision.blessed and "no test image is left that neither model trained on" in decision.reason


def test_unscorable_or_incomparable_champion_falls_back_to_the_floor():
    policy = Policy(BA, floor=0.5, guard_classes=("mel",))
    note = "medscan-ham10000 version 3 (run abc): artifact 'medscan/train_info.json' is missing"
    ok = decide(policy, 0.6, UNSCORABLE, champion_note=note)
    assert ok.blessed and ok.reason.startswith(f"champion unscorable ({note}): floor only")
    assert not decide(policy, 0.4, UNSCORABLE, champion_note=note).blessed
    assert decide(policy, 0.6, OTHER_LABELS, champion_note="other labels").blessed


def test_guarded_classes_must_exist_and_default_to_the_malignant_ones():
    from pipelines.config import load_params

    pp = load_params(Path(__file__).resolve().parents[1])["promote"]
    assert policy_from_params(pp, "ham10000", HAM).guard_classes == ("mel", "bcc", "akiec")
    assert policy_from_params(pp, "malaria", ["Parasitized", "Uninfected"]).guard_classes == ("Parasitized",)
    assert policy_from_params(pp, "dermnet", ["Acne"]).guard_classes == ()
    assert pp["require_ci_above_delta"] is False
    with pytest.raises(ValueError, match="melanoma"):
        policy_from_params({**pp, "guard_classes": {"ham10000": ["melanoma"]}}, "ham10000", HAM)


# ----------------------------------------------------------------------------- with MLflow
def _tiny_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3), name="image")
    outputs = keras.layers.Dense(2, activation="softmax", name="probs")(keras.layers.Flatten()(inputs))
    return keras.Model([inputs], outputs)   # a list of inputs, as zoo.heads builds them


def _logged_run(tmp_path, experiment_id: str, seed: int) -> str:
    model = _tiny_model(seed)
    info = {"classes": ["a", "b"], "image_size": 4, "metadata_columns": []}
    path = tmp_path / f"run{seed}" / "train_info.json"
    path.parent.mkdir()
    path.write_text(json.dumps(info))
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifact(str(path), artifact_path="medscan")
        mlflow.tensorflow.log_model(model, name="model", pip_requirements=["keras"])
    return run.info.run_id


@pytest.mark.slow
def test_champion_previous_and_rollback(tmp_path, mlflow_store):
    client = MlflowClient()
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    name = "medscan-test"
    versions = []
    for seed in range(3):
        run_id = _logged_run(tmp_path, experiment, seed)
        mv = registry.register(client, name, run_id, {"medscan.git_commit": "abc", "seed": seed})
        assert registry.register(client, name, run_id, {"again": "1"}).version == mv.version  # once per run
        registry.set_champion(client, name, mv.version)
        versions.append(str(mv.version))
    assert str(registry.version_by_alias(client, name, "champion").version) == versions[2]
    assert str(registry.version_by_alias(client, name, "previous").version) == versions[1]
    assert client.get_model_version(name, versions[0]).tags["medscan.git_commit"] == "abc"

    assert registry.rollback(client, name) == versions[1]
    assert str(registry.version_by_alias(client, name, "champion").version) == versions[1]
    assert str(registry.version_by_alias(client, name, "previous").version) == versions[0]
    assert client.get_model_version(name, versions[2]).tags["medscan.rolled_back"] == "true"

    assert registry.rollback(client, name) == versions[0]
    assert registry.version_by_alias(client, name, "previous") is None
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback(client, name)

    model, info = registry.load_version(name, registry.version_by_alias(client, name, "champion"))
    assert info["classes"] == ["a", "b"]
    probs = model.predict({"image": np.zeros((1, 4, 4, 3), np.float32)}, verbose=0)
    assert probs.shape == (1, 2)


PARAMS = {
    "dataset": {"name": "toy"}, "train": {}, "augment": {}, "split": {},
    "promote": {"model_name_prefix": "medscan", "metric": BA, "floor": 0.0, "min_delta": -1.0,
                "require_ci_above_delta": False, "bootstrap_resamples": 200, "bootstrap_seed": 0,
                "max_sensitivity_drop": 1.0, "guard_classes": {"toy": ["a"]}},
}


def _toy_project(root: Path) -> None:
    """60 tiny images in train/val/test and their split table."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "data" / "images").mkdir(parents=True)
    rows = []
    for i in range(60):
        rel = f"data/images/{i}.png"
        Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(root / rel)
        split = "train" if i < 30 else "val" if i < 40 else "test"
        rows.append({"image_id": f"img{i}", "path": rel, "sha256": f"sha{i}", "label": "ab"[i % 2],
                     "group_id": f"g{i // 2}", "split": split})
    pd.DataFrame(rows).to_parquet(root / "data" / "splits.parquet", index=False)


def _candidate(root: Path, arch: str, seed: int, fingerprint: dict) -> None:
    """What train, evaluate and compare leave for promote: model dir, MLflow run, metrics, compare.json."""
    from pipelines import tracking
    from pipelines.config import Paths

    paths = Paths(root)
    experiment = tracking.configure(paths, "toy")
    parent = tracking.parent_run_id(experiment, f"toy-{arch}", run_name=arch)
    out = paths.model_dir(arch)
    out.mkdir(parents=True)
    model = _tiny_model(seed)
    model.save(out / "model.keras")
    with mlflow.start_run(experiment_id=experiment, parent_run_id=parent) as run:
        info = {"classes": ["a", "b"], "image_size": 4, "metadata_columns": [], "run_id": run.info.run_id,
                "parent_run_id": parent, "split_sizes": {"train": 30, "val": 10, "test": 20},
                "spec": {"builder": "toy"}}
        (out / "train_info.json").write_text(json.dumps(info))
        write_fingerprint(paths.train_fingerprint(arch), fingerprint)
        mlflow.log_artifact(str(out / "train_info.json"), artifact_path="medscan")
        mlflow.log_artifact(str(paths.train_fingerprint(arch)), artifact_path="medscan")
        mlflow.tensorflow.log_model(model, name="model", pip_requirements=["keras"])
    metrics = {"val": {BA: 0.61}, "test": {BA: 0.55, "ci95": {BA: [0.4, 0.7]}}}
    paths.eval_report(arch).parent.mkdir(parents=True, exist_ok=True)
    paths.eval_report(arch).write_text(json.dumps(metrics))
    paths.compare_dir.mkdir(parents=True, exist_ok=True)
    (paths.compare_dir / "compare.json").write_text(json.dumps({"best": arch, "rank_split": "val"}))


@pytest.mark.slow
def test_promote_first_champion_fair_comparison_and_unscorable_champion(tmp_path, monkeypatch):
    from pipelines.config import Paths
    from pipelines.promote import run as promote
    from pipelines.manifest import read_splits
    from pipelines.inference import save_probabilities

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "project"
    _toy_project(root)
    paths = Paths(root)
    frames = read_splits(paths)

    # 1. first champion: floor only, with its own interval
    _candidate(root, "m1", 1, training_fingerprint(frames))
    first = promote(paths, PARAMS)
    assert first["blessed"] == 1 and first["champion_state"] == "none" and first["comparison"] is None
    assert first["candidate_ci95"] == [0.4, 0.7] and first["selected_on"] == "val"
    assert first["candidate_val_score"] == 0.61 and first["guard"]["outcome"] == "not_applied"
    assert first["reason"].startswith("first champion: floor only")
    assert json.loads(paths.promotion.read_text()) == first
    again = promote(paths, PARAMS)  # promote re-run on the same candidate: nothing to decide
    assert again["champion_state"] == "is_candidate" and again["blessed"] == 1
    assert again["candidate_version"] == first["candidate_version"] and again["checks"] == []
    tags = MlflowClient().get_model_version("medscan-toy", first["candidate_version"]).tags
    assert tags["medscan.blessed"] == "true" and tags["medscan.gate.champion_state"] == "none"

    # 2. the champion's fingerprint (an older split) covers 4 of today's 20 test images
    older = {**frames, "train": pd.concat([frames["train"], frames["test"][:4]])}
    client = MlflowClient()
    champion = registry.version_by_alias(client, "medscan-toy", "champion")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    fp_path = tmp_path / "older" / "train_fingerprint.json"
    write_fingerprint(fp_path, training_fingerprint(older))
    with mlflow.start_run(run_id=champion.run_id):
        mlflow.log_artifact(str(fp_path), artifact_path="medscan")  # replaces the recorded one
    _candidate(root, "m2", 2, training_fingerprint(frames))
    second = promote(paths, PARAMS)
    comp = second["comparison"]
    assert second["champion_state"] == "compared" and second["champion_before"] == first["candidate_version"]
    assert comp["n_test"] == 20 and comp["n_compared"] == 16 and comp["n_excluded"] == 4
    assert comp["excluded_by"] == {"challenger": 0, "champion": 4}
    assert comp["fingerprints"] == {"challenger": "recorded", "champion": "recorded"}
    assert comp["delta_ci95"][0] <= comp["delta"] <= comp["delta_ci95"][1]
    assert comp["bootstrap"]["n_resamples"] == 200 and comp["bootstrap"]["unit"] == "group_id"
    assert comp["sensitivity"]["a"]["support"] == 8
    assert second["blessed"] == 1  # min_delta -1 and a guard of 1.0: this toy gate always passes
    tags = client.get_model_version("medscan-toy", second["candidate_version"]).tags
    assert json.loads(tags["medscan.gate.comparison"])["n_compared"] == 16
    assert tags["medscan.gate.champion_state"] == "compared" and tags["medscan.val_balanced_accuracy"]
    assert {f"medscan.gate.{k}" for k in second if k not in ("blessed", "reason", "lineage", "model_name",
                                                            "registered", "experiment",
                                                            "candidate_version", "champion_after")} <= set(tags)

    # 2b. evaluate's saved test probabilities are the challenger's: it is not scored again
    _candidate(root, "m2s", 5, training_fingerprint(frames))
    test = frames["test"]
    perfect = np.eye(2)[test["label"].map({"a": 0, "b": 1}).to_numpy()]
    save_probabilities(paths.test_probabilities("m2s"), test.iloc[::-1], perfect[::-1], ["a", "b"])
    saved = promote(paths, PARAMS)
    assert saved["champion_state"] == "compared" and saved["comparison"]["challenger_score"] == 1.0

    # 3. a champion without a fingerprint (trained before they were recorded): nothing can be
    # excluded for it, which can only favour it; promotion.json says so
    champion = registry.version_by_alias(client, "medscan-toy", "champion")
    run_artifacts = Path(client.get_run(champion.run_id).info.artifact_uri.removeprefix("file://"))
    (run_artifacts / "medscan" / "train_fingerprint.json").unlink()
    _candidate(root, "m2b", 4, training_fingerprint(frames))
    unknown = promote(paths, PARAMS)
    assert unknown["champion_state"] == "compared"
    assert unknown["comparison"]["fingerprints"]["champion"] == "missing"
    assert unknown["comparison"]["excluded_by"] == {"challenger": 0, "champion": 0}
    assert "has no training fingerprint" in unknown["champion_note"]
    assert "any overlap favours the champion" in unknown["champion_note"]

    # 4. the champion's artifacts are deleted from mlartifacts/
    champion = registry.version_by_alias(client, "medscan-toy", "champion")
    logged = mlflow.get_logged_model(champion.source.removeprefix("models:/"))
    shutil.rmtree(Path(logged.artifact_location.removeprefix("file://")).parent)
    with pytest.raises(registry.ArtifactMissing, match=f"version {champion.version} .*logged model"):
        registry.load_version("medscan-toy", champion)
    run_artifacts = client.get_run(champion.run_id).info.artifact_uri.removeprefix("file://")
    assert Path(run_artifacts).is_relative_to(root / "mlartifacts")
    shutil.rmtree(run_artifacts)
    with pytest.raises(registry.ArtifactMissing) as err:
        registry.load_version("medscan-toy", champion)
    message = str(err.value)
    assert f"medscan-toy version {champion.version}" in message and "artifact 'medscan/train_info.json'" in message
    assert "deleted, or never logged" in message
    _candidate(root, "m3", 3, training_fingerprint(frames))
    third = promote(paths, PARAMS)
    assert third["champion_state"] == "unscorable" and third["champion_unscorable"] is True
    assert third["blessed"] == 1 and third["comparison"] is None
    assert third["reason"].startswith(f"champion unscorable (medscan-toy version {champion.version}")
    assert "floor only" in third["reason"] and third["champion_after"] == third["candidate_version"]
    assert json.loads(paths.promotion.read_text())["champion_unscorable"] is True
