"""The model contract: every fact needed to feed a trained model and read its output, in one file.

Saved as contract.json with every model (train writes it next to train_info.json with an identity
calibration; evaluate fills in the temperature and the abstention threshold it fits on the
validation split and logs the result inside the MLflow pyfunc). Serving, Grad-CAM, evaluate and
promote read it, so a model trained months ago is fed exactly as it was trained:

- classes and their readable names (the data set adapter's `display_names`);
- the ingest normalisation: `ingest.store_max_side` and the `bounds:` image limits an upload must
  meet (pipelines.images), then the resize to `image_size` (pipelines.data.resize_pixels);
- the metadata encoding (pipelines.features) and the valid age range (`bounds.age_range`);
- test-time augmentation, the calibration temperature and the abstention threshold.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipelines.features import metadata_layout
from pipelines.images import ImageLimits

FILE = "contract.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelContract:
    """What a model expects and promises. Frozen: a calibrated copy is made with `calibrated`."""

    dataset: str
    classes: tuple[str, ...]
    display_names: tuple[str, ...]          # aligned with `classes`
    image_size: int
    store_max_side: int = ImageLimits.store_max_side
    min_side: int = ImageLimits.min_side
    max_side: int = ImageLimits.max_side
    max_pixels: int = ImageLimits.max_pixels
    age_range: tuple[float, float] = (0.0, 120.0)
    metadata_columns: tuple[str, ...] = ()
    categorical_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    tta: str = "none"
    temperature: float = 1.0                # probabilities softmax(log p / T); 1 = uncalibrated
    abstain_threshold: float = 0.0          # abstain when the top calibrated probability is below
    abstain_target_precision: float | None = None   # what the threshold was chosen for (None: never)
    arch: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def metadata_features(self) -> list[str]:
        return metadata_layout(self.metadata_columns, self.categorical_values)

    def image_limits(self) -> ImageLimits:
        return ImageLimits(store_max_side=self.store_max_side, max_pixels=self.max_pixels,
                           min_side=self.min_side, max_side=self.max_side)

    def display_name(self, label: str) -> str:
        return dict(zip(self.classes, self.display_names)).get(label, label)

    def calibrated(self, temperature: float, threshold: float, target: float | None) -> "ModelContract":
        return replace(self, temperature=float(temperature), abstain_threshold=float(threshold),
                       abstain_target_precision=None if target is None else float(target))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["categorical_values"] = {k: list(v) for k, v in self.categorical_values.items()}
        out["metadata_features"] = self.metadata_features
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "ModelContract":
        names = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in doc.items() if k in names}
        values["classes"] = tuple(values["classes"])
        values["display_names"] = tuple(values.get("display_names") or values["classes"])
        values["metadata_columns"] = tuple(values.get("metadata_columns") or ())
        values["categorical_values"] = {k: tuple(v) for k, v in (values.get("categorical_values") or {}).items()}
        if "age_range" in values:
            values["age_range"] = tuple(float(x) for x in values["age_range"])
        return cls(**values)


def save(contract: ModelContract, path: Path) -> Path:
    path.write_text(json.dumps(contract.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def load(path: Path) -> ModelContract:
    return ModelContract.from_dict(json.loads(path.read_text(encoding="utf-8")))


def display_names(dataset: str, classes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The adapter's readable names; the labels themselves for a data set without an adapter."""
    from pipelines.datasets import get_adapter

    try:
        adapter = get_adapter(dataset)
    except ValueError:
        return tuple(classes)
    return tuple(adapter.display_name(c) for c in classes)


def from_train_info(info: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> ModelContract:
    """The contract of a model from its train_info (and the params it was trained under).

    Without params (a model registered before contracts existed) the normalisation and bounds
    are params.yaml's defaults, which is what such models were trained with.
    """
    from pipelines.bounds import CaseBounds

    bounds = CaseBounds.from_params(params) if params is not None else CaseBounds()
    store = (params or {}).get("ingest", {}).get("store_max_side", ImageLimits.store_max_side)
    classes = tuple(info["classes"])
    dataset = str(info.get("dataset", ""))
    return ModelContract(
        dataset=dataset, arch=str(info.get("arch", "")), classes=classes,
        display_names=display_names(dataset, classes), image_size=int(info["image_size"]),
        store_max_side=int(store), min_side=bounds.min_side, max_side=bounds.max_side,
        max_pixels=bounds.max_pixels, age_range=bounds.age_range,
        metadata_columns=tuple(info.get("metadata_columns") or ()),
        categorical_values={k: tuple(v) for k, v in (info.get("categorical_values") or {}).items()},
        tta=str(info.get("tta", "none")))


def as_contract(info: ModelContract | Mapping[str, Any]) -> ModelContract:
    """A contract as is, or the one a bare train_info implies (older models, test doubles)."""
    return info if isinstance(info, ModelContract) else from_train_info(info)


def for_model_dir(model_dir: Path, info: Mapping[str, Any],
                  params: Mapping[str, Any] | None = None) -> ModelContract:
    """models/<arch>/contract.json, or the one its train_info (and params) imply when there is none
    (an ensemble written by pipelines.assemble)."""
    path = model_dir / FILE
    return load(path) if path.exists() else from_train_info(info, params)
