"""The retrain DAG end to end: real Airflow (`dag.test()`), DVC, TensorFlow and MLflow, tiny data.

One temporary project copy, three runs of `medscan_retrain_ham10000`, as an operator would see them:
1. first run (no dvc.lock, no champion): every stage runs, a champion is promoted, dvc.lock is
   committed to the copy's git and the data pushed to its local DVC remote;
2. a second run with nothing new: the short-circuit skips every stage;
3. new labelled cases dropped in `incoming/`: intake accepts them, the pipeline retrains and the
   outcome (XCom + reports/promotion.json) is recorded, dvc.lock committed again.
Airflow runs in subprocesses with its own AIRFLOW_HOME, so the test session's config is untouched.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import copy_project, set_params, venv_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DAG_ID = "medscan_retrain_ham10000"
ARCH = "cnn_small"
TINY: dict[str, Any] = {
    "demo": {"images_per_class": 12, "image_size": 24},
    "train": {"image_size": 24, "epochs": 1, "batch_size": 16},
    "validate": {"min_images_per_class": 2},
    "evaluate": {"gradcam_per_class": 1},
    "promote": {"floor": 0.0},
    "architectures": [ARCH],
}
# One architecture: the ensemble stage runs and records itself skipped (fewer than 2 members).
STAGE_TASKS = ("demo_data", "ingest", "validate", "split", f"train.{ARCH}", f"evaluate.{ARCH}",
               "ensemble", "evaluate_ensemble", "compare", "promote")
RUN_TIMEOUT_S = 600

# Runs in a fresh interpreter: parse the copy's dags/, dag.test() once, print states and XComs.
DRIVER = r"""
import json, os, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from sqlalchemy import select

dag_id, conf = sys.argv[1], json.loads(sys.argv[2])
bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
assert not bag.import_errors, bag.import_errors
dag = bag.dags[dag_id]
dr = dag.test(run_conf=conf)
with create_session() as session:
    tis = dr.get_task_instances(session=session)
    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in tis}
    tries = {ti.task_id: ti.try_number for ti in tis}
    rows = session.scalars(XComModel.get_many(run_id=dr.run_id, key="return_value", dag_ids=dag_id)).all()
    xcoms = {row.task_id: XComModel.deserialize_value(row) for row in rows}
print("MEDSCAN-RESULT " + json.dumps({"state": str(getattr(dr.state, "value", dr.state)), "tasks": states,
                                      "tries": tries, "xcom": xcoms}, default=str))
"""


def airflow_env(root: Path, home: Path) -> dict[str, str]:
    env = venv_env(root)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    })
    return env


def run_dag(root: Path, env: dict[str, str], conf: dict[str, Any] | None = None) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", DRIVER, DAG_ID, json.dumps(conf or {})], cwd=root, env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    output = done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("MEDSCAN-RESULT ")]
    assert done.returncode == 0 and lines, f"dag.test failed (exit {done.returncode}):\n{output[-6000:]}"
    result = json.loads(lines[-1].removeprefix("MEDSCAN-RESULT "))
    result["seconds"] = round(time.monotonic() - started, 1)
    result["log"] = output
    return result


def promotion(root: Path, run: dict[str, Any]) -> dict[str, Any]:
    """The promote stage's outcome, or a failure that shows what the DAG run did instead."""
    path = root / "reports" / "promotion.json"
    assert path.exists(), f"no promotion.json after the run; tasks: {run['tasks']}\n{run['log'][-6000:]}"
    return json.loads(path.read_text())


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def write_drop(drop: Path, per_class: int = 3) -> int:
    """New labelled cases in the intake layout: images + labels.csv (file,label,group_id,age,sex)."""
    from pipelines.synth import HAM_LOOKS, lesion_image

    rng = np.random.default_rng(2024)
    drop.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in ("mel", "nv", "bcc"):
        for n in range(per_class):
            name = f"new_{label}_{n}.png"
            Image.fromarray(lesion_image(HAM_LOOKS[label], 24, 32, rng)).save(drop / name)
            rows.append({"file": name, "label": label, "group_id": f"NEW_{label}_{n}", "age": "55",
                         "sex": "female"})
    with open(drop / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    root = copy_project(tmp_path_factory.mktemp("medscan"))
    set_params(root, TINY)
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "tiny params")
    env = airflow_env(root, tmp_path_factory.mktemp("airflow_home"))
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], cwd=root, env=env,
                   check=True, capture_output=True, timeout=300)
    out: dict[str, Any] = {"root": root, "head0": git(root, "rev-parse", "HEAD")}

    out["first"] = run_dag(root, env)
    out["head1"] = git(root, "rev-parse", "HEAD")
    out["promotion1"] = promotion(root, out["first"])

    out["second"] = run_dag(root, env)
    out["head2"] = git(root, "rev-parse", "HEAD")

    out["dropped"] = write_drop(root / "incoming")
    out["third"] = run_dag(root, env)
    out["head3"] = git(root, "rev-parse", "HEAD")
    out["promotion3"] = promotion(root, out["third"])
    for name in ("first", "second", "third"):
        stages = {k: v["seconds"] for k, v in out[name]["xcom"].items() if isinstance(v, dict) and "seconds" in v}
        print(f"\n{name} DAG run: {out[name]['seconds']} s (stage tasks: {stages})")
    return out


