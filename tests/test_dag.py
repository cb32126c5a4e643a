"""The Airflow retrain DAG matches dvc.yaml, and its task callables behave (no DAG run here).

Parsing: dags/ imports with no errors; one stage task per resolved DVC stage with DVC's own edges
(checked against pipelines.dag_spec and against the graph written out by hand); triggers, retries
and callbacks as designed. Callables (pipelines.orchestrate): the retrain decision table, and
`dvc repro --single-item` / commit / push on a tiny real DVC project.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
import pytest
import yaml

from pipelines import orchestrate
from pipelines.dag_spec import PipelineSpec, Stage, build_spec, read_spec, split_name, task_id
from tests.conftest import PROJECT, copy_project, venv_env

PARAMS = yaml.safe_load((PROJECT / "params.yaml").read_text(encoding="utf-8"))
DATASET = PARAMS["dataset"]["name"]
RETRAIN_ID, WATCH_ID = f"medscan_retrain_{DATASET}", f"medscan_drop_watch_{DATASET}"
AROUND = {"intake", "should_retrain", "publish", "record_outcome"}


def literal_edges(architectures: list[str], demo_root: bool = True) -> set[tuple[str, str]]:
    """dvc.yaml's graph written out by hand: what each stage reads from which stage."""
    edges = {("ingest", "validate"), ("ingest", "split"), ("validate", "split"), ("compare", "promote"),
             ("ingest", "promote"), ("split", "promote"),  # promote re-scores on data/images, splits
             # the ensemble candidate: built from every arch's model and metrics, then evaluated
             ("split", "ensemble"), ("ensemble", "evaluate_ensemble"), ("ingest", "evaluate_ensemble"),
             ("split", "evaluate_ensemble"), ("evaluate_ensemble", "compare"), ("ensemble", "promote"),
             ("evaluate_ensemble", "promote")}
    if demo_root:                       # dataset.root inside data/demo, the demo_data output
        edges.add(("demo_data", "ingest"))
    for arch in architectures:
        edges |= {("ingest", f"train@{arch}"), ("split", f"train@{arch}"), ("split", f"evaluate@{arch}"),
                  (f"train@{arch}", f"evaluate@{arch}"), (f"evaluate@{arch}", "compare"),
                  ("ingest", f"evaluate@{arch}"), (f"train@{arch}", "promote"), (f"evaluate@{arch}", "promote"),
                  (f"train@{arch}", "ensemble"), (f"evaluate@{arch}", "ensemble")}
    return edges


# ---------------------------------------------------------------- the DAG as Airflow parses it

@pytest.fixture(scope="module")
def dagbag():
    """Parse dags/ in-process, with a throw-away AIRFLOW_HOME (parsing needs no database)."""
    saved = {k: os.environ.get(k) for k in ("AIRFLOW_HOME", "AIRFLOW__CORE__LOAD_EXAMPLES", "MEDSCAN_ROOT")}
    with tempfile.TemporaryDirectory(prefix="medscan-airflow-") as home:
        os.environ.update(AIRFLOW_HOME=home, AIRFLOW__CORE__LOAD_EXAMPLES="False", MEDSCAN_ROOT=str(PROJECT))
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(PROJECT / "dags"))
        yield bag
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def spec() -> PipelineSpec:
    return read_spec(PROJECT)


@pytest.fixture(scope="module")
def retrain(dagbag):
    return dagbag.dags[RETRAIN_ID]


def test_dags_folder_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {RETRAIN_ID, WATCH_ID}


def test_one_task_per_dvc_stage_plus_intake_gate_publish_outcome(retrain, spec):
    stage_ids = {task_id(name) for name in spec.names}
    assert set(retrain.task_ids) == AROUND | stage_ids
    literal = {"demo_data", "ingest", "validate", "split", "ensemble", "evaluate_ensemble", "compare",
               "promote"} | {
        f"{family}.{arch}" for family in ("train", "evaluate") for arch in PARAMS["architectures"]}
    assert stage_ids == literal
    assert retrain.get_task(f"train.{PARAMS['architectures'][0]}").task_group.group_id == "train"


