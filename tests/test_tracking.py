"""MLflow wiring: each project gets its own store, and a user's MLFLOW_TRACKING_URI wins."""
import mlflow

from pipelines import tracking
from pipelines.config import Paths


def test_a_second_project_in_one_process_gets_its_own_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    first, second = Paths(tmp_path / "a"), Paths(tmp_path / "b")
    for p in (first, second):
        p.root.mkdir()
    tracking.configure(first, "ham10000")
    assert mlflow.get_tracking_uri() == f"sqlite:///{first.mlflow_db}"
    tracking.configure(second, "ham10000")  # MLflow left the first URIs in os.environ
    assert mlflow.get_tracking_uri() == f"sqlite:///{second.mlflow_db}"
    assert mlflow.get_registry_uri() == f"sqlite:///{second.mlflow_db}"
    assert second.mlflow_db.exists()


def test_a_user_tracking_uri_is_honoured(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'server.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    (tmp_path / "p").mkdir()
    tracking.configure(Paths(tmp_path / "p"), "malaria")
    assert mlflow.get_tracking_uri() == uri
    assert not (tmp_path / "p" / "mlflow.db").exists()
