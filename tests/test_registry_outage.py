"""The registry when its server or database goes away (seen on a real MLflow server whose
PostgreSQL was stopped, tests/services): an outage is never read as "no champion", and a champion
move cut off part-way is completed by the rerun, with no duplicate history entry."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from pipelines import registry

NAME = "medscan-outage"


class DownClient:
    """What MlflowClient raises while the tracking server's database is down (HTTP 500s)."""

    def get_model_version_by_alias(self, name: str, alias: str):
        raise MlflowException("too many 500 error responses", error_code=INTERNAL_ERROR)

    def get_registered_model(self, name: str):
        raise MlflowException("too many 500 error responses", error_code=INTERNAL_ERROR)


def _versions(client: MlflowClient, tmp_path, n: int) -> list[str]:
    client.create_registered_model(NAME)
    return [str(client.create_model_version(NAME, source=str(tmp_path / f"m{i}")).version) for i in range(n)]


def test_missing_model_or_alias_is_none_but_an_outage_raises(tmp_path, mlflow_store):
    client = MlflowClient()
    assert registry.version_by_alias(client, NAME, registry.CHAMPION) is None       # no model
    _versions(client, tmp_path, 1)
    assert registry.version_by_alias(client, NAME, registry.CHAMPION) is None       # no alias
    with pytest.raises(MlflowException, match="500"):
        registry.version_by_alias(DownClient(), NAME, registry.CHAMPION)
    with pytest.raises(MlflowException, match="500"):
        registry.register(DownClient(), NAME, "run", {})   # never "create it, it is missing"


class FailsOnce(MlflowClient):
    """The registry goes away right after the alias moved, before the history tag is written."""

    failed = False

    def set_registered_model_tag(self, name, key, value):
        if not self.failed:
            FailsOnce.failed = True
            raise MlflowException("too many 500 error responses", error_code=INTERNAL_ERROR)
        return super().set_registered_model_tag(name, key, value)


def test_a_champion_move_cut_off_part_way_is_completed_by_the_rerun(tmp_path, mlflow_store):
    client = MlflowClient()
    v1, v2 = _versions(client, tmp_path, 2)
    registry.set_champion(client, NAME, v1)
    flaky = FailsOnce()
    with pytest.raises(MlflowException):
        registry.set_champion(flaky, NAME, v2)
    assert str(registry.version_by_alias(client, NAME, registry.CHAMPION).version) == v2
    assert registry._history(client, NAME) == [v1]          # the write that did not happen
    registry.set_champion(flaky, NAME, v2)                   # the stage's retry
    registry.set_champion(client, NAME, v2)                  # and once more: nothing changes
    assert registry._history(client, NAME) == [v1, v2]
    assert str(registry.version_by_alias(client, NAME, registry.PREVIOUS).version) == v1
    assert registry.rollback(client, NAME) == v1
