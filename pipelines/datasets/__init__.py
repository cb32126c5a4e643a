"""Data set adapters: one per native layout, looked up by the `dataset.name` param."""

from __future__ import annotations

from pipelines.datasets.base import Candidate, DatasetAdapter, ScanResult, SourceReason
from pipelines.datasets.dermnet import DermnetAdapter
from pipelines.datasets.ham10000 import Ham10000Adapter
from pipelines.datasets.malaria import MalariaAdapter
from pipelines.datasets.malaria_tfds import MalariaTfdsAdapter

_ADAPTERS: dict[str, type[DatasetAdapter]] = {
    cls.name: cls for cls in (Ham10000Adapter, MalariaAdapter, MalariaTfdsAdapter, DermnetAdapter)
}

ADAPTER_NAMES: tuple[str, ...] = tuple(_ADAPTERS)


def get_adapter(name: str) -> DatasetAdapter:
    """The adapter registered as `name`; a clear error listing the known names otherwise."""
    try:
        return _ADAPTERS[name]()
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(ADAPTER_NAMES)}") from None


__all__ = ["ADAPTER_NAMES", "Candidate", "DatasetAdapter", "ScanResult", "SourceReason", "get_adapter"]
