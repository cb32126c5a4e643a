"""The one stage shape: a project error becomes `<stage>: <message>` and exit status 1, nothing else
is swallowed, and the summary line is logged to stdout once however often logging is set up."""
from __future__ import annotations

import logging

import pytest

from pipelines import cli
from pipelines.errors import ConfigError, DataError, MedscanError


def test_a_project_error_is_one_line_and_status_1(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("split: {salt: v1}\n")
    monkeypatch.setenv("MEDSCAN_ROOT", str(tmp_path))

    def run(paths, params):
        assert paths.root == tmp_path and params == {"split": {"salt": "v1"}}
        raise DataError("class 'x' has no training image")

    with pytest.raises(SystemExit) as exc:
        cli.run_stage("split", run)
    assert exc.value.code == "split: class 'x' has no training image"   # Python exits 1 with it
    assert isinstance(exc.value.__cause__, MedscanError)


def test_other_errors_are_not_swallowed():
    with pytest.raises(KeyError):
        with cli.exits_on_error("train"):
            raise KeyError("a bug keeps its traceback")


def test_config_and_data_errors_are_still_value_errors():
    """Callers that caught ValueError before the project had its own class keep working."""
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)


def test_arch_stage_logs_a_skipped_candidate_and_returns_none(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.setenv("MEDSCAN_ROOT", str(tmp_path))
    seen = []

    def run(arch, paths, params):
        seen.append(arch)
        return {"skipped": "no champion yet", "arch": arch}

    assert cli.run_arch_stage("train", "d", run, ["--arch", "warm_start"]) is None
    assert seen == ["warm_start"]
    assert capsys.readouterr().out.splitlines()[-1] == "train warm_start: skipped (no champion yet)"
    assert cli.run_arch_stage("train", "d", lambda a, p, q: {"ok": a}, ["--arch", "x"]) == ("x", {"ok": "x"})


def test_logging_is_set_up_once(capsys):
    cli.setup_logging()
    cli.setup_logging()
    logging.getLogger("pipelines.anything").info("one line")
    assert capsys.readouterr().out == "one line\n"
