"""One retrain cycle on the real scale-out services (scripts/services-up.sh), and their failures.

PostgreSQL, Redis, SeaweedFS S3, an MLflow server (Postgres + S3 artifacts) and Airflow 3
(CeleryExecutor, one worker on the checkout queue) run on 127.0.0.1 with state in
.services/test/. A fresh project copy is configured only by settings (services.env, a committed
S3 DVC remote, params.yaml): new labelled cases land under an S3 prefix, a DAG run triggered
over REST takes them in and runs every stage on the Celery worker, the model and its artifacts go
to the MLflow server (artifacts in the S3 bucket), `dvc push` fills the S3 remote, and a fresh
clone reproduces the state with `git clone` + `dvc pull` (`dvc status` clean). Then: wrong S3
credentials, S3 down, Redis down and PostgreSQL down, each with a clear error, a retry where it
helps and no half-written registry state. Run by `make test-services` (not by `make test`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from services_stack import PROJECT, Stack, busy_ports
from tests.conftest import copy_project, set_params
from tests.test_dag_e2e import TINY, write_drop

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.timeout(1500)]

DAG_ID = "medscan_retrain_ham10000"
SECOND_DAG_ID = "medscan_retrain_malaria"
PREFIX = "s3://medscan-intake/ham10000/"
RUN_TIMEOUT_S = 600


def _postgres_reaches(path: Path) -> bool:
    """Whether the `postgres` user (PostgreSQL's, when the test runs as root) can enter `path`."""
    try:
        return subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--",
                               "test", "-x", str(path)], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _state_dir() -> Path:
    """Under the repo (git-ignored) unless MEDSCAN_SERVICES_TEST_DIR says otherwise. As root,
    PostgreSQL runs as `postgres`, which cannot enter a clone under a closed home (/root): then a
    fresh folder under /var/tmp, so CI passes wherever it clones (the test purges it at the end)."""
    if os.environ.get("MEDSCAN_SERVICES_TEST_DIR"):
        return Path(os.environ["MEDSCAN_SERVICES_TEST_DIR"])
    wanted = PROJECT / ".services" / "test"
    if os.geteuid() != 0 or _postgres_reaches(PROJECT):
        return wanted
    fallback = Path(tempfile.mkdtemp(prefix="medscan-services-test-", dir="/var/tmp"))
    fallback.chmod(0o755)
    return fallback


STATE = _state_dir()
TEMPORARY_STATE = STATE.name.startswith("medscan-services-test-")   # the /var/tmp fallback
# Settings a test needs to see an outage quickly; production keeps MLflow's defaults (7 retries).
FAST_MLFLOW_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def sh(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True,
       timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def git(root: Path, *args: str) -> str:
    return sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], root).stdout.strip()


def dvc(root: Path, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh([sys.executable, "-m", "dvc", *args], root, env, check=check)


def make_checkouts(base: Path, endpoint: str) -> tuple[Path, Path, Path]:
    """The ham10000 checkout (git origin: a bare repo; DVC remote: S3) and a malaria checkout
    listed in its params (two data sets, one Airflow)."""
    root = copy_project(base / "medscan")
    second = copy_project(base / "medscan-malaria")
    set_params(second, {**TINY, "dataset": {"name": "malaria", "root": "data/demo/malaria"}})
    set_params(root, {**TINY, "orchestration": {"checkouts": ["../medscan-malaria"]}})
    for args in (["remote", "add", "-d", "s3", "s3://medscan-dvc/cache"],
                 ["remote", "modify", "s3", "endpointurl", endpoint]):
        sh([sys.executable, "-m", "dvc", *args], root)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "tiny params, S3 remote, a second checkout")
    origin = base / "origin.git"
    sh(["git", "init", "-q", "--bare", str(origin)], base)
    git(root, "remote", "add", "origin", str(origin))
    git(root, "push", "-q", "origin", "HEAD")
    return root, second, origin


