"""Nothing phones home: every tool's usage telemetry is off, however Medscan is entered.

Each check runs in a subprocess whose environment has the opt-out variables removed, so it proves
the project itself turns telemetry off (not the test runner's environment).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines import TELEMETRY_OFF
from tests.conftest import PROJECT

PYTHON = sys.executable
DVC = str(Path(sys.executable).parent / "dvc")


def clean_env(home: Path) -> dict[str, str]:
    """The caller's environment without any telemetry switch, with a throw-away HOME."""
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY_OFF and k != "DVC_TEST"}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    return env


def test_importing_pipelines_turns_mlflow_dvc_and_gx_telemetry_off(tmp_path):
    code = ("import pipelines, os\n"
            "from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY\n"
            "assert MLFLOW_DISABLE_TELEMETRY.get() is True\n"
            "print({k: os.environ[k] for k in pipelines.TELEMETRY_OFF})")
    done = subprocess.run([PYTHON, "-c", code], cwd=PROJECT, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "'DVC_NO_ANALYTICS': '1'" in done.stdout and "'DO_NOT_TRACK': 'true'" in done.stdout


def test_a_user_setting_is_kept(tmp_path):
    env = clean_env(tmp_path) | {"DO_NOT_TRACK": "yes-please"}
    done = subprocess.run([PYTHON, "-c", "import pipelines, os; print(os.environ['DO_NOT_TRACK'])"],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "yes-please"


def test_dvc_analytics_is_off_in_the_project_config(tmp_path):
    """`dvc` run by hand (no Makefile, no pipelines import) reads .dvc/config: analytics off."""
    env = clean_env(tmp_path)
    shown = subprocess.run([DVC, "config", "core.analytics"], cwd=PROJECT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.stdout.strip() == "false", shown.stderr
    code = "from dvc.analytics import is_enabled; print(is_enabled())"
    done = subprocess.run([PYTHON, "-c", code], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
    # DVC writes a user id under ~/.config/iterative when analytics runs; none may appear.
    subprocess.run([DVC, "status", "-q"], cwd=PROJECT, env=env, capture_output=True, timeout=120)
    assert not (tmp_path / ".config" / "iterative").exists()


def test_make_exports_every_switch(tmp_path):
    """`make demo|test|mlflow-ui|airflow` and everything they start see the switches."""
    probe = "telemetry-probe: ; @env"
    done = subprocess.run(["make", "-s", "-f", "Makefile", f"--eval={probe}", "telemetry-probe"],
                          cwd=PROJECT, env=clean_env(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    seen = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert {k: seen.get(k) for k in TELEMETRY_OFF} == TELEMETRY_OFF