def test_stage_edges_are_exactly_dvcs(retrain, spec):
    assert spec.edges == literal_edges(PARAMS["architectures"],
                                       demo_root=PARAMS["dataset"]["root"].startswith("data/demo"))
    for stage in spec.stages:
        task = retrain.get_task(task_id(stage.name))
        expected_up = {task_id(u) for u in stage.upstream} or {"should_retrain"}
        assert task.upstream_task_ids == expected_up, stage.name
        expected_down = {task_id(d) for u, d in spec.edges if u == stage.name}
        if stage.name in spec.sinks:
            expected_down.add("publish")
        assert task.downstream_task_ids == expected_down, stage.name
    assert retrain.get_task("intake").downstream_task_ids == {"should_retrain"}
    assert retrain.get_task("should_retrain").downstream_task_ids == {task_id(r) for r in spec.roots}
    assert retrain.get_task("publish").upstream_task_ids == {task_id(s) for s in spec.sinks} == {"promote"}
    assert retrain.get_task("record_outcome").upstream_task_ids == {"publish"}


def test_stage_task_runs_its_dvc_stage(retrain, spec):
    for stage in spec.stages:
        task = retrain.get_task(task_id(stage.name))
        assert list(task.op_args) == [stage.name]
        assert f"dvc repro --single-item {stage.name}" in task.doc_md


def test_triggers_weekly_cron_or_drop_asset(dagbag, retrain):
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    cron = (PARAMS.get("orchestration") or {}).get("schedule", orchestrate.DEFAULT_SCHEDULE)
    timetable = retrain.timetable
    assert isinstance(timetable, AssetOrTimeSchedule)
    assert isinstance(timetable.timetable, CronTriggerTimetable) and timetable.timetable.expression == cron
    assets = list(timetable.asset_condition.objects)
    assert [a.name for a in assets] == [f"medscan_drop_{DATASET}"]
    watch = dagbag.dags[WATCH_ID]
    announce = watch.get_task("announce_drop")
    assert [o.uri for o in announce.outlets] == [assets[0].uri]
    sensor = watch.get_task("wait_for_labels")
    assert sensor.deferrable and sensor.soft_fail and sensor.filepath.endswith("/labels.csv")
    assert announce.upstream_task_ids == {"wait_for_labels"}


def test_run_settings_retries_and_params(retrain):
    assert retrain.catchup is False and retrain.max_active_runs == 1
    assert retrain.doc_md and "should_retrain" in retrain.doc_md
    assert {"force_retrain", "dvc_force", "drop_folder", "s3_prefix"} <= set(retrain.params.keys())
    assert retrain.params["force_retrain"] is False
    for task in retrain.tasks:
        assert task.retries == 2 and task.retry_exponential_backoff == 2.0, task.task_id
        assert task.retry_delay == timedelta(minutes=2)
        assert task.on_failure_callback, task.task_id
    assert retrain.get_task("record_outcome").outlets[0].name == f"medscan_promotion_{DATASET}"


def test_retry_policy_fails_fast_on_stage_errors_and_retries_transient_ones(retrain):
    from airflow.sdk import RetryAction

    policy = retrain.get_task("ingest").retry_policy
    assert policy.evaluate(orchestrate.StageFailed("x"), 1, 3).action == RetryAction.FAIL
    assert policy.evaluate(orchestrate.TransientFailure("x"), 1, 3).action == RetryAction.RETRY
    assert policy.evaluate(OSError("x"), 1, 3).action == RetryAction.DEFAULT


def test_failure_callback_names_dag_task_try_and_log(dagbag, caplog):
    notify = dagbag.dags[RETRAIN_ID].default_args["on_failure_callback"]
    ti = SimpleNamespace(dag_id=RETRAIN_ID, task_id="train.cnn_small", run_id="manual__1", try_number=2,
                         max_tries=2, log_url="http://127.0.0.1:8080/dags/x/runs/y/tasks/z?try_number=2")
    with caplog.at_level(logging.ERROR, logger="medscan.airflow"):
        notify({"ti": ti, "exception": RuntimeError("dvc repro train@cnn_small failed (exit 1)")})
    message = caplog.records[-1].getMessage()
    for part in ("MEDSCAN RETRAIN TASK FAILED", RETRAIN_ID, "train.cnn_small", "manual__1", "try=2/3",
                 "try_number=2", "exit 1"):
        assert part in message
    with caplog.at_level(logging.ERROR, logger="medscan.airflow"):   # as the DAG's own callback
        notify({"dag_run": SimpleNamespace(dag_id=RETRAIN_ID, run_id="scheduled__2"), "reason": "task_failure"})
    message = caplog.records[-1].getMessage()
    assert "MEDSCAN RETRAIN RUN FAILED" in message and "scheduled__2" in message and "task_failure" in message


def test_drop_sensor_needs_no_connection(dagbag, tmp_path):
    sensor = dagbag.dags[WATCH_ID].get_task("wait_for_labels")
    probe = type(sensor)(task_id="probe", filepath=str(tmp_path / "labels.csv"))
    assert probe.poke({}) is False
    (tmp_path / "labels.csv").write_text("file,label\n")
    assert probe.poke({}) is True


