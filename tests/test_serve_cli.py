"""The serving and registry CLIs on bad input (issue 10): one clear line, a non-zero exit, the rest
of a batch still answered; a champion with deleted artifacts is named with what is missing; patient
metadata never reaches the HTTP access log or an error message.
"""
from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import PROJECT, venv_env
from tests.patient_data import mentions

PATIENT = {"age": "63", "sex": "female", "localization": "scalp"}


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty project: params.yaml only (the MLflow store is created in it on first use)."""
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy2(PROJECT / "params.yaml", root / "params.yaml")
    monkeypatch.setenv("MEDSCAN_ROOT", str(root))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    return root


def png(path: Path, size: int = 32) -> Path:
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = venv_env(root)
    env["PYTHONPATH"] = str(PROJECT)
    return subprocess.run([sys.executable, "-m", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def test_registry_rollback_of_an_unknown_model_is_one_line_and_fails(project):
    done = run_cli(project, "pipelines.registry", "rollback", "--model", "unknown")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    # the last line is the error (MLflow may log its store creation before it)
    assert done.stderr.strip().splitlines()[-1] == \
        "registry: no registered model named 'unknown' (registered: none)"
    show = run_cli(project, "pipelines.registry", "show", "--model", "unknown")
    assert show.returncode == 1 and "Traceback" not in show.stderr and "'unknown'" in show.stderr


def test_serve_reports_each_missing_file_and_directory_and_exits_non_zero(project):
    (project / "a_folder").mkdir()
    done = run_cli(project, "pipelines.serve", "missing.png", "a_folder")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("serve:")]  # not TF's noise
    assert ours == ["serve: missing.png: not_found (no such file)",
                    "serve: a_folder: is_a_directory (a directory, not an image file)"]
    assert [r["error"] for r in json.loads(done.stdout)] == ["not_found", "is_a_directory"]


def test_serve_answers_the_rest_of_a_batch(project, monkeypatch, capsys):
    keras = pytest.importorskip("keras")
    from pipelines import serve

    inputs = keras.Input((24, 24, 3), name="image")
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model([inputs], outputs)   # a list of inputs, as zoo.heads builds them
    info = {"image_size": 24, "classes": ["akiec", "bcc", "nv"], "metadata_columns": []}
    monkeypatch.setattr(serve.Predictor, "champion",
                        classmethod(lambda cls, params, paths: cls(model, info, "medscan-ham10000/1")))
    good = png(project / "lesion.png")
    (project / "notes.txt").write_text("not an image")
    (project / "a_folder").mkdir()
    code = serve.main([str(good), "missing.png", str(project / "a_folder"), str(project / "notes.txt"),
                       "-k", "2", "--age", "63", "--sex", "female"])
    out = capsys.readouterr()
    assert code == 1
    results = json.loads(out.out)
    assert results[0]["model"] == "medscan-ham10000/1" and len(results[0]["top"]) == 2
    assert [r.get("error") for r in results[1:]] == ["not_found", "is_a_directory", "not_an_image"]
    errors = out.err.replace(str(project), "<project>")   # the temp path's digits are not the age
    assert len(errors.splitlines()) == 3 and not mentions(errors, "female") and not mentions(errors, "63")
    assert serve.main([str(good)]) == 0


def _register_champion(root: Path) -> tuple[str, str]:
    """A registered champion (a pyfunc model + train_info.json) in the project's own store."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines import registry, tracking
    from pipelines.config import Paths, load_params

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: pd.DataFrame,
                    params: dict[str, Any] | None = None) -> pd.DataFrame:
            return model_input

    params = load_params(root)
    experiment = tracking.configure(Paths(root), params["dataset"]["name"])
    name = registry.model_name(params)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_dict({"classes": ["a", "b"], "image_size": 24}, "medscan/train_info.json")
        logged = mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=["mlflow"])
    version = mlflow.register_model(logged.model_uri, name)
    registry.set_champion(MlflowClient(), name, version.version)
    return name, run.info.run_id


def test_champion_with_deleted_artifacts_names_the_version_and_what_is_missing(project):
    from mlflow import MlflowClient

    from pipelines import registry, serve
    from pipelines.config import Paths, load_params

    name, run_id = _register_champion(project)
    client = MlflowClient()
    champion = registry.version_by_alias(client, name, registry.CHAMPION)
    assert serve.missing_artifacts(client, name, champion) == []     # all there: nothing claimed

    shutil.rmtree(project / "mlartifacts")
    with pytest.raises(serve.ChampionUnavailable) as err:
        serve.Predictor.champion(load_params(project), Paths(project))
    message = str(err.value)
    assert f"{name} version {champion.version} (champion, run {run_id}) cannot be served" in message
    assert f"runs:/{run_id}/medscan/train_info.json" in message
    assert f"the model files of models:/{name}/{champion.version}" in message
    assert "rollback" in message and "\n" not in message

    done = run_cli(project, "pipelines.serve", str(png(project / "x.png")))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"serve: error: {name} version {champion.version}")


class _Predictor:
    """Stands in for the model behind the HTTP layer: what is under test is what gets logged."""

    version = "medscan-ham10000/1"

    def predict(self, images, metadata=None, k=5):
        if images[0] == b"crash":
            raise ValueError(f"patient {metadata}")     # a message that quotes the metadata
        if images[0] == b"not an image":
            return [{"error": "not_an_image", "detail": "cannot identify image"}]
        return [{"model": self.version, "top": [{"label": "nv", "probability": 0.9}]}]


def test_http_access_log_and_errors_carry_no_patient_data(capsys):
    from pipelines import serve

    server = serve.make_server(_Predictor(), 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    query = "&".join(f"{k}={v}" for k, v in PATIENT.items())
    replies = []
    try:
        for body in (b"png bytes", b"not an image", b"crash"):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
            conn.request("POST", f"/predict?{query}", body=body)
            reply = conn.getresponse()
            replies.append((reply.status, reply.read().decode()))
            conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
        conn.request("GET", f"/predict?{query}")
        replies.append((conn.getresponse().status, ""))
        conn.close()
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=30) as raw:
            raw.sendall(f"POST /predict?{query} x HTTP/1.1\r\n\r\n".encode())   # bad request syntax
            replies.append((int(raw.recv(4096).split()[1]), ""))
    finally:
        server.shutdown()
        server.server_close()
    assert [status for status, _ in replies] == [200, 400, 500, 501, 400]
    log = capsys.readouterr().err
    assert '"POST /predict" 200' in log and '"POST /predict" 500' in log and "predict failed: ValueError" in log
    for value in PATIENT.values():
        assert not mentions(log, value)
        assert not any(mentions(text, value) for _, text in replies)