def upload_drop(stack: Stack, drop: Path) -> int:
    """New labelled cases arrive under the S3 prefix: images first, labels.csv last."""
    count = write_drop(drop)
    bucket, _, prefix = PREFIX[len("s3://"):].partition("/")
    s3 = stack.s3()
    for path in sorted(drop.iterdir(), key=lambda p: p.name == "labels.csv"):
        s3.upload_file(str(path), bucket, prefix + path.name)
    return count


def registry_state(env: dict[str, str], name: str) -> dict[str, Any]:
    """Every version, its aliases and tags, and the model's tags, as the server reports them."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    model = client.get_registered_model(name)
    versions = client.search_model_versions(f"name = '{name}'")
    return {"tags": dict(model.tags), "aliases": dict(model.aliases),
            "versions": sorted((int(v.version), v.run_id, v.source, tuple(sorted(v.aliases)),
                                tuple(sorted(v.tags.items()))) for v in versions)}


def _failure(stack: Stack, api, run_id: str) -> str:
    """Why a DAG run failed: task states, failed tasks' logs, the worker's and scheduler's logs."""
    lines = []
    try:
        tis = api.task_instances(DAG_ID, run_id)
        lines.append(json.dumps({t: ti["state"] for t, ti in tis.items()}))
        for task, ti in tis.items():
            if ti["state"] in ("failed", "up_for_retry"):
                lines.append(f"--- {task} log:\n{api.task_log(DAG_ID, run_id, task, max(ti['try_number'], 1))[-4000:]}")
    except AssertionError as exc:
        lines.append(str(exc))
    lines += [f"--- worker:\n{stack.log('airflow-worker')}", f"--- scheduler:\n{stack.log('airflow-scheduler')}"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def cycle(tmp_path_factory) -> dict[str, Any]:
    """Services up, one retrain cycle through Airflow; services down at the end of the module."""
    busy = busy_ports()
    if busy:
        pytest.fail(f"ports already in use ({', '.join(busy)}): stop those services first (make services-down)")
    base = tmp_path_factory.mktemp("services")
    stack = Stack(STATE, base / "medscan", {"MEDSCAN_S3_PREFIX": PREFIX, "MEDSCAN_GIT_PUSH": "origin"})
    stack.down("--purge")                       # nothing left from an earlier run
    out: dict[str, Any] = {"stack": stack, "base": base}
    try:
        started = time.monotonic()
        # The checkout needs the S3 endpoint before the services exist: the port is fixed.
        root, second, origin = make_checkouts(base, "http://127.0.0.1:8333")
        out.update(root=root, second=second, origin=origin)
        out["up_log"] = stack.up()
        out["up_s"] = round(time.monotonic() - started, 1)
        out["startup"] = stack.startup_times()
        env = stack.env
        out["env"] = env
        out["dropped"] = upload_drop(stack, base / "drop")

        api = stack.airflow()
        out["api"] = api
        api.wait_for_dag(DAG_ID)
        api.unpause(DAG_ID)
        cycle_started = time.monotonic()
        run_id = api.trigger(DAG_ID)
        out["run_id"] = run_id
        out["state"] = api.wait_for_run(DAG_ID, run_id, RUN_TIMEOUT_S)
        out["cycle_s"] = round(time.monotonic() - cycle_started, 1)
        out["tis"] = api.task_instances(DAG_ID, run_id)
        if out["state"] != "success":
            out["why"] = _failure(stack, api, run_id)
        print(f"\nservices up in {out['up_s']} s {out['startup']}; one cycle {out['cycle_s']} s")
        yield out
    finally:
        print(stack.down(*(("--purge",) if TEMPORARY_STATE else ())))   # .services/test is kept to debug
        if TEMPORARY_STATE:
            shutil.rmtree(STATE, ignore_errors=True)


def test_one_cycle_runs_every_stage_on_the_celery_worker(cycle):
    assert cycle["state"] == "success", cycle.get("why")
    tis = cycle["tis"]
    stages = {t for t in tis if t not in ("intake", "should_retrain", "publish", "record_outcome")}
    assert {"demo_data", "ingest", "validate", "split", "train.cnn_small", "promote"} <= stages
    assert {t: ti["state"] for t, ti in tis.items() if ti["state"] != "success"} == {}
    # every task went to the checkout queue and ran in the Celery worker (its log names each one)
    assert {ti["queue"] for ti in tis.values()} == {cycle["env"]["MEDSCAN_QUEUE"]}
    assert all(ti["hostname"] for ti in tis.values()), tis
    worker_log = (cycle["stack"].state / "logs" / "airflow-worker.log").read_text(errors="replace")
    received = worker_log.count("Task execute_workload[")
    assert received >= len(tis), f"the worker received {received} of {len(tis)} tasks:\n{worker_log[-3000:]}"


def test_intake_took_the_s3_cases(cycle):
    api = cycle["api"]
    intake = api.xcom(DAG_ID, cycle["run_id"], "intake")
    assert intake["accepted"] == cycle["dropped"], intake
    ledger = (cycle["root"] / "data" / "intake" / "s3_processed.csv").read_text().splitlines()
    assert len(ledger) == 1 + cycle["dropped"]   # header + one row per image (labels.csv is re-read)


def test_model_and_artifacts_are_on_the_mlflow_server_in_s3(cycle):
    env = cycle["env"]
    outcome = cycle["api"].xcom(DAG_ID, cycle["run_id"], "record_outcome")
    assert outcome["blessed"] is True and outcome["champion_after"] == outcome["candidate_version"]
    state = registry_state(env, outcome["model_name"])
    assert state["versions"] and state["tags"]["medscan.champion_history"] == str(outcome["candidate_version"])
    keys = cycle["stack"].keys("medscan-mlflow", "artifacts/")
    assert any(k.endswith("/MLmodel") for k in keys), keys[:20]
    assert any(k.endswith("promotion.json") for k in keys), keys[:20]
    # the checkout never wrote an MLflow store of its own
    assert not (cycle["root"] / "mlflow.db").exists() and not (cycle["root"] / "mlartifacts").exists()


def test_dvc_push_to_s3_and_a_fresh_clone_reproduces_the_state(cycle):
    root, env = cycle["root"], cycle["stack"].client_env()
    assert cycle["stack"].keys("medscan-dvc", "cache/"), "dvc push wrote nothing to s3://medscan-dvc/cache"
    head = git(root, "rev-parse", "HEAD")
    assert head == sh(["git", "rev-parse", "HEAD"], cycle["origin"]).stdout.strip()   # MEDSCAN_GIT_PUSH
    clone = cycle["base"] / "fresh-clone"
    sh(["git", "clone", "-q", str(cycle["origin"]), str(clone)], cycle["base"])
    dvc(clone, env, "pull", "-q")
    status = dvc(clone, env, "status")
    assert "Data and pipelines are up to date" in status.stdout, status.stdout + status.stderr
    for rel in ("data/manifest.parquet", "reports/promotion.json", "data/intake/cases.csv"):
        assert (clone / rel).read_bytes() == (root / rel).read_bytes(), rel


def test_two_data_sets_checkouts_share_one_airflow(cycle):
    api = cycle["api"]
    api.wait_for_dag(SECOND_DAG_ID)
    assert {DAG_ID, SECOND_DAG_ID, "medscan_drop_watch_ham10000", "medscan_drop_watch_malaria"} <= set(api.dag_ids())
    queues = {t["queue"] for t in api.tasks(SECOND_DAG_ID)}
    assert queues == {cycle["env"]["MEDSCAN_QUEUE"]}
    doc = api._call("GET", f"/api/v2/dags/{SECOND_DAG_ID}/details")["doc_md"]
    assert str(cycle["second"]) in doc    # its tasks run in its own checkout


def test_wrong_s3_credentials_fail_clearly_and_are_not_retried(cycle, monkeypatch):
    from pipelines import orchestrate

    env = cycle["stack"].client_env(AWS_SECRET_ACCESS_KEY="not-the-secret")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(orchestrate.StageFailed) as intake_error:
        orchestrate.take_in(cycle["root"], None, PREFIX, env["MEDSCAN_S3_ENDPOINT_URL"])
    assert "SignatureDoesNotMatch" in str(intake_error.value).splitlines()[0], intake_error.value
    assert not isinstance(intake_error.value, orchestrate.TransientFailure)
    code, output = orchestrate.run_command([sys.executable, "-m", "dvc", "push"], cycle["root"])
    assert code != 0 and ("SignatureDoesNotMatch" in output or "403" in output), output[-2000:]
    assert not orchestrate.is_transient(code, output), output[-2000:]


def test_s3_down_is_transient_and_the_retry_succeeds(cycle, monkeypatch):
    from pipelines import orchestrate

    stack = cycle["stack"]
    for key, value in stack.client_env(AWS_MAX_ATTEMPTS="2").items():
        monkeypatch.setenv(key, value)
    stack.down("s3")
    try:
        with pytest.raises(orchestrate.TransientFailure) as error:
            orchestrate.take_in(cycle["root"], None, PREFIX, stack.env["MEDSCAN_S3_ENDPOINT_URL"])
        assert "Could not connect to the endpoint URL" in str(error.value), error.value
    finally:
        stack.up("s3")
    summary = orchestrate.take_in(cycle["root"], None, PREFIX, stack.env["MEDSCAN_S3_ENDPOINT_URL"])
    assert summary["accepted"] == 0   # every key is in the ledger: nothing is taken twice


def test_redis_down_the_task_cannot_be_sent_and_its_retry_runs_once_redis_is_back(cycle):
    stack, api = cycle["stack"], cycle["api"]
    stack.down("redis")
    try:
        run_id = api.trigger(DAG_ID)
        deadline = time.monotonic() + 120
        state = None
        while time.monotonic() < deadline:
            state = api.task_instances(DAG_ID, run_id).get("intake", {}).get("state")
            if state == "up_for_retry":
                break
            time.sleep(3)
        assert state == "up_for_retry", f"intake is {state}\n{stack.log('airflow-scheduler')}"
        scheduler = stack.log("airflow-scheduler", 200_000)
        assert "Error sending Celery workload" in scheduler, scheduler[-3000:]
        line = next(l for l in scheduler.splitlines() if "Error sending Celery workload" in l)
        print(f"\nscheduler, Redis down: {line[:300]}")
    finally:
        stack.up("redis")
    # The task's retry (2 min back-off) is sent once the broker is back: the run completes.
    assert api.wait_for_run(DAG_ID, run_id, 420) == "success", _failure(stack, api, run_id)
    tis = api.task_instances(DAG_ID, run_id)
    assert tis["intake"]["try_number"] == 2 and tis["intake"]["state"] == "success"
    assert tis["promote"]["state"] == "skipped"     # nothing new arrived: the stages were skipped


def test_postgres_down_fails_clearly_and_leaves_the_registry_as_it_was(cycle, monkeypatch):
    from pipelines import orchestrate

    stack, root = cycle["stack"], cycle["root"]
    env = stack.client_env(**FAST_MLFLOW_FAILURE)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    name = json.loads((root / "reports" / "promotion.json").read_text())["model_name"]
    before = registry_state(env, name)
    stack.down("postgres")
    try:
        with pytest.raises(orchestrate.TransientFailure) as error:   # Airflow retries it
            orchestrate.run_stage(root, "promote", force=True)
        cause = str(error.value).splitlines()[0]
        assert "MlflowException" in cause and env["MLFLOW_TRACKING_URI"] in cause, cause
        assert re.search(r"too many 50[03] error responses", cause), cause
        print(f"\npromote, PostgreSQL down: {cause[:400]}")
    finally:
        stack.up("postgres")
    assert registry_state(env, name) == before
    # the retry, once PostgreSQL is back: the candidate is already the champion, nothing moves
    assert orchestrate.run_stage(root, "promote", force=True)["ran"]
    assert registry_state(env, name) == before
    # Airflow's scheduler exits on a lost metadata DB, with the cause in its log; services-up
    # starts what exited, and every component reports healthy again.
    scheduler = stack.log("airflow-scheduler", 400_000)
    assert "OperationalError" in scheduler and "127.0.0.1\", port 55432 failed" in scheduler
    stack.up("airflow")
    health = cycle["api"]._call("GET", "/api/v2/monitor/health")
    assert {k: v["status"] for k, v in health.items()} == dict.fromkeys(health, "healthy"), health
