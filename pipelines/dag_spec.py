"""The DVC stage graph as an orchestrator needs it: resolved stage names and their upstream stages.

Read through DVC itself (`dvc.repo.Repo(root).index`), so `foreach` items (`train@cnn_small`),
`${...}` interpolation from params.yaml and path-based dependencies are resolved exactly as
`dvc repro` resolves them. The Airflow DAG is built from this and nothing else, so it cannot
drift from dvc.yaml: add a stage or an architecture and the DAG gains the task and its edges.

`build_spec` (pure) validates and orders a graph; `read_spec` asks DVC for the graph of a checkout.
CLI: `python -m pipelines.dag_spec [ROOT]` prints the spec as JSON.
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pipelines.config import LOCK_FILE

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Stage:
    """One resolved pipeline stage (one `dvc repro --single-item <name>`)."""

    name: str                                   # DVC address: "ingest", "train@cnn_small"
    upstream: tuple[str, ...] = ()              # pipeline stages whose outputs it reads
    cached_outs: tuple[str, ...] = ()           # repo-relative outputs in the DVC cache
    tracked_deps: tuple[str, ...] = ()          # .dvc files of DVC-tracked data it reads


@dataclass(frozen=True)
class PipelineSpec:
    """Stages in a topological order (ties keep dvc.yaml's order)."""

    stages: tuple[Stage, ...]
    tracked: tuple[str, ...] = field(default=())   # every .dvc file the pipeline reads

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in the pipeline (stages: {', '.join(self.names)})")

    @property
    def edges(self) -> set[tuple[str, str]]:
        """(upstream, downstream) pairs: exactly DVC's direct dependency edges."""
        return {(up, s.name) for s in self.stages for up in s.upstream}

    @property
    def roots(self) -> list[str]:
        return [s.name for s in self.stages if not s.upstream]

    @property
    def sinks(self) -> list[str]:
        feeding = {up for s in self.stages for up in s.upstream}
        return [s.name for s in self.stages if s.name not in feeding]

    def git_paths(self) -> list[str]:
        """What a finished run changes in git: dvc.lock, the .dvc files, DVC-written .gitignores."""
        ignores = {str(PurePosixPath(p).parent / ".gitignore")
                   for s in self.stages for p in s.cached_outs}
        ignores |= {str(PurePosixPath(p).parent / ".gitignore") for p in self.tracked}
        return [LOCK_FILE, *self.tracked, *sorted(ignores)]


def build_spec(stages: Iterable[Stage], tracked: Iterable[str] = ()) -> PipelineSpec:
    """Validate a stage graph (known upstreams, no cycles) and order it topologically."""
    given = list(stages)
    order = {s.name: i for i, s in enumerate(given)}
    if len(order) != len(given):
        raise ValueError("duplicate stage names in the pipeline")
    for s in given:
        unknown = [u for u in s.upstream if u not in order]
        if unknown:
            raise ValueError(f"stage {s.name!r} depends on unknown stage(s) {unknown}")
    remaining = {s.name: set(s.upstream) for s in given}
    ordered: list[Stage] = []
    while remaining:
        ready = sorted((n for n, ups in remaining.items() if not ups), key=order.__getitem__)
        if not ready:
            raise ValueError(f"the stage graph has a cycle among {sorted(remaining)}")
        for name in ready:
            del remaining[name]
            ordered.append(given[order[name]])
        for ups in remaining.values():
            ups.difference_update(ready)
    return PipelineSpec(tuple(ordered), tuple(sorted(set(tracked))))


def read_spec(root: Path | str) -> PipelineSpec:
    """The resolved pipeline of the DVC project at `root`, as `dvc repro` would run it."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    root = Path(root).resolve()
    with Repo(str(root)) as repo:
        index = repo.index
        graph = index.graph   # edges point from a stage to the stages it depends on
        stages, tracked = [], set()
        for stage in index.stages:
            if not isinstance(stage, PipelineStage):
                continue   # .dvc files: tracked data, not something to run
            upstream, deps = [], []
            for dep_stage in graph.successors(stage):
                if isinstance(dep_stage, PipelineStage):
                    upstream.append(_address(root, dep_stage))
                else:
                    deps.append(_rel(root, dep_stage.path))
            tracked.update(deps)
            outs = tuple(_rel(root, out.fs_path) for out in stage.outs if out.use_cache)
            stages.append(Stage(_address(root, stage), tuple(sorted(upstream)), outs, tuple(sorted(deps))))
    return build_spec(stages, tracked)


def _address(root: Path, stage: Any) -> str:
    """The stage's `dvc repro` target from `root` (DVC's own `addressing` is relative to the cwd)."""
    dvcfile = _rel(root, stage.path)
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def _rel(root: Path, path: str) -> str:
    return Path(path).resolve().relative_to(root).as_posix()


def split_name(name: str) -> tuple[str | None, str]:
    """("train", "cnn_small") for a foreach item `train@cnn_small`; (None, "ingest") otherwise.

    Airflow ids allow only letters, digits, `_`, `-` and `.`, so anything else becomes `_`.
    """
    group, sep, item = name.partition("@")
    if not sep:
        return None, _UNSAFE.sub("_", name)
    return _UNSAFE.sub("_", group), _UNSAFE.sub("_", item)


def task_id(name: str) -> str:
    """The Airflow task id of a stage: `train.cnn_small` (task `cnn_small` in group `train`)."""
    group, item = split_name(name)
    return item if group is None else f"{group}.{item}"


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    spec = read_spec(args[0] if args else ".")
    print(json.dumps({"stages": [asdict(s) for s in spec.stages], "tracked": list(spec.tracked),
                      "git_paths": spec.git_paths()}, indent=2))


if __name__ == "__main__":
    main()
