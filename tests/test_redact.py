"""No credential reaches an exception, a log line or a returned (XCom) dict (issue 10, secrets row)."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import orchestrate
from pipelines.redact import MASK, RedactingFilter, install, redact, redact_value

SECRET = "SuperSecretToken123"
PUSH_URL = f"https://alice:{SECRET}@127.0.0.1:9/x.git"   # port 9 (discard): refused at once


@pytest.mark.parametrize("text, kept", [
    (f"git push {PUSH_URL}", "https://***@127.0.0.1:9/x.git"),
    ("postgresql+psycopg2://medscan:pg-pass-42@db:5432/mlflow", "postgresql+psycopg2://***@db:5432/mlflow"),
    ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/key", "s3://***@bucket/key"),
    ("psql host=db user=u password=hunter22 dbname=x", "password=***"),
    ("curl -H 'Authorization: Bearer abcdef123456' http://h", "Authorization: Bearer ***"),
])
def test_credentials_in_text_are_masked_and_the_rest_kept(text, kept):
    out = redact(text, env={})
    assert kept in out
    for secret in ("SuperSecretToken123", "pg-pass-42", "wJalrXUtnFEMI", "hunter22", "abcdef123456", "alice"):
        assert secret not in out


def test_secret_environment_values_are_masked_wherever_they_appear():
    env = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG", "MLFLOW_TRACKING_TOKEN": "tok-987654",
           "MEDSCAN_GIT_PUSH": PUSH_URL, "PWD": "/home/medscan", "DVC_NO_ANALYTICS": "1"}
    text = ("boto3: signature for wJalrXUtnFEMI/K7MDENG mismatched; token tok-987654; "
            f"git: could not read from alice:{SECRET}; cwd /home/medscan; 1 file")
    out = redact(text, env=env)
    assert "wJalrXUtnFEMI" not in out and "tok-987654" not in out and SECRET not in out
    assert "/home/medscan" in out and "1 file" in out     # not secrets: kept


def test_redact_value_walks_nested_results_and_keeps_other_leaves():
    value = {"sources": [{"source": PUSH_URL, "accepted": 3}], "ok": True, "pair": ("x", SECRET)}
    out = redact_value(value, env={"GIT_TOKEN": SECRET})
    assert out == {"sources": [{"source": "https://***@127.0.0.1:9/x.git", "accepted": 3}], "ok": True,
                   "pair": ("x", MASK)}


def test_filter_redacts_message_args_and_traceback():
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "push %s failed", (PUSH_URL,), None)
    try:
        raise RuntimeError(f"remote {PUSH_URL}")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert SECRET not in text and "push https://***@127.0.0.1:9/x.git failed" in text
    assert "remote https://***@" in text


def test_install_redacts_records_of_every_logger(caplog):
    install()
    install()   # idempotent
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library.deep").info("connecting to %s", PUSH_URL)
    assert SECRET not in caplog.text and "https://***@127.0.0.1:9/x.git" in caplog.text


def _git_repo(root: Path) -> Path:
    root.mkdir()
    ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", *ident, "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    return root


def test_failing_git_push_never_shows_the_token(tmp_path, monkeypatch, caplog):
    root = _git_repo(tmp_path / "proj")
    monkeypatch.setenv("MEDSCAN_GIT_PUSH", PUSH_URL)
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "t@t")
    with caplog.at_level(logging.DEBUG), pytest.raises((orchestrate.StageFailed,
                                                       orchestrate.TransientFailure)) as err:
        orchestrate.publish(root, ["dvc.lock"], "medscan: test", push=False)
    message = str(err.value)
    assert "git push https://***@127.0.0.1:9/x.git failed" in message
    assert SECRET not in message and "alice" not in message
    assert SECRET not in caplog.text
    # the commit happened before the push: the secret is not in git's own record either
    log = subprocess.run(["git", "log", "-1", "--format=%B"], cwd=root, capture_output=True, text=True).stdout
    assert SECRET not in log


def test_command_output_and_returned_values_are_redacted(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-K7MDENG")
    script = "import os; print('key', os.environ['AWS_SECRET_ACCESS_KEY']); print('remote " + PUSH_URL + "')"
    with caplog.at_level(logging.INFO):
        code, output = orchestrate.run_command([sys.executable, "-c", script, PUSH_URL], tmp_path)
    assert code == 0
    for text in (output, caplog.text):
        assert "wJalrXUtnFEMI" not in text and SECRET not in text
    assert "key ***" in output and "remote https://***@127.0.0.1:9/x.git" in output
    with pytest.raises(orchestrate.StageFailed) as err:
        orchestrate._check(1, output + f"fatal: {PUSH_URL}\n", f"dvc push {PUSH_URL}")
    assert SECRET not in str(err.value)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_dag_failure_line_is_redacted():
    pytest.importorskip("airflow")
    from dags import medscan_retrain

    class TI:
        dag_id, run_id, task_id, try_number, max_tries = "d", "r", "publish", 1, 2
        log_url = "http://airflow/log"

    collect = _Collect()
    medscan_retrain.log.addHandler(collect)   # Airflow's own logging setup bypasses caplog here
    try:
        medscan_retrain.notify_failure({"ti": TI(), "exception": orchestrate.StageFailed(
            f"git push {PUSH_URL} failed")})
        medscan_retrain.notify_failure({"ti": TI(), "exception": RuntimeError(f"remote {PUSH_URL}")})
    finally:
        medscan_retrain.log.removeHandler(collect)
    text = "\n".join(collect.lines)
    assert text.count("MEDSCAN RETRAIN TASK FAILED") == 2
    assert SECRET not in text and "https://***@127.0.0.1:9/x.git" in text


def test_mlflow_run_tags_carry_no_credentials_of_the_git_remote(tmp_path):
    """MLflow records the checkout's git remote as a tag: with a token in it, the tag has none."""
    from mlflow import MlflowClient

    from tests.conftest import PROJECT, venv_env

    root = _git_repo(tmp_path / "proj")
    subprocess.run(["git", "remote", "add", "origin", PUSH_URL], cwd=root, check=True)
    (root / "stage.py").write_text(
        "from pathlib import Path\nimport mlflow\nfrom pipelines import tracking\nfrom pipelines.config import Paths\n"
        "experiment = tracking.configure(Paths(Path.cwd()), 'tags')\n"
        "with mlflow.start_run(experiment_id=experiment) as run:\n"
        "    Path('run_id').write_text(run.info.run_id)\n")
    env = {**venv_env(root), "PYTHONPATH": str(PROJECT)}
    subprocess.run([sys.executable, "stage.py"], cwd=root, env=env, check=True, capture_output=True, timeout=180)
    run = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").get_run((root / "run_id").read_text())
    assert run.data.tags.get("mlflow.source.git.repoURL") == "https://127.0.0.1:9/x.git"   # recorded, stripped
    assert all(SECRET not in f"{k}={v}" for k, v in run.data.tags.items())
