"""MLflow Model Registry operations: register with lineage, champion/previous aliases, rollback.

Aliases, never the deprecated stages. `champion` is what serving loads; `previous` is the champion
it replaced, so a bad promotion is one `rollback` away. The registered model keeps the champion
history in a tag so repeated rollbacks walk back in order.

CLI: python -m pipelines.registry show|rollback [--model NAME]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pipelines.cli import exits_on_error
from pipelines.config import CONTRACT_FILE, TRAIN_INFO_FILE, artifact
from pipelines.errors import RegistryError

CHAMPION, PREVIOUS = "champion", "previous"
HISTORY_TAG = "medscan.champion_history"
# What the registry answers for "no such model" / "no such alias": anything else (a tracking server
# whose database is down answers INTERNAL_ERROR) is an outage, not an answer, and must propagate.
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code in NOT_FOUND


def model_name(params: Mapping[str, Any]) -> str:
    return f"{params['promote']['model_name_prefix']}-{params['dataset']['name']}"


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`; None only when the model or the alias does not exist (an
    outage taken for "no champion" would bless a candidate on the floor alone)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def latest_logged_model(client: MlflowClient, run_id: str, model: str = "model") -> str | None:
    """The id of the run's newest logged model named `model` (evaluate logs the calibrated pyfunc;
    a re-run of evaluate on the same run logs a newer one, and that is the one to register)."""
    experiment = client.get_run(run_id).info.experiment_id
    found = [m for m in client.search_logged_models([experiment], filter_string=f"name = '{model}'",
                                                    order_by=[{"field_name": "creation_time", "ascending": False}])
             if m.source_run_id == run_id]
    return found[0].model_id if found else None


def register(client: MlflowClient, name: str, run_id: str, tags: Mapping[str, str]) -> ModelVersion:
    """Register the run's newest logged model "model" (once: registered already returns its version)."""
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        client.create_registered_model(name, description="Medscan diagnostic-support classifier")
    model_id = latest_logged_model(client, run_id)
    for existing in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        source = str(existing.source or "")
        registered = existing.model_id or (source[len("models:/"):] if source.startswith("models:/m-") else None)
        if model_id is not None and registered not in (None, model_id):
            continue   # an older logged model of this run (before evaluate re-ran)
        for key, value in tags.items():
            client.set_model_version_tag(name, existing.version, key, str(value))
        return client.get_model_version(name, existing.version)
    source = f"models:/{model_id}" if model_id else f"runs:/{run_id}/model"
    version = mlflow.register_model(source, name, tags={k: str(v) for k, v in tags.items()})
    return client.get_model_version(name, version.version)


def _history(client: MlflowClient, name: str) -> list[str]:
    tag = client.get_registered_model(name).tags.get(HISTORY_TAG, "")
    return [v for v in tag.split(",") if v]


def set_champion(client: MlflowClient, name: str, version: str) -> None:
    """Move `champion` to `version`; the replaced champion becomes `previous`.

    Three writes, and the registry can go away between them: a rerun (the stage's retry) finishes
    what is missing (the history entry after the alias moved) and never adds an entry twice.
    """
    current = version_by_alias(client, name, CHAMPION)
    if current is None or str(current.version) != str(version):
        if current is not None:
            client.set_registered_model_alias(name, PREVIOUS, str(current.version))
        client.set_registered_model_alias(name, CHAMPION, str(version))
    history = _history(client, name)
    if history[-1:] != [str(version)]:
        client.set_registered_model_tag(name, HISTORY_TAG, ",".join([*history, str(version)]))


def rollback(client: MlflowClient, name: str) -> str:
    """Give `champion` back to the version it replaced; returns the restored version."""
    history = _history(client, name)
    if len(history) < 2:
        raise RegistryError(f"{name}: no earlier champion to roll back to (history: {history or 'empty'})")
    dropped, restored = history[-1], history[-2]
    client.set_registered_model_alias(name, CHAMPION, restored)
    client.set_model_version_tag(name, dropped, "medscan.rolled_back", "true")
    rest = history[:-1]
    if len(rest) >= 2:
        client.set_registered_model_alias(name, PREVIOUS, rest[-2])
    else:
        client.delete_registered_model_alias(name, PREVIOUS)
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(rest))
    return restored


