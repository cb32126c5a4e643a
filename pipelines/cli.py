"""What every command-line `main()` shares: logging set up once, project errors as one line + exit 1.

A stage's `run(paths, params...)` returns its result and raises `MedscanError`; its `main()` is
`run_stage(name, run)` (logging set up, params.yaml of the project root loaded, the error caught)
plus the stage's one summary line, so every stage fails the same way: `<name>: <message>` on
stderr and exit status 1 (the SystemExit message), never a traceback for a user error.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from pipelines.config import Paths, load_params, project_root
from pipelines.errors import MedscanError

T = TypeVar("T")

FORMAT = "%(message)s"
_HANDLER_NAME = "medscan-cli"
# The package's loggers, and `__main__`: a module run as `python -m pipelines.X` logs under that name.
LOGGERS: tuple[str, ...] = ("pipelines", "__main__")


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at emit time (a test's capture included)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Log the project's INFO lines to stdout as bare messages, once per process: the lines the
    README and tests quote read as they did when they were printed, and DVC shows them under the
    stage's name. The handler hangs on the project's loggers (LOGGERS), not the root, so other
    libraries' loggers and a test's log capture are left alone.
    """
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
            handler = _ConsoleHandler()
            handler.set_name(_HANDLER_NAME)
            handler.setFormatter(logging.Formatter(FORMAT))
            logger.addHandler(handler)


@contextmanager
def exits_on_error(name: str) -> Iterator[None]:
    """Turn a MedscanError raised inside into SystemExit("<name>: <message>"): exit status 1 with
    that one line (Python prints a SystemExit message to stderr); anything else stays a traceback."""
    try:
        yield
    except MedscanError as err:
        raise SystemExit(f"{name}: {err}") from err


def run_stage(name: str, run: Callable[[Paths, Mapping[str, Any]], T]) -> T:
    """What every stage's main() does first: log, call `run` on the project root (MEDSCAN_ROOT or
    the working directory, as DVC runs it) with its params.yaml, a MedscanError as exit 1."""
    setup_logging()
    root = project_root()
    with exits_on_error(name):
        return run(Paths(root), load_params(root))


def run_arch_stage(name: str, description: str, run: Callable[[str, Paths, Mapping[str, Any]], T],
                   argv: list[str] | None = None) -> tuple[str, T] | None:
    """run_stage for a per-architecture stage (train, evaluate: `--arch NAME`, a dvc.yaml foreach
    item). A candidate that did not run (its result holds `skipped`) is logged here and gives None."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--arch", required=True)
    arch = parser.parse_args(argv).arch
    result = run_stage(f"{name} {arch}", lambda paths, params: run(arch, paths, params))
    if isinstance(result, Mapping) and "skipped" in result:
        logging.getLogger(f"pipelines.{name}").info("%s %s: skipped (%s)", name, arch, result["skipped"])
        return None
    return arch, result
