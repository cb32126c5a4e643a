"""Stage modules are leaves: no module of the package imports a stage module or a command-line module.

The stage modules are read from dvc.yaml (every `python -m pipelines.X` a stage runs), so a new stage
is covered the day it is added; the command-line modules that are not DVC stages are declared once
below. Shared code belongs in a library module beside them (pipelines.cases, pipelines.checks, ...).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.stage_deps import StageCode, entry_modules, read_stages, upward_imports
from tests.conftest import PROJECT

# Entry points that are not dvc.yaml stages: intake (the drop-folder/S3 command), orchestrate (what
# the Airflow DAG runs) and summary (what `make demo` prints). registry and serve are libraries with
# a small CLI on top (promote and the web app import them), so they are not listed.
COMMAND_LINE: frozenset[str] = frozenset({"pipelines.intake", "pipelines.orchestrate", "pipelines.summary"})


@pytest.fixture(scope="module")
def entries() -> set[str]:
    return entry_modules(read_stages(PROJECT)) | COMMAND_LINE


def test_the_stage_set_comes_from_dvc_yaml(entries):
    assert {"pipelines.ingest", "pipelines.validate", "pipelines.split", "pipelines.train",
            "pipelines.evaluate", "pipelines.assemble", "pipelines.compare", "pipelines.promote"} <= entries
    for name in entries:   # a renamed module cannot leave a stale name here
        assert (PROJECT / f"{name.replace('.', '/')}.py").is_file(), name


def test_no_module_imports_a_stage_or_command_line_module(entries):
    wrong = upward_imports(PROJECT, entries)
    assert not wrong, "stage/command-line modules are leaves; move the shared code into a library:\n" + \
        "\n".join(f"  {mod} imports {', '.join(bad)}" for mod, bad in wrong.items())


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_an_import_of_a_stage_is_named(tmp_path):
    package = {"app/__init__.py": "", "app/lib.py": "", "app/first.py": "from app import lib\n",
               "app/second.py": "def run():\n    from app.first import thing\n",
               "app/sub/__init__.py": "", "app/sub/helper.py": "from .. import second\n"}
    for rel, text in package.items():
        _write(tmp_path, rel, text)
    stages = {"a": StageCode("python -m app.first", ()), "b": StageCode("python -m app.second --x", ())}
    assert entry_modules(stages) == {"app.first", "app.second"}
    assert upward_imports(tmp_path, entry_modules(stages), "app") == {
        "app.second": ["app.first"], "app.sub.helper": ["app.second"]}