def _fail_note(run: dict[str, Any]) -> str:
    return f"tasks: {run['tasks']}\nlog tail:\n{run['log'][-5000:]}"


def test_first_run_trains_promotes_commits_and_pushes(runs):
    first, root = runs["first"], runs["root"]
    assert first["state"] == "success", _fail_note(first)
    assert all(first["tasks"][t] == "success" for t in ("intake", "should_retrain", *STAGE_TASKS,
                                                        "publish", "record_outcome")), _fail_note(first)
    ran = set(first["xcom"]["record_outcome"]["stages_run"])
    assert ran == {"demo_data", "ingest", "validate", "split", f"train@{ARCH}", f"evaluate@{ARCH}",
                   "ensemble", "evaluate_ensemble", "compare", "promote"}
    promotion = runs["promotion1"]
    assert promotion["blessed"] == 1 and promotion["champion_after"] == promotion["candidate_version"]
    outcome = first["xcom"]["record_outcome"]
    assert outcome["blessed"] is True and outcome["champion_after"] == promotion["champion_after"]
    assert outcome["commit"] == runs["head1"] != runs["head0"]
    committed = set(git(root, "show", "--name-only", "--format=", runs["head1"]).split())
    assert {"dvc.lock", "models/.gitignore"} <= committed   # data/.gitignore already lists data outs
    assert f"retrain ham10000" in git(root, "log", "-1", "--format=%s", runs["head1"])
    # dvc push filled the default (local) remote with the cached outputs
    assert any((root / "dvc-remote").rglob("*")), "dvc push wrote nothing to dvc-remote/"


def test_second_run_without_new_cases_skips_the_stages(runs):
    second = runs["second"]
    assert second["state"] == "success", _fail_note(second)
    assert second["tasks"]["intake"] == "success" and second["xcom"]["intake"]["accepted"] == 0
    assert second["tasks"]["should_retrain"] == "success" and "should_retrain" not in second["xcom"]
    assert "SKIP: manual run, no new cases" in second["log"]
    skipped = {t: second["tasks"][t] for t in (*STAGE_TASKS, "publish", "record_outcome")}
    assert set(skipped.values()) == {"skipped"}, skipped
    assert runs["head2"] == runs["head1"]


def test_dropped_cases_are_ingested_retrained_and_recorded(runs):
    third, root = runs["third"], runs["root"]
    assert third["state"] == "success", _fail_note(third)
    assert third["xcom"]["intake"]["accepted"] == runs["dropped"]
    assert third["xcom"]["should_retrain"] is True
    assert not (root / "incoming" / "labels.csv").exists()   # intake moved the drop to processed/
    outcome = third["xcom"]["record_outcome"]
    assert {"ingest", "split", f"train@{ARCH}", "promote"} <= set(outcome["stages_run"])
    assert "demo_data" not in outcome["stages_run"]          # unchanged inputs stay cached
    promotion = runs["promotion3"]
    assert promotion["candidate_version"] == runs["promotion1"]["candidate_version"] + 1
    assert outcome["candidate_version"] == promotion["candidate_version"]
    assert outcome["champion_after"] == promotion["champion_after"] is not None
    # the new cases are in data/intake (versioned by data/intake.dvc) and in the manifest
    import pandas as pd

    cases = pd.read_csv(root / "data" / "intake" / "cases.csv")
    assert len(cases) == runs["dropped"]
    manifest = pd.read_parquet(root / "data" / "manifest.parquet")
    assert set(cases["sha256"]) <= set(manifest["sha256"])
    # committed: dvc.lock and the new data/intake.dvc, in one commit by the DAG
    assert outcome["commit"] == runs["head3"] != runs["head2"]
    committed = set(git(root, "show", "--name-only", "--format=", runs["head3"]).split())
    assert {"dvc.lock", "data/intake.dvc"} <= committed
    assert git(root, "status", "--porcelain", "--", "dvc.lock", "data/intake.dvc") == ""
