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
    mlflow.set_registry_uri(f"sqlite:///{project / 'mlflow.db'}")   # not a store an earlier test left
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
    parents = [r for r in runs if not r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and parents[0].info.run_name.startswith("ham10000 ")   # one execution
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    inputs = client.get_run(children[0].info.run_id).inputs.dataset_inputs
    assert sorted(t.value for i in inputs for t in i.tags if t.key == "mlflow.data.context") == [
        "test", "train", "val"]
    assert all(i.dataset.digest for i in inputs)
    assert json.loads(tags["medscan.git_changed_files"]) and "+" not in tags["medscan.git_commit"]
    experiment = client.get_experiment_by_name("medscan-ham10000")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


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


def test_dvc_metrics_show_is_readable(project):
    out = dvc(project, "metrics", "show")
    # Before: 6 lines, 79,196 characters, lines up to 13,212 (every value of every report).
    # After: 6 lines, about 3,000 characters, lines of about 500 (one column per headline key).
    assert len(out.splitlines()) <= 8 and len(out) < 4500 and max(map(len, out.splitlines())) < 700, out
    for name in ("cnn_small", "cnn_medium", "validate", "split", "promote"):
        assert f"metrics/{name}.json" in out, out


def test_dvc_plots_have_axes_and_templates(project):
    # The JSON document first; DVC may add a warning line after it.
    shown = json.JSONDecoder().raw_decode(dvc(project, "plots", "show", "--json"))[0]["data"]
    encoding = {path: plot[0]["content"].get("encoding") or plot[0]["content"]["spec"]["encoding"]
                for path, plot in shown.items() if plot}   # the confusion template is a faceted spec
    # (an ensemble has no learning curve of its own: its header-only file draws nothing)
    axes = {path: (enc["x"]["field"], enc["y"]["field"]) for path, enc in encoding.items()}
    assert axes["plots/dvc/confusion/cnn_small.csv"] == ("actual", "predicted")
    assert axes["plots/dvc/roc/cnn_medium.csv"] == ("fpr", "tpr")
    assert axes["plots/dvc/calibration/cnn_small.csv"] == ("confidence", "accuracy")
    assert axes["plots/dvc/learning_curves/cnn_small.csv"][0] == "epoch"
    assert encoding["plots/dvc/roc/cnn_small.csv"]["color"]["field"] == "class"   # a line per class
    roc = shown["plots/dvc/roc/cnn_small.csv"][0]["content"]["data"]["values"]
    assert "macro" in {d["class"] for d in roc} and len({d["class"] for d in roc}) >= 3
    curves = shown["plots/dvc/learning_curves/cnn_small.csv"][0]["content"]["data"]["values"]
    assert {"loss", "val_loss", "accuracy"} <= {d["field"] for d in curves}
    dvc(project, "plots", "show")              # the offline page named in .dvc/config
    html = (project / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    assert "vegaEmbed(" in html and "cdn.jsdelivr" not in html and "<script src" not in html


def test_an_experiment_leaves_the_registry_alone(project):
    """Inside `dvc exp run` promote decides and reports, but sets no alias and registers nothing."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{project / 'mlflow.db'}")   # not a store an earlier test left
    client = MlflowClient()
    name = "medscan-ham10000"
    champion = client.get_model_version_by_alias(name, "champion").version
    client.delete_registered_model_alias(name, "champion")      # no champion: a plain run would bless
    saved = {f: (project / f).read_text() for f in ("params.yaml", "dvc.lock")}
    try:
        dvc(project, "exp", "run", "-n", "floor-up", "-S", "promote.floor=0.01")   # reruns promote only
        outcome = json.loads((project / "reports" / "promotion.json").read_text())
        assert outcome["registered"] is False and outcome["candidate_version"] is None
        assert outcome["experiment"] == "floor-up" and outcome["champion_after"] is None
        assert not client.get_registered_model(name).aliases
        assert json.loads((project / "metrics" / "promote.json").read_text())["candidate_version"] is None
    finally:
        client.set_registered_model_alias(name, "champion", champion)
        for f, text in saved.items():
            (project / f).write_text(text)
        dvc(project, "checkout", "--force")


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
