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


PARAMS = {"train": {"epochs": 3}, "augment": {"flip": True}, "architectures": ["cnn_small", "cnn_medium"],
          "zoo": {"cnn_small": {"builder": "custom_cnn"}, "cnn_medium": {"builder": "custom_cnn"}},
          "evaluate": {"tta": "none"}}


def _execute(paths: Paths, params: dict, env: dict, frames: dict) -> None:
    """What the train stages of one `dvc repro` do in MLflow: a child per arch under the parent."""
    experiment = tracking.configure(paths, "ham10000")
    for arch in params["architectures"]:
        key, name, named = tracking.execution("ham10000", "ab12cd34ef56", params, env=env)
        parent = tracking.parent_run_id(experiment, key, run_name=name, arch=arch, named=named)
        with mlflow.start_run(experiment_id=experiment, run_name=arch, parent_run_id=parent):
            mlflow.set_tag("medscan.arch", arch)
            tracking.log_split_datasets(frames, "ham10000", paths.root / "splits.parquet")


def test_one_parent_per_execution_children_per_arch_and_datasets(tmp_path, mlflow_store):
    import pandas as pd

    paths = Paths(tmp_path)
    frames = {s: pd.DataFrame({"image_id": [f"{s}{i}" for i in range(4)], "label": ["a", "b"] * 2})
              for s in ("train", "val", "test")}
    _execute(paths, PARAMS, {}, frames)
    _execute(paths, PARAMS, {}, frames)                       # a rerun (dvc repro -f): new parent
    _execute(paths, {**PARAMS, "train": {"epochs": 12}}, {}, frames)   # other params: new parent
    _execute(paths, PARAMS, {"DVC_EXP_NAME": "lr-up"}, frames)         # an experiment: its own
    runs = mlflow.search_runs(experiment_names=["medscan-ham10000"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 4
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.info.run_name for r in children) == ["cnn_medium", "cnn_small"]   # no duplicates
    names = {p.info.run_name for p in parents}
    assert any(n.startswith("ham10000 ") and " splits ab12cd params " in n for n in names)
    assert any(n.endswith(" exp lr-up") for n in names)
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId"))
    inputs = mlflow.MlflowClient().get_run(child.info.run_id).inputs.dataset_inputs
    contexts = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}
    assert set(contexts) == {"train", "val", "test"}
    assert contexts["train"].name == "ham10000-train" and len(contexts["train"].digest) >= 8
    assert contexts["train"].digest != contexts["val"].digest


def test_an_orchestrator_execution_id_groups_its_retries(tmp_path, mlflow_store):
    paths = Paths(tmp_path)
    experiment = tracking.configure(paths, "ham10000")
    env = {"AIRFLOW_CTX_DAG_RUN_ID": "manual__2026-12-01T20:50"}
    key, name, named = tracking.execution("ham10000", "ab12cd34ef56", PARAMS, env=env)
    assert named and name.endswith("run manual__2026-12-01T20:50")
    first = tracking.parent_run_id(experiment, key, run_name=name, arch="cnn_small", named=named)
    with mlflow.start_run(experiment_id=experiment, run_name="cnn_small", parent_run_id=first):
        mlflow.set_tag("medscan.arch", "cnn_small")
    # A retried task of the same Airflow run stays under the same parent.
    assert tracking.parent_run_id(experiment, key, run_name=name, arch="cnn_small", named=named) == first


def test_experiments_are_tagged_as_computer_vision(tmp_path, mlflow_store):
    experiment = mlflow.get_experiment(tracking.configure(Paths(tmp_path), "malaria"))
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["medscan.domain"] == "computer-vision"
    assert "malaria" in experiment.tags["mlflow.note.content"]
    client = mlflow.MlflowClient()           # an experiment made before the tags gets them
    client.delete_experiment_tag(experiment.experiment_id, "mlflow.experimentKind")
    again = mlflow.get_experiment(tracking.configure(Paths(tmp_path), "malaria"))
    assert again.tags["mlflow.experimentKind"] == "custom_model_development"
