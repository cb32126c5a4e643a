"""The blessing gate on constructed cases, and registry aliases with a real SQLite MLflow store."""
import json

import keras
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from pipelines import registry
from pipelines.promote import bless


def test_first_model_needs_the_floor():
    assert bless("balanced_accuracy", 0.61, None, floor=0.6, min_delta=0.0).blessed
    refused = bless("balanced_accuracy", 0.59, None, floor=0.6, min_delta=0.0)
    assert not refused.blessed and "below the floor" in refused.reason


def test_challenger_must_beat_champion_by_margin():
    assert bless("f1_macro", 0.80, 0.75, floor=0.5, min_delta=0.02).blessed
    assert not bless("f1_macro", 0.76, 0.75, floor=0.5, min_delta=0.02).blessed
    assert not bless("f1_macro", 0.70, 0.75, floor=0.5, min_delta=0.0).blessed
    # a better challenger under the floor is still refused
    assert not bless("f1_macro", 0.45, 0.30, floor=0.5, min_delta=0.0).blessed


def _logged_run(tmp_path, experiment_id: str, seed: int) -> str:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3), name="image")
    outputs = keras.layers.Dense(2, activation="softmax", name="probs")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    info = {"classes": ["a", "b"], "image_size": 4, "metadata_columns": []}
    path = tmp_path / f"run{seed}" / "train_info.json"
    path.parent.mkdir()
    path.write_text(json.dumps(info))
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifact(str(path), artifact_path="medscan")
        mlflow.tensorflow.log_model(model, name="model", pip_requirements=["keras"])
    return run.info.run_id


@pytest.mark.slow
def test_champion_previous_and_rollback(tmp_path, mlflow_store):
    client = MlflowClient()
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    name = "medscan-test"
    versions = []
    for seed in range(3):
        run_id = _logged_run(tmp_path, experiment, seed)
        mv = registry.register(client, name, run_id, {"medscan.git_commit": "abc", "seed": seed})
        assert registry.register(client, name, run_id, {"again": "1"}).version == mv.version  # once per run
        registry.set_champion(client, name, mv.version)
        versions.append(str(mv.version))
    assert str(registry.version_by_alias(client, name, "champion").version) == versions[2]
    assert str(registry.version_by_alias(client, name, "previous").version) == versions[1]
    assert client.get_model_version(name, versions[0]).tags["medscan.git_commit"] == "abc"

    assert registry.rollback(client, name) == versions[1]
    assert str(registry.version_by_alias(client, name, "champion").version) == versions[1]
    assert str(registry.version_by_alias(client, name, "previous").version) == versions[0]
    assert client.get_model_version(name, versions[2]).tags["medscan.rolled_back"] == "true"

    assert registry.rollback(client, name) == versions[0]
    assert registry.version_by_alias(client, name, "previous") is None
    with pytest.raises(SystemExit):
        registry.rollback(client, name)

    model, info = registry.load_version(name, registry.version_by_alias(client, name, "champion"))
    assert info["classes"] == ["a", "b"]
    probs = model.predict({"image": np.zeros((1, 4, 4, 3), np.float32)}, verbose=0)
    assert probs.shape == (1, 2)
