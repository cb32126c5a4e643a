"""Which project modules each DVC stage's command imports, and which of them its `deps:` miss.

A stage whose code is not among its deps never reruns when that code changes (promote re-scoring
the champion with a changed `inference.py` would silently keep yesterday's decision). So the deps
are checked by construction: `python -m pipelines.X` is followed through every `import` and
`from ... import` it can reach (inside functions too, relative forms included, `if TYPE_CHECKING:`
blocks excluded since they never run), static analysis with `ast`, nothing executed. A module file is
covered by a dep that names it or a directory above it.

`stage_modules` and `missing_deps` are pure (a root and in-memory stages); `read_stages` asks DVC
for the resolved stages of a checkout (`foreach` expanded, `${...}` interpolated as `dvc repro` does).
`upward_imports` finds the other direction's mistake: a module importing a stage module (or a
command-line module), which tests/test_architecture.py forbids.
CLI: `python -m pipelines.stage_deps [ROOT]` prints what each stage should add.
"""
from __future__ import annotations

import ast
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class StageCode:
    """What the check needs of one resolved stage: its command and its deps (root-relative, posix)."""

    cmd: str
    deps: tuple[str, ...]


def module_file(root: Path, name: str) -> Path | None:
    """The file that `import name` runs from the project root, or None when it is not a project module."""
    base = root.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _with_parents(name: str) -> list[str]:
    """`import a.b.c` runs a/__init__, a/b/__init__ and a/b/c: every prefix."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Candidate module names a file imports: absolute names, parents included; filtered later."""

    def __init__(self, package: str) -> None:
        self.package = package   # the package relative imports are resolved against
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.names.update(_with_parents(alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".") if self.package else []
            parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
            base = ".".join([*parts, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        if not base:
            return
        self.names.update(_with_parents(base))
        # `from pkg import sub` imports the submodule when there is one (an attribute otherwise).
        self.names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
            self.names.update(_with_parents(node.args[0].value))
        self.generic_visit(node)


def imported_modules(root: Path, path: Path) -> set[str]:
    """Project modules one file imports directly (names that resolve to a file under `root`)."""
    name = _module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    visitor = _Imports(package)
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return {n for n in visitor.names if module_file(root, n) is not None}


def command_modules(cmd: str) -> list[str]:
    """The modules a stage command runs with `python -m MODULE` (any python executable name)."""
    words = shlex.split(cmd)
    return [words[i + 1] for i, w in enumerate(words[:-1])
            if w == "-m" and i > 0 and PurePosixPath(words[i - 1]).name.startswith("python")]


def stage_modules(root: Path, cmd: str) -> set[str]:
    """Root-relative files of every project module the command imports, transitively."""
    todo = [n for m in command_modules(cmd) for n in _with_parents(m) if module_file(root, n)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported_modules(root, module_file(root, name)) - seen)  # type: ignore[arg-type]
    return {module_file(root, n).relative_to(root).as_posix() for n in seen}  # type: ignore[union-attr]


def covered(path: str, deps: Iterable[str]) -> bool:
    """A dep covers a file it names or a directory above it."""
    clean = [d.strip("/").removeprefix("./") for d in deps]
    return any(path == d or path.startswith(d + "/") for d in clean)


def missing_deps(root: Path, stages: Mapping[str, StageCode]) -> dict[str, list[str]]:
    """Per stage, the sorted module files its command imports that no dep covers (stages with none
    are left out)."""
    found = {name: sorted(p for p in stage_modules(root, s.cmd) if not covered(p, s.deps))
             for name, s in stages.items()}
    return {name: files for name, files in found.items() if files}


def suggested_deps(root: Path, files: Sequence[str]) -> list[str]:
    """What to write into `deps:`: a file of the top-level package as itself, a file inside a
    sub-package as that sub-package's directory (the house style: `pipelines/zoo`)."""
    out: list[str] = []
    for rel in files:
        parts = PurePosixPath(rel).parts
        sub = PurePosixPath(*parts[:2]) if len(parts) > 2 else None
        entry = str(sub) if sub is not None and (root / sub / "__init__.py").is_file() else rel
        if entry not in out:
            out.append(entry)
    return out


def report(root: Path, missing: Mapping[str, Sequence[str]]) -> str:
    """One block per dvc.yaml stage (foreach items merged: they share one `do:` block)."""
    merged: dict[str, list[str]] = {}
    for name, files in missing.items():
        group, sep, _ = name.partition("@")
        key = f"{group} (the foreach `do:` block)" if sep else name
        merged.setdefault(key, [])
        merged[key] += [f for f in files if f not in merged[key]]
    lines = []
    for key, files in merged.items():
        lines.append(f"stage {key}: add to deps:")
        lines += [f"  - {entry}" for entry in suggested_deps(root, sorted(files))]
        lines.append(f"    (imported, not covered: {', '.join(sorted(files))})")
    return "\n".join(lines)


def entry_modules(stages: Mapping[str, StageCode]) -> set[str]:
    """Every module a stage command runs (`python -m X`): the stage modules, straight from dvc.yaml."""
    return {m for s in stages.values() for m in command_modules(s.cmd)}


def upward_imports(root: Path, entries: Iterable[str], package: str = "pipelines") -> dict[str, list[str]]:
    """Per module of `package`, the entry modules (stages, command-line tools) it imports directly.

    Entry modules are leaves: shared code lives in libraries beside them, so an entry module that
    another module imports is a dependency pointing the wrong way (a stage that imports a stage
    reruns with, and breaks with, code that is not its own). Empty when the direction is right.
    """
    wanted = set(entries)
    found: dict[str, list[str]] = {}
    for path in sorted((root / package).rglob("*.py")):
        name = _module_name(root, path)
        bad = sorted((imported_modules(root, path) & wanted) - {name})
        if bad:
            found[name] = bad
    return found


def read_stages(root: Path | str) -> dict[str, StageCode]:
    """Every pipeline stage of the DVC project at `root`, resolved by DVC itself."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    root = Path(root).resolve()
    stages: dict[str, StageCode] = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            if not isinstance(stage, PipelineStage):
                continue
            cmd = stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd)
            deps = tuple(_rel(root, d.fs_path) for d in stage.deps)
            stages[stage.name] = StageCode(cmd, deps)
    return stages


def _rel(root: Path, path: str) -> str:
    resolved = Path(path).resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else ".").resolve()
    missing = missing_deps(root, read_stages(root))
    print(report(root, missing) if missing else "every stage's deps cover the modules it imports")
    raise SystemExit(1 if missing else 0)


if __name__ == "__main__":
    main()
