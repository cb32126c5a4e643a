"""dvc.yaml deps are complete by construction: every project module a stage's command imports
(transitively, statically) is covered by one of that stage's `deps:`."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipelines.stage_deps import (StageCode, command_modules, covered, missing_deps, read_stages, report,
                                  stage_modules, suggested_deps)
from tests.conftest import PROJECT


@pytest.fixture(scope="module")
def stages() -> dict[str, StageCode]:
    return read_stages(PROJECT)


def test_every_stage_lists_the_modules_it_imports(stages):
    assert {"ingest", "validate", "split", "compare", "promote"} <= set(stages)
    assert any(name.startswith("train@") for name in stages), "foreach stages are expanded"
    for name, stage in stages.items():   # the check is not vacuous: every command runs project code
        assert f"{command_modules(stage.cmd)[0].replace('.', '/')}.py" in stage_modules(PROJECT, stage.cmd), name
    missing = missing_deps(PROJECT, stages)
    assert not missing, "dvc.yaml deps miss modules the stage imports:\n" + report(PROJECT, missing)


def test_a_removed_dep_is_reported(stages):
    promote = stages["promote"]
    assert "pipelines/inference.py" in stage_modules(PROJECT, promote.cmd)
    cut = {"promote": dataclasses.replace(promote, deps=tuple(d for d in promote.deps
                                                              if d != "pipelines/inference.py"))}
    assert missing_deps(PROJECT, cut) == {"promote": ["pipelines/inference.py"]}
    assert "  - pipelines/inference.py" in report(PROJECT, missing_deps(PROJECT, cut))


def test_a_removed_package_dir_is_reported_as_the_directory(stages):
    train = next(s for name, s in stages.items() if name.startswith("train@"))
    cut = {"train@x": dataclasses.replace(train, deps=tuple(d for d in train.deps if d != "pipelines/zoo"))}
    files = missing_deps(PROJECT, cut)["train@x"]
    assert "pipelines/zoo/__init__.py" in files and "pipelines/zoo/heads.py" in files
    assert suggested_deps(PROJECT, files) == ["pipelines/zoo"]
    assert report(PROJECT, {"train@x": files}).startswith("stage train (the foreach `do:` block): add to deps:")


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_import_forms_are_followed(tmp_path):
    """Function-level, `from pkg import sub`, relative, importlib and parent-package imports count;
    TYPE_CHECKING blocks and third-party modules do not."""
    write(tmp_path, "app/__init__.py", "")
    write(tmp_path, "app/stage.py", "import os\nfrom app import lib\n\ndef run():\n    import app.late\n")
    write(tmp_path, "app/lib.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import app.typing_only\n"
                                  "from .sub.mod import thing\n")
    write(tmp_path, "app/late.py", "import importlib\nimportlib.import_module('app.dynamic')\n")
    write(tmp_path, "app/dynamic.py", "")
    write(tmp_path, "app/typing_only.py", "")
    write(tmp_path, "app/sub/__init__.py", "")
    write(tmp_path, "app/sub/mod.py", "from .. import leaf\nthing = 1\n")
    write(tmp_path, "app/leaf.py", "")
    write(tmp_path, "app/unused.py", "")
    cmd = ".venv/bin/python -m app.stage --flag x"
    assert command_modules(cmd) == ["app.stage"]
    assert stage_modules(tmp_path, cmd) == {
        "app/__init__.py", "app/stage.py", "app/lib.py", "app/late.py", "app/dynamic.py",
        "app/sub/__init__.py", "app/sub/mod.py", "app/leaf.py"}
    stage = StageCode(cmd, ("app/stage.py", "app/lib.py", "app/sub/", "./app/__init__.py"))
    assert missing_deps(tmp_path, {"s": stage}) == {"s": ["app/dynamic.py", "app/late.py", "app/leaf.py"]}


def test_directory_deps_cover_only_what_is_inside():
    assert covered("pipelines/zoo/heads.py", ["pipelines/zoo"])
    assert not covered("pipelines/zoology.py", ["pipelines/zoo"])
    assert not covered("pipelines/zoo/heads.py", ["pipelines/zoo/lenet.py"])
