"""The whole pipeline through real DVC, TensorFlow and MLflow on tiny generated data.

One temporary project copy: `dvc repro` runs every stage and ends with a registered champion that
carries its lineage; a second `dvc repro` does nothing; a changed training param reruns only
train and what follows.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import copy_project, set_params, venv_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TINY = {
    "demo": {"images_per_class": 12, "image_size": 24},
    "train": {"image_size": 24, "epochs": 1, "batch_size": 16},
    "validate": {"min_images_per_class": 2},
    "evaluate": {"gradcam_per_class": 1},
    "promote": {"floor": 0.0},
    "architectures": ["cnn_small", "cnn_medium"],
}


def dvc(root, *args: str) -> str:
    done = subprocess.run(["dvc", *args], cwd=root, env=venv_env(root), capture_output=True, text=True)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("medscan"))
    set_params(root, TINY)
    dvc(root, "repro")
    return root


def test_repro_registers_a_champion_with_lineage(project):
    import mlflow
    from mlflow import MlflowClient

    outcome = json.loads((project / "reports" / "promotion.json").read_text())
    assert outcome["blessed"] == 1 and outcome["champion_after"] == outcome["candidate_version"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = MlflowClient()
    champion = client.get_model_version_by_alias("medscan-ham10000", "champion")
    assert str(champion.version) == str(outcome["candidate_version"])
    tags = champion.tags
    assert len(tags["medscan.git_commit"].split("+")[0]) == 40
    assert tags["medscan.dvc_md5.data/images"].endswith(".dir")
    assert tags["medscan.dataset"] == "ham10000" and tags["medscan.blessed"] == "true"
    assert json.loads(tags["medscan.split_sizes"])["test"] > 0
    runs = mlflow.search_runs(experiment_names=["medscan-ham10000"], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert {r.data.tags["medscan.arch"] for r in children} == {"cnn_small", "cnn_medium", "ensemble"}
    assert all("test_balanced_accuracy" in r.data.metrics for r in children)


def test_reports_and_quarantine_are_written(project):
    for rel in ("reports/validation.json", "reports/split_report.json", "reports/compare/compare.md",
                "reports/compare/compare.html", "metrics/cnn_small.json", "plots/cnn_small/gradcam.png",
                "data/quarantine.csv", "reports/data_docs"):
        assert (project / rel).exists(), rel
    assert json.loads((project / "reports/split_report.json").read_text())["overlapping_groups"] == 0
    # The ensemble of the two architectures is a candidate like them (pipelines/assemble.py).
    ensemble = json.loads((project / "derived/metrics/ensemble.json").read_text())
    assert "skipped" not in ensemble and ensemble["val"] is not None and (project / "plots/ensemble/gradcam.png").exists()
    compare = json.loads((project / "reports/compare/compare.json").read_text())
    assert "ensemble" in compare["ranking"] and compare["skipped"] == {}


def test_second_repro_is_a_no_op(project):
    out = dvc(project, "repro")
    assert "Running stage" not in out
    assert "up to date" in dvc(project, "status")


def test_training_param_reruns_only_train_and_downstream(project):
    set_params(project, {"train": {"learning_rate": 0.002}})
    out = dvc(project, "repro", "--dry")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert {"train@cnn_small", "train@cnn_medium"} <= ran
    assert not ran & {"demo_data", "ingest", "validate", "split"}


def test_champion_serves_top5_and_rejects_non_images(project, monkeypatch):
    from pipelines.config import Paths, load_params
    from pipelines.serve import Predictor

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    predictor = Predictor.champion(load_params(project), Paths(project))
    image = next((project / "data" / "demo" / "ham10000" / "images").glob("*.jpg")).read_bytes()
    good, bad = predictor.predict([image, b"this is not an image"], {"age": 55, "sex": "female"})
    top = good["top"]
    assert len(top) == 5 and top[0]["probability"] >= top[-1]["probability"]
    assert {t["label"] for t in top} <= set(json.loads((project / "data/labels.json").read_text())["classes"])
    assert bad["error"] == "not_an_image"
