"""The one-line cause a failed command is reported with (the Airflow failure line, the task's
exception): the exception the stage died of, not `dvc repro`'s closing "failed to reproduce"."""
import pytest

from pipelines import orchestrate

MLFLOW_DOWN = """Traceback (most recent call last):
  File "pipelines/promote.py", line 135, in promote
mlflow.exceptions.MlflowException: API request to http://127.0.0.1:5500/api/2.0/mlflow/experiments/get-by-name failed with exception HTTPConnectionPool(host='127.0.0.1', port=5500): Max retries exceeded with url: /x (Caused by ResponseError('too many 503 error responses'))
ERROR: failed to reproduce 'promote': failed to run: python -m pipelines.promote, exited with 1
"""


def test_the_cause_is_the_exception_not_dvcs_closing_line():
    with pytest.raises(orchestrate.TransientFailure) as err:
        orchestrate._check(255, MLFLOW_DOWN, "dvc repro promote")
    first = str(err.value).splitlines()[0]
    assert first.startswith("dvc repro promote failed (exit 255, looks transient): mlflow.exceptions.MlflowException")
    assert "too many 503 error responses" in first


def test_without_an_exception_line_the_last_line_is_the_cause():
    output = "bad data: 3 rows fail validation\nERROR: failed to reproduce 'boom'\n"
    with pytest.raises(orchestrate.StageFailed) as err:
        orchestrate._check(1, output, "dvc repro boom")
    assert str(err.value).splitlines()[0] == "dvc repro boom failed (exit 1): ERROR: failed to reproduce 'boom'"
