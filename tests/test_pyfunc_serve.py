"""The registered champion is an MLflow pyfunc that `mlflow models serve` answers for, preprocessing
included: base64 image + optional metadata in, top-k with names and `abstain` out, 4xx naming the
field for invalid metadata."""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image

from pipelines import registry
from pipelines.contract import from_train_info
from pipelines.pyfunc import log_pyfunc
from pipelines.train import model_inputs_info

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
NAME = "medscan-ham10000"


def _jpeg(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _champion(tmp_path: Path) -> tuple[object, object]:
    """A tiny ham10000 model logged as the pyfunc, registered, and made champion."""
    from pipelines.zoo import build_model

    info = {"dataset": "ham10000", "arch": "tiny", "classes": CLASSES, "image_size": 24, "tta": "none",
            **model_inputs_info("ham10000", True)}
    contract = from_train_info(info).calibrated(1.5, 0.3, 0.9)
    keras.utils.set_random_seed(0)
    model = build_model({"builder": "custom_cnn", "conv_blocks": 1, "filters": 4, "dropout": 0.0},
                        (24, 24, 3), len(CLASSES), len(contract.metadata_features))
    model.save(tmp_path / "model.keras")
    (tmp_path / "train_info.json").write_text(json.dumps(info))
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifact(str(tmp_path / "train_info.json"), artifact_path="medscan")
        log_pyfunc(tmp_path / "model.keras", contract, tmp_path)
    client = MlflowClient()
    version = registry.register(client, NAME, run.info.run_id, {})
    registry.set_champion(client, NAME, version.version)
    return contract, version


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.slow
def test_pyfunc_champion_predicts_in_process_and_loads_back_as_keras(tmp_path, mlflow_store):
    contract, version = _champion(tmp_path)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert [c.name for c in pyfunc.metadata.get_input_schema().inputs][:2] == ["image", "age"]
    frame = pd.DataFrame([{"image": _jpeg(), "age": 60, "sex": "male", "localization": "back"},
                          {"image": _jpeg(1)}])
    out = pyfunc.predict(frame, params={"k": 3})
    assert len(out) == 2 and all(len(r["top"]) == 3 and isinstance(r["abstain"], bool) for r in out)
    assert out[0]["name"] == contract.display_name(out[0]["label"])
    with pytest.raises(MlflowException, match="sex"):
        pyfunc.predict(pd.DataFrame([{"image": _jpeg(), "sex": "alien"}]))

    model, info, loaded = registry.load_served(NAME, version)
    assert isinstance(model, keras.Model) and info["classes"] == CLASSES
    assert loaded.temperature == 1.5 and loaded.abstain_threshold == 0.3

    # evaluate re-run on the same run (a new abstention target): promote registers the newer pyfunc
    with mlflow.start_run(run_id=version.run_id):
        log_pyfunc(tmp_path / "model.keras", contract.calibrated(2.0, 0.4, 0.95), tmp_path)
    client = MlflowClient()
    newer = registry.register(client, NAME, version.run_id, {})
    assert newer.version != version.version and newer.run_id == version.run_id
    assert registry.register(client, NAME, version.run_id, {}).version == newer.version
    assert registry.load_served(NAME, newer)[2].temperature == 2.0


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(tmp_path, mlflow_store):
    contract, _ = _champion(tmp_path)
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "MLFLOW_REGISTRY_URI": mlflow_store,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # uvicorn
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion",
         "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1", "-w", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server not up in 180 s"
            time.sleep(1)
        image = base64.b64encode(_jpeg()).decode()
        status, body = _post(port, {"dataframe_records": [
            {"image": image, "age": 60, "sex": "male", "localization": "back"}, {"image": image}]})
        assert status == 200, body
        first = body["predictions"][0]
        assert len(first["top"]) == 5 and first["name"] == contract.display_name(first["label"])
        assert isinstance(first["abstain"], bool) and 0.0 <= first["probability"] <= 1.0
        status, body = _post(port, {"dataframe_records": [{"image": image, "age": "abc"}]})
        assert 400 <= status < 500 and "age" in body["message"], body
        assert "nan" not in json.dumps(body).lower()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
