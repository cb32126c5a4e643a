"""Keep TensorFlow's start-up notices out of every stage's output, without changing what TF does.

`import tensorflow` (2.21) writes, from C++ and twice (two shared libraries), "WARNING: All log
messages before absl::InitializeLog() is called are written to STDERR" and "oneDNN custom
operations are on ...". TF_CPP_MIN_LOG_LEVEL does not reach them; the only switch that does,
TF_ENABLE_ONEDNN_OPTS=0, turns oneDNN off and made a small CNN's training about twice as slow
here. So the import runs with file descriptor 2 redirected to a temporary file, and everything it
wrote except those known lines is written back to stderr when the import finishes: a real error
or warning from the import still shows, only the notices are gone.

`install()` adds a meta-path finder that does this for the first `import tensorflow` of the
process, whoever imports it (keras included); modules that never import TF pay nothing.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

NOTICES: tuple[str, ...] = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
)


@contextmanager
def native_stderr_without(notices: Sequence[str] = NOTICES) -> Iterator[None]:
    """Capture fd 2 (C/C++ writes included) and write it back minus lines containing `notices`."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded, closed): leave it be
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True)
                    if not any(n.encode() in line for n in notices)]
            if kept:
                os.write(2, b"".join(kept))


class _QuietLoader(importlib.abc.Loader):
    """The real loader of `tensorflow`, executed with the notices filtered out."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with native_stderr_without():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # resource readers, get_filename, ...
        return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` with the other finders and wraps its loader; gone after first use."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        uninstall()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


_FINDER = _QuietTensorFlowFinder()


def install() -> None:
    """Filter TF's start-up notices in this process (no-op once TF is imported or installed)."""
    if "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
