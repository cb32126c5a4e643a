"""What every command-line `main()` shares: logging set up once, project errors as one line + exit 1.

A stage's `run(paths, params...)` returns its result and raises `MedscanError`; its `main()` loads
params, calls `setup_logging()` and wraps the call in `exits_on_error(name)`, so every stage fails
the same way: `<name>: <message>` on stderr and exit status 1 (the SystemExit message), never a
traceback for a user error.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pipelines.errors import MedscanError

FORMAT = "%(message)s"
_HANDLER_NAME = "medscan-cli"


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout / sys.stderr is at emit time (a test's capture included)."""

    def __init__(self, stream_name: str) -> None:
        super().__init__()
        self.stream_name = stream_name

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = getattr(sys, self.stream_name)
        super().emit(record)


def setup_logging(level: int = logging.INFO, stream: str = "stdout") -> None:
    """Log the project's INFO lines as bare messages, once per process: the lines the README and
    tests quote stay exactly as they were printed, and DVC shows them under the stage's name.

    Stages log to stdout (nobody parses a stage's stdout); a tool whose stdout is data (intake's
    JSON summary, serve's predictions) passes stream="stderr". The handler hangs on the
    `pipelines` logger, not the root, so other libraries' loggers and a test's log capture are
    left alone.
    """
    logger = logging.getLogger("pipelines")
    logger.setLevel(level)
    for handler in logger.handlers:
        if handler.get_name() == _HANDLER_NAME:
            handler.stream_name = stream  # type: ignore[attr-defined]
            return
    handler = _ConsoleHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)


def arch_argument(description: str, argv: list[str] | None = None) -> str:
    """The `--arch NAME` a per-architecture stage (train, evaluate) is run with (dvc.yaml foreach)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--arch", required=True)
    return parser.parse_args(argv).arch


@contextmanager
def exits_on_error(name: str) -> Iterator[None]:
    """Turn a MedscanError raised inside into SystemExit("<name>: <message>"): exit status 1 with
    that one line (Python prints a SystemExit message to stderr); anything else stays a traceback."""
    try:
        yield
    except MedscanError as err:
        raise SystemExit(f"{name}: {err}") from err
