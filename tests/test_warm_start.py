"""Warm start: the `warm_start` candidate fine-tunes the registry champion through the ordinary
train code (same files, same MLflow run), and is skipped with a reason when it cannot.

Tiny: synthetic HAM-layout data at 24 px, one epoch, a private SQLite MLflow store.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from pipelines import registry, warm_start
from pipelines.config import Paths, load_params
from pipelines.evaluate import run as evaluate
from pipelines.ingest import ingest
from pipelines.manifest import read_manifest, write_labels, write_manifest
from pipelines.synth import make_ham10000
from pipelines.train import run as train
from pipelines.zoo import load_model
from tests.conftest import PROJECT

pytestmark = pytest.mark.slow

ARCH, CANDIDATE = "cnn_small", "warm_start"


@pytest.fixture
def project(tmp_path: Path, mlflow_store: str) -> tuple[Paths, dict]:
    """Ingested synthetic data with a fixed group-keyed split, and tiny training params."""
    params = copy.deepcopy(load_params(PROJECT))
    make_ham10000(tmp_path / "src", per_class=6, size=24, seed=3)
    paths = Paths(tmp_path / "project")
    ingest("ham10000", tmp_path / "src", paths, params["ingest"])
    frame = read_manifest(paths.manifest)
    bucket = frame["group_id"].map(lambda g: sum(map(ord, g)) % 5)   # whole groups, no split code
    frame["split"] = np.select([bucket == 0, bucket == 1], ["val", "test"], "train")
    write_manifest(frame, paths.splits)
    params["train"].update(image_size=24, epochs=1, batch_size=16, warm_start="champion",
                           warm_start_epochs_factor=1.0, warm_start_lr_factor=0.1)
    return paths, params


def _weights(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.weights]


def _distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(sum(np.sum((x - y) ** 2) for x, y in zip(a, b, strict=True)))


def test_fine_tunes_the_champion_and_writes_a_normal_candidate(project, monkeypatch):
    paths, params = project
    scratch = train(ARCH, paths, params)
    # evaluate logs the registered model (the calibrated pyfunc); here with the uncalibrated contract
    from pipelines.contract import load as load_contract
    from pipelines.pyfunc import log_pyfunc

    with mlflow.start_run(run_id=scratch["run_id"]):
        log_pyfunc(paths.model_dir(ARCH) / "model.keras", load_contract(paths.model_dir(ARCH) / "contract.json"),
                   paths.model_dir(ARCH).parent)
    client = MlflowClient()
    name = registry.model_name(params)
    version = registry.register(client, name, scratch["run_id"], {"medscan.arch": ARCH})
    registry.set_champion(client, name, version.version)
    champion = _weights(load_model(paths.model_dir(ARCH) / "model.keras", compile=False))

    started: dict[str, list[np.ndarray]] = {}
    resolve = warm_start.resolve

    def spy(*args, **kwargs):
        start = resolve(*args, **kwargs)
        if isinstance(start, warm_start.Start):
            started["weights"] = _weights(start.model)   # what fit() begins from
        return start

    monkeypatch.setattr(warm_start, "resolve", spy)
    info = train(CANDIDATE, paths, params)

    assert _distance(started["weights"], champion) == 0.0
    tuned = _weights(load_model(paths.model_dir(CANDIDATE) / "model.keras", compile=False))
    moved = _distance(tuned, champion)
    assert 0.0 < moved < 0.01 * _distance(champion, [np.zeros_like(w) for w in champion])

    out = paths.model_dir(CANDIDATE)
    assert {p.name for p in out.iterdir()} >= {"model.keras", "history.json", "train_info.json",
                                               warm_start.LINEAGE_FILE}
    assert not paths.skipped(CANDIDATE).exists()
    assert set(info) == set(scratch)
    assert info["arch"] == CANDIDATE and info["builder"] == scratch["builder"] == "custom_cnn"
    assert info["spec"] == scratch["spec"] and info["classes"] == scratch["classes"]
    assert info["metadata_features"] == scratch["metadata_features"]
    lineage = json.loads((out / warm_start.LINEAGE_FILE).read_text())
    assert lineage["version"] == str(version.version) and lineage["run_id"] == scratch["run_id"]

    run = client.get_run(info["run_id"])
    assert run.data.tags["medscan.warm_start.version"] == str(version.version)
    assert run.data.tags["medscan.arch"] == CANDIDATE
    assert float(run.data.params["train.learning_rate"]) == pytest.approx(
        0.1 * float(params["train"]["learning_rate"]))
    assert "medscan/contract.json" in {a.path for a in client.list_artifacts(info["run_id"], "medscan")}

    # Champion trained on other classes: the candidate refuses rather than mislabel its outputs.
    write_labels(list(reversed(scratch["classes"])), paths.labels)
    refused = warm_start.resolve(CANDIDATE, paths, params, list(reversed(scratch["classes"])))
    assert isinstance(refused, warm_start.Skip) and "classes" in refused.reason


def test_skipped_without_a_champion_and_when_off(project):
    paths, params = project
    marker = train(CANDIDATE, paths, params)
    assert "no 'champion' version of medscan-ham10000" in marker["skipped"]
    assert json.loads(paths.skipped(CANDIDATE).read_text()) == marker
    assert [p.name for p in paths.model_dir(CANDIDATE).iterdir()] == ["skipped.json"]

    report = evaluate(CANDIDATE, paths, params)
    assert report == {"skipped": marker["skipped"], "arch": CANDIDATE}
    assert json.loads(paths.eval_report(CANDIDATE).read_text()) == report
    assert paths.plots_dir(CANDIDATE).is_dir()

    params["train"]["warm_start"] = None
    assert train(CANDIDATE, paths, params)["skipped"] == "train.warm_start is off (null)"


def test_fine_tune_schedule():
    tp = {"epochs": 20, "learning_rate": 1e-3, "warm_start_epochs_factor": 0.2,
          "warm_start_lr_factor": 0.1}
    tuned = warm_start.fine_tune_params(tp)
    assert tuned["epochs"] == 4 and tuned["learning_rate"] == pytest.approx(1e-4)
    assert warm_start.fine_tune_params({**tp, "epochs": 2})["epochs"] == 1


def test_fine_tune_schedule_has_no_warmup():
    """A cosine recipe's warm-up (here as long as the whole warm start) must not make the
    schedule invalid: the champion's weights are trained, so the warm start decays from its rate."""
    from pipelines.schedules import learning_rate

    tp = {"epochs": 10, "learning_rate": 1e-3, "warm_start_epochs_factor": 0.2,
          "warm_start_lr_factor": 0.1, "lr_schedule": "cosine", "warmup_epochs": 2, "min_lr": 1e-6}
    tuned = warm_start.fine_tune_params(tp)
    assert tuned["epochs"] == 2 and tuned["warmup_epochs"] == 0
    schedule = learning_rate(tuned, steps_per_epoch=10)
    assert float(schedule(0)) == pytest.approx(1e-4)
    assert float(schedule(20)) == pytest.approx(1e-6, rel=1e-3)
