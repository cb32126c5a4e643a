"""kill -9 of `dvc repro` during a stage: the stage dies too and its MLflow run ends KILLED (issue 10).

The stage is a small stand-in (MLflow run + a long loop, no TensorFlow) run by a real `dvc repro`
through `$SHELL -c`, under dash (dvc -> sh -> python) and bash (dvc -> python, bash execs).
Every wait is bounded.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines import lifecycle
from tests.conftest import PROJECT, venv_env

# What a training stage does, reduced to its lifecycle: configure MLflow (which installs the
# lifecycle in a stage process), open a run, work for a long time, then write its output.
STAND_IN = """\
import json, os, sys, time
from pathlib import Path
import mlflow
from pipelines import lifecycle, tracking
from pipelines.config import Paths
if "--explicit" in sys.argv:
    lifecycle.install()
experiment = tracking.configure(Paths(Path.cwd()), "standin")
with mlflow.start_run(experiment_id=experiment, run_name="stand-in") as run:
    Path("started.json").write_text(json.dumps({"pid": os.getpid(), "run_id": run.info.run_id}))
    for _ in range(1200):
        time.sleep(0.1)
    Path("out").mkdir(exist_ok=True)
    Path("out/model.txt").write_text("trained")
"""
START_S, GONE_S = 120.0, 20.0


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def run_status(root: Path, run_id: str) -> str:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").get_run(run_id).info.status


def started(root: Path):
    path = root / "started.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def env_for(root: Path, shell: str) -> dict[str, str]:
    env = venv_env(root)
    env.update(SHELL=shell, PYTHONPATH=str(PROJECT))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DVC_STAGE"):
        env.pop(name, None)     # the stand-in's own store in its folder; dvc sets DVC_STAGE itself
    return env


@pytest.fixture
def standin_project(tmp_path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "stand_in.py").write_text(STAND_IN)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": "python stand_in.py", "deps": ["stand_in.py"], "outs": ["out"]}}}))
    env = env_for(root, "/bin/sh")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_kill_9_of_dvc_repro_takes_the_stage_down_and_marks_its_run_killed(standin_project, shell):
    if not Path(shell).exists():
        pytest.skip(f"{shell} not installed")
    root = standin_project
    dvc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env_for(root, shell),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        info = wait_for(lambda: started(root), START_S, "the stage's MLflow run to start")
        child = info["pid"]
        tree = [child, lifecycle.parent_pid(child)]
        # What the fix has to cope with: dash forks (dvc -> sh -> python), bash execs (dvc -> python).
        if os.path.basename(os.path.realpath(shell)) == "dash":
            assert os.path.basename(lifecycle.cmdline(tree[1])[0]) in lifecycle.SHELLS
            tree.append(lifecycle.parent_pid(tree[1]))
        assert tree[-1] == dvc.pid and lifecycle.is_dvc(lifecycle.cmdline(dvc.pid))
        assert run_status(root, info["run_id"]) == "RUNNING"

        os.kill(dvc.pid, signal.SIGKILL)
        dvc.wait(timeout=10)
        wait_for(lambda: not alive(child), GONE_S, f"the stage (pid {child}) to die with dvc")
        assert wait_for(lambda: run_status(root, info["run_id"]) != "RUNNING" and
                        run_status(root, info["run_id"]), 10, "the run to end") == "KILLED"
        assert not (root / "out").exists()          # nothing written behind dvc.lock's back
    finally:
        try:
            os.killpg(dvc.pid, signal.SIGKILL)     # whatever is left of this test's session
        except ProcessLookupError:
            pass


def test_sigterm_in_a_stage_ends_its_run_killed_with_exit_143(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    (root / "stand_in.py").write_text(STAND_IN)
    proc = subprocess.Popen([sys.executable, "stand_in.py", "--explicit"], cwd=root, env=env_for(root, "/bin/sh"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        info = wait_for(lambda: started(root), START_S, "the MLflow run to start")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=GONE_S)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert run_status(root, info["run_id"]) == "KILLED"
    assert not (root / "out").exists()


@pytest.mark.parametrize("argv, expected", [
    (["/venv/bin/python3.11", "/venv/bin/dvc", "repro"], True),
    (["python", "-m", "dvc", "repro", "--single-item", "train@cnn"], True),
    (["dvc", "exp", "run"], True),
    (["/bin/sh", "-c", "python -m pipelines.train --arch dvc"], False),
    (["python", "-m", "pipelines.train", "--arch", "dvc"], False),
])
def test_dvc_launcher_is_recognised_by_its_command_line(argv, expected):
    assert lifecycle.is_dvc(argv) is expected


def test_not_installed_in_a_library_user_such_as_this_test_runner(monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert lifecycle.install_for_stage() is False
    assert signal.getsignal(signal.SIGTERM) is not lifecycle._handler
