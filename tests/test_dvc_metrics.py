"""The DVC metrics files stay small (headline numbers only); full reports stay plain outputs;
promote leaves the registry alone inside `dvc exp run`; lineage records a clean commit."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import yaml

from pipelines import dvc_metrics, lineage
from pipelines.metrics import classification_metrics, majority_baseline
from pipelines.promote import registers
from tests.conftest import PROJECT


def _leaves(doc) -> int:
    return sum(_leaves(v) for v in doc.values()) if isinstance(doc, dict) else 1


def test_evaluation_headline_is_a_dozen_rounded_values():
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(7)]
    y = rng.integers(0, 7, 200)
    full = classification_metrics(y, rng.dirichlet(np.ones(7), 200), classes, top_k=2)
    assert _leaves(full) > 40   # what `dvc metrics show` printed per split before (a list counted once)
    full["ci95"] = {"balanced_accuracy": [0.1, 0.2], "accuracy": [0.1, 0.3]}
    report = {"val": full, "test": full, "baseline": majority_baseline(y, y, 7, classes)}
    head = dvc_metrics.evaluation(report)
    assert set(head["test"]) == {*dvc_metrics.HEADLINE, "balanced_accuracy_ci95_low",
                                 "balanced_accuracy_ci95_high"}
    assert set(head["val"]) == set(dvc_metrics.HEADLINE) and _leaves(head) == 6 + 8
    assert all(v is None or v == round(v, 4) for v in head["test"].values())
    json.dumps(head, allow_nan=False)     # NaN (undefined AUC) becomes null, never NaN
    assert dvc_metrics.evaluation({"val": None, "test": full, "baseline": {}})["val"] == {}


def test_stage_headlines_drop_lists_and_lineage():
    validation = {"success": True, "evaluated": 23, "failed": 0, "passed": 23, "rows": 98,
                  "quarantine_rate": 0.0, "quarantined": 0, "suite": "ham10000",
                  "expectations": [{"success": True}] * 23}
    assert dvc_metrics.validation(validation) == {"success": 1, "failed": 0, "rows": 98, "quarantined": 0}
    split = {"sizes": {"train": 70, "val": 14, "test": 14}, "overlapping_groups": 0,
             "stratification": {"max_abs_deviation_any_class": 0.123456, "per_class": {"a": {}}}}
    assert _leaves(dvc_metrics.split(split)) == 5
    outcome = {"blessed": 1, "candidate_score": 0.51234567, "champion_score": None, "candidate_version": 3,
               "champion_after": 3, "lineage": {"medscan.params": "{...}"}, "checks": [1, 2]}
    head = dvc_metrics.promotion(outcome)
    assert head["candidate_score"] == 0.5123 and "lineage" not in head and _leaves(head) == 5


def test_dvc_yaml_declares_only_the_small_files_as_metrics():
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    declared = {m for s in stages.values() for m in (s.get("do", s).get("metrics") or [])}
    assert declared == {"metrics/validate.json", "metrics/split.json", "metrics/${item}.json",
                        "derived/metrics/ensemble.json", "metrics/promote.json"}
    outs = {o for s in stages.values() for o in (s.get("do", s).get("outs") or [])}
    assert {"reports/validation.json", "reports/split_report.json", "reports/promotion.json",
            "reports/evaluate/${item}.json", "derived/reports/evaluate/ensemble.json"} <= outs


def test_plots_have_templates_and_axes():
    plots = {k: v for d in yaml.safe_load((PROJECT / "dvc.yaml").read_text())["plots"] for k, v in d.items()}
    assert plots["plots/dvc/confusion"].items() >= {"template": "confusion", "x": "actual", "y": "predicted"}.items()
    assert (plots["plots/dvc/roc"]["x"], plots["plots/dvc/roc"]["y"]) == ("fpr", "tpr")
    assert (PROJECT / ".dvc" / "plots" / f"{plots['plots/dvc/roc']['template']}.json").is_file()
    assert plots["plots/dvc/learning_curves"]["x"] == "epoch"
    assert {"loss", "val_loss", "accuracy"} <= set(plots["plots/dvc/learning_curves"]["y"])
    assert (plots["plots/dvc/calibration"]["x"], plots["plots/dvc/calibration"]["y"]) == ("confidence", "accuracy")
    page = (PROJECT / "vendor" / "vega" / "offline.html").read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{scripts}" not in page and "cdn.jsdelivr" not in page
    assert "<script src" not in page      # everything inline: nothing is fetched


def test_promote_registers_outside_experiments_or_when_asked():
    assert registers({}, env={})
    assert not registers({"register_experiments": False}, env={"DVC_EXP_NAME": "lr-up"})
    assert not registers({}, env={"DVC_EXP_BASELINE_REV": "abc"})
    assert registers({"register_experiments": True}, env={"DVC_EXP_NAME": "real-ham10000"})


def test_lineage_records_the_clean_commit_and_the_changed_files(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)
    (tmp_path / "dvc.lock").write_text("a\n")
    (tmp_path / "params.yaml").write_text("b\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "x")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert lineage.lineage_tags(tmp_path) == {lineage.COMMIT_TAG: head, lineage.CHANGED_TAG: "[]"}
    (tmp_path / "dvc.lock").write_text("changed by the run\n")
    (tmp_path / "untracked.txt").write_text("not listed\n")
    tags = lineage.lineage_tags(tmp_path)
    assert tags[lineage.COMMIT_TAG] == head and "+" not in tags[lineage.COMMIT_TAG]
    assert json.loads(tags[lineage.CHANGED_TAG]) == ["dvc.lock"]
    assert lineage.git_state(tmp_path / "nowhere")["commit"] == "unknown"


def test_publish_tags_the_registered_version(tmp_path, mlflow_store):
    import mlflow
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.config import Paths

    paths = Paths(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"dataset": {"name": "toy"}}))
    tracking.configure(paths, "toy")
    with mlflow.start_run() as run:
        mlflow.log_text("x", "model/MLmodel")
    client = MlflowClient()
    client.create_registered_model("medscan-toy")
    version = client.create_model_version("medscan-toy", f"runs:/{run.info.run_id}/model", run.info.run_id)
    paths.promotion.parent.mkdir(parents=True)
    paths.promotion.write_text(json.dumps({"model_name": "medscan-toy", "registered": True,
                                           "candidate_version": int(version.version)}))
    out = lineage.tag_published_version(tmp_path, "c0ffee", "scheduled__2026-12-01")
    assert out["tagged"] == f"medscan-toy/{version.version}"
    tags = client.get_model_version("medscan-toy", version.version).tags
    assert tags[lineage.PUBLISH_COMMIT_TAG] == "c0ffee" and tags[lineage.RUN_ID_TAG] == "scheduled__2026-12-01"
    paths.promotion.write_text(json.dumps({"model_name": "medscan-toy", "registered": False,
                                           "candidate_version": None}))
    assert lineage.tag_published_version(tmp_path, "c0ffee", "r")["tagged"] is None


def test_the_plots_page_renders_offline_in_a_browser(tmp_path):
    """dvc.yaml's plot definitions + the vendored page, in Chromium with every outside request
    refused: every chart draws, nothing is fetched, no script error."""
    import shutil
    import sys
    from pathlib import Path

    playwright = __import__("pytest").importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        __import__("pytest").skip("no Chromium installed")
    from pipelines.plots import plot_confusion_matrix, plot_learning_curves, plot_reliability, plot_roc_curves

    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    shutil.copytree(PROJECT / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    plots = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["plots"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    y, p = rng.integers(0, 3, 60), rng.dirichlet(np.ones(3), 60)
    full = classification_metrics(y, p, classes, top_k=2)
    data = tmp_path / "plots" / "dvc"
    png = tmp_path / "png"
    plot_confusion_matrix(np.asarray(full["confusion_matrix"]), classes, png / "c.png", data=data / "confusion" / "m.csv")
    plot_roc_curves(y, p, classes, png / "r.png", data=data / "roc" / "m.csv")
    plot_reliability(full["reliability"], png / "q.png", data=data / "calibration" / "m.csv")
    plot_learning_curves({"loss": [1.0, 0.8], "val_loss": [1.1, 0.9], "accuracy": [0.3, 0.5],
                          "val_accuracy": [0.2, 0.4]}, png / "l.png", data=data / "learning_curves" / "m.csv")
    subprocess.run([dvc, "plots", "show", "--html-template", str(PROJECT / "vendor" / "vega" / "offline.html"),
                    "-o", "out"], cwd=tmp_path, check=True, capture_output=True)
    outside, errors = [], []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file://")
                   else (outside.append(r.request.url), r.abort()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp_path / "out" / "index.html").as_uri())
        page.wait_for_selector(".vega-embed svg, .vega-embed canvas")
        page.wait_for_timeout(1000)
        drawn = page.locator(".vega-embed svg, .vega-embed canvas").count()
        browser.close()
    assert drawn >= 4 and outside == [] and errors == []
