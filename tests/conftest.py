"""Shared fixtures: tiny generated data, a throw-away MLflow store, and the project's own files."""
from __future__ import annotations

import os

import pytest

# A project copy to run the real pipeline in, shared with bench/ (pipelines/project_copy.py); the
# tests import these names from here.
from pipelines.project_copy import (PROJECT, PROJECT_FILES, SHARED_DATA, copy_project,  # noqa: F401
                                    set_params, venv_env)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A private SQLite MLflow store for one test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # MLflow copies both URIs into os.environ; monkeypatch restores both after the test, so no
    # later test (or its subprocesses) finds this store's registry.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    mlflow.set_registry_uri(None)