# ---------------------------------------------------------------- dag_spec

def test_build_spec_orders_topologically_and_rejects_bad_graphs():
    spec = build_spec([Stage("c", ("a", "b")), Stage("b", ("a",)), Stage("a")])
    assert spec.names == ["a", "b", "c"] and spec.roots == ["a"] and spec.sinks == ["c"]
    assert spec.edges == {("a", "b"), ("a", "c"), ("b", "c")}
    with pytest.raises(ValueError, match="unknown"):
        build_spec([Stage("a", ("ghost",))])
    with pytest.raises(ValueError, match="cycle"):
        build_spec([Stage("a", ("b",)), Stage("b", ("a",))])


def test_task_ids_read_well_and_are_valid():
    assert split_name("train@cnn_small") == ("train", "cnn_small")
    assert split_name("ingest") == (None, "ingest")
    assert task_id("evaluate@mobilenetv2_attention") == "evaluate.mobilenetv2_attention"
    assert task_id("sub/dvc.yaml:prep") == "sub_dvc.yaml_prep"


def test_spec_follows_params_architectures_and_data_root(tmp_path):
    root = copy_project(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["architectures"] = ["cnn_small", "malaria_cnn", "mobilenetv2_attention"]
    params["dataset"]["root"] = str(tmp_path / "elsewhere")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    spec = read_spec(root)
    assert spec.edges == literal_edges(params["architectures"], demo_root=False)
    assert spec.stage("ingest").tracked_deps == ()  # fresh checkout: intake not DVC-tracked yet
    assert spec.git_paths()[0] == "dvc.lock"
    assert "models/.gitignore" in spec.git_paths()
    assert "data/intake.dvc" in orchestrate.INTAKE_GIT_PATHS  # publish still offers it


def test_spec_sees_the_intake_once_it_is_dvc_tracked(tmp_path):
    root = copy_project(tmp_path)
    subprocess.run(["dvc", "add", "-q", "data/intake"], cwd=root, env=venv_env(root), check=True)
    spec = read_spec(root)
    assert spec.stage("ingest").tracked_deps == ("data/intake.dvc",)
    assert spec.git_paths()[:2] == ["dvc.lock", "data/intake.dvc"]


# ---------------------------------------------------------------- orchestrate: decisions and settings

@pytest.mark.parametrize(("accepted", "run_type", "force", "first", "retrain"), [
    (0, "manual", False, None, False),
    (0, "asset_triggered", False, None, False),
    (3, "asset_triggered", False, None, True),
    (2, "manual", False, None, True),
    (0, "manual", True, None, True),
    (0, "scheduled", False, None, True),
    (0, "manual", False, "no dvc.lock yet", True),
])
def test_retrain_decision(accepted, run_type, force, first, retrain):
    decision = orchestrate.retrain_decision(accepted, run_type, force, first)
    assert decision.retrain is retrain and decision.reason


def test_first_run_reason(tmp_path):
    names = ["ingest", "promote"]
    assert "dvc.lock" in orchestrate.first_run_reason(tmp_path, names)
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"ingest": {}}}))
    assert "promote" in orchestrate.first_run_reason(tmp_path, names)
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"stages": {"ingest": {}, "promote": {}}}))
    assert "promotion" in orchestrate.first_run_reason(tmp_path, names)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "promotion.json").write_text(json.dumps({"champion_after": None}))
    assert orchestrate.first_run_reason(tmp_path, names) == "no champion yet"
    (tmp_path / "reports" / "promotion.json").write_text(json.dumps({"champion_after": 1}))
    assert orchestrate.first_run_reason(tmp_path, names) is None


def test_settings_defaults_params_and_env(tmp_path):
    params = {"dataset": {"name": "malaria"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    s = orchestrate.load_settings(tmp_path, env={})
    assert (s.dataset, s.schedule, s.drop_folder) == ("malaria", "0 3 * * 1", tmp_path / "incoming")
    assert s.s3_prefix is None and s.watch_schedule == "*/10 * * * *"
    params["orchestration"] = {"schedule": "0 4 * * *", "drop_folder": "/srv/drop", "watch_schedule": None}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    s = orchestrate.load_settings(tmp_path, env={"MEDSCAN_S3_PREFIX": "s3://b/new"})
    assert (s.schedule, s.drop_folder, s.s3_prefix, s.watch_schedule) == ("0 4 * * *", Path("/srv/drop"),
                                                                         "s3://b/new", None)
    s = orchestrate.load_settings(tmp_path, env={"MEDSCAN_DROP": "mine"}, primary=False)
    assert s.drop_folder == Path("/srv/drop")   # env overrides only the primary checkout


def test_checkouts_lists_the_primary_then_configured_ones(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"dataset": {"name": "x"}, "orchestration": {"checkouts": ["../other", "."]}}))
    assert orchestrate.checkouts(tmp_path) == [tmp_path.resolve(), (tmp_path.parent / "other").resolve()]