class ArtifactMissing(RegistryError, RuntimeError):
    """A registered version whose files are gone from the artifact store (deleted, moved, unreadable).

    The message names the model, the version, its run and the missing artifact, so an operator
    knows what to restore or roll back; promote treats such a champion as unscorable.
    """


def _missing(name: str, version: ModelVersion, artifact: str, exc: Exception) -> ArtifactMissing:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ArtifactMissing(
        f"{name} version {version.version} (run {version.run_id}): artifact '{artifact}' is missing "
        f"from the artifact store ({detail})")


def download_json(name: str, version: ModelVersion, artifact: str) -> dict[str, Any] | None:
    """A JSON artifact of the version's run; None when the run never logged it."""
    client = MlflowClient()
    parent, _, filename = artifact.rpartition("/")
    try:
        listed = {Path(f.path).name for f in client.list_artifacts(version.run_id, parent or None)}
    except (MlflowException, OSError) as exc:
        raise _missing(name, version, artifact, exc) from exc
    if filename not in listed:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=artifact,
                                                       dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise _missing(name, version, artifact, exc) from exc
        return json.loads(Path(path).read_text(encoding="utf-8"))


def load_version(name: str, version: ModelVersion) -> tuple[Any, dict[str, Any]]:
    """(keras model, train_info) of a registered version, fetched from the registry's store.

    Raises ArtifactMissing (naming version and artifact) when its files are gone.
    """
    model, info, _ = load_served(name, version)
    return model, info


def load_served(name: str, version: ModelVersion) -> tuple[Any, dict[str, Any], Any]:
    """(keras model, train_info, ModelContract) of a registered version.

    The registered model is the pyfunc (pipelines.pyfunc): the Keras model and the calibrated
    contract are read from its artifacts. A version registered before (the plain TensorFlow
    flavor) gets the contract its train_info implies, uncalibrated and never abstaining.
    """
    from pipelines.contract import from_train_info, load

    info = download_json(name, version, artifact(TRAIN_INFO_FILE))
    if info is None:
        where = MlflowClient().get_run(version.run_id).info.artifact_uri
        raise _missing(name, version, artifact(TRAIN_INFO_FILE),
                       FileNotFoundError(f"not found under {where}: deleted, or never logged"))
    import pipelines.zoo  # noqa: F401  (registers the zoo's custom layers for deserialisation)

    uri = f"models:/{name}/{version.version}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            kept = sorted((local / "artifacts").glob("*.keras"))
            if kept and (local / "artifacts" / CONTRACT_FILE).exists():
                return (pipelines.zoo.load_model(kept[0], compile=False), info,
                        load(local / "artifacts" / CONTRACT_FILE))
            model = mlflow.tensorflow.load_model(str(local), keras_model_kwargs={"compile": False})
    except (MlflowException, OSError, ValueError) as exc:
        raise _missing(name, version, f"{uri} (logged model)", exc) from exc
    return model, info, from_train_info(info)


def describe(client: MlflowClient, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": name, "history": _history(client, name)}
    for alias in (CHAMPION, PREVIOUS):
        mv = version_by_alias(client, name, alias)
        out[alias] = None if mv is None else {"version": mv.version, "run_id": mv.run_id, "tags": mv.tags}
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI; any registry error ends in one `registry: ...` line and exit status 1, no traceback."""
    from pipelines import tracking
    from pipelines.config import Paths, load_params, project_root

    parser = argparse.ArgumentParser(description="Inspect the registry or roll the champion back.")
    parser.add_argument("command", choices=("show", "rollback"))
    parser.add_argument("--model", help="registered model name (default from params.yaml)")
    args = parser.parse_args(argv)
    root = project_root()
    params = load_params(root)
    name = args.model or model_name(params)
    try:
        tracking.configure(Paths(root), params["dataset"]["name"])
        client = MlflowClient()
        try:
            client.get_registered_model(name)
        except MlflowException:
            known = sorted(m.name for m in client.search_registered_models())
            raise SystemExit(f"registry: no registered model named {name!r} "
                             f"(registered: {', '.join(known) or 'none'})") from None
        if args.command == "rollback":
            with exits_on_error("registry"):
                print(f"{name}: champion is now version {rollback(client, name)}")
        print(json.dumps(describe(client, name), indent=2))
    except MlflowException as err:
        first = (err.message.strip().splitlines() or ["MLflow error"])[0]
        raise SystemExit(f"registry: {args.command} {name}: {first}") from None


if __name__ == "__main__":
    main()
