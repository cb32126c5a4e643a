"""The project's one error class: a failure a user can act on, raised by library code and stages.

Library functions raise `MedscanError` (or a subclass) instead of `SystemExit`, so they stay usable
from the DAG, the web app and tests; only a command-line `main()` turns it into one clear line on
stderr and exit status 1 (pipelines.cli.run_main). A bare ValueError still means a programming
error, not a bad input.
"""
from __future__ import annotations


class MedscanError(Exception):
    """A user-facing failure whose message says what went wrong and what to do about it."""


class ConfigError(MedscanError, ValueError):
    """params.yaml (or a command-line flag) asks for something impossible. Also a ValueError, which
    callers caught before the project had its own class."""


class DataError(MedscanError, ValueError):
    """The data on disk cannot go on to the next stage (a failed validation, an unusable split,
    nothing to compare). Also a ValueError, for the same reason as ConfigError."""


class RegistryError(MedscanError):
    """The model registry cannot do what was asked (no champion, nothing to roll back to)."""