@pytest.mark.parametrize(("code", "output", "transient"), [
    (1, "ERROR: Unable to acquire lock. Most likely another DVC process is running", True),
    (1, "botocore.exceptions.EndpointConnectionError: Could not connect", True),
    (-9, "", True),
    (1, "ValueError: validation failed: 2 expectations unmet", False),
])
def test_transient_failures_are_told_apart(code, output, transient):
    assert orchestrate.is_transient(code, output) is transient


def test_read_outcome(tmp_path):
    with pytest.raises(orchestrate.StageFailed, match="promotion.json"):
        orchestrate.read_outcome(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "promotion.json").write_text(json.dumps(
        {"blessed": 1, "candidate_version": 3, "champion_after": 3, "champion_before": 2,
         "metric": "balanced_accuracy", "candidate_score": 0.8, "model_name": "medscan-ham10000"}))
    outcome = orchestrate.read_outcome(tmp_path)
    assert outcome["blessed"] is True and outcome["champion_after"] == 3 and outcome["champion_before"] == 2


# ---------------------------------------------------------------- orchestrate on a real (tiny) DVC project

@pytest.fixture
def tiny_dvc(tmp_path) -> Path:
    """git + DVC project with one stage and a local remote; no Medscan code needed."""
    root = tmp_path / "proj"
    root.mkdir()
    env = venv_env(root)
    ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "make": {"cmd": "python -c \"import pathlib; pathlib.Path('out').mkdir(exist_ok=True); "
                        "pathlib.Path('out/x.txt').write_text(pathlib.Path('src.txt').read_text())\"",
                 "deps": ["src.txt"], "outs": ["out"]},
        "boom": {"cmd": "python -c \"raise SystemExit('bad data: 3 rows fail validation')\""}}}))
    (root / "src.txt").write_text("one\n")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")],
                ["git", "add", "-A"], ["git", *ident, "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root


def test_run_stage_runs_only_when_inputs_change(tiny_dvc):
    first = orchestrate.run_stage(tiny_dvc, "make")
    assert first["stage"] == "make" and first["ran"] is True
    assert (tiny_dvc / "out" / "x.txt").read_text() == "one\n"
    assert orchestrate.run_stage(tiny_dvc, "make")["ran"] is False
    assert orchestrate.run_stage(tiny_dvc, "make", force=True)["ran"] is True
    with pytest.raises(orchestrate.StageFailed, match="bad data"):
        orchestrate.run_stage(tiny_dvc, "boom")


def test_publish_commits_only_pipeline_files_and_pushes(tiny_dvc, tmp_path):
    orchestrate.run_stage(tiny_dvc, "make")
    (tiny_dvc / "notes.txt").write_text("someone else's work in progress\n")
    subprocess.run(["git", "add", "notes.txt"], cwd=tiny_dvc, check=True)
    result = orchestrate.publish(tiny_dvc, ["dvc.lock", "data/intake.dvc", ".gitignore"], "medscan: test run")
    assert result["commit"] and set(result["committed"]) == {"dvc.lock", ".gitignore"}
    show = subprocess.run(["git", "show", "--name-only", "--format=%s", "HEAD"], cwd=tiny_dvc,
                          capture_output=True, text=True, check=True).stdout.split()
    assert show[:3] == ["medscan:", "test", "run"] and "notes.txt" not in show
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=tiny_dvc,
                            capture_output=True, text=True, check=True).stdout.split()
    assert staged == ["notes.txt"]                      # left staged, not committed
    assert any(p.is_file() for p in (tmp_path / "remote").rglob("*"))   # dvc push
    again = orchestrate.publish(tiny_dvc, ["dvc.lock"], "medscan: nothing new")
    assert again["commit"] is None


def test_take_in_without_a_drop_accepts_nothing_and_creates_the_folder(tmp_path):
    drop = tmp_path / "incoming"
    summary = orchestrate.take_in(tmp_path, drop)
    assert summary["accepted"] == 0 and drop.is_dir()
    assert orchestrate.drop_waiting(drop) is False
    (drop / "labels.csv").write_text("file,label\n")
    assert orchestrate.drop_waiting(drop) is True
