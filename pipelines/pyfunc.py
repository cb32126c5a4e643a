"""The MLflow pyfunc that is the registered model: Keras weights + contract + the preprocessing.

Logged by evaluate (name "model"), once the contract carries the temperature and abstention
threshold fitted on validation, so what promote registers (`runs:/<run>/model`) is calibrated.
`mlflow models serve -m models:/medscan-<dataset>@champion --env-manager local` then answers

    POST /invocations {"dataframe_records": [{"image": "<base64>", "age": 60, "sex": "male",
                                              "localization": "back"}]}      (metadata optional)
    -> {"predictions": [{"label", "name", "probability", "abstain", "top": [{"label", "name",
                          "probability"}, ...]}]}

An unusable image or invalid metadata is an MlflowException(INVALID_PARAMETER_VALUE): HTTP 400,
naming the row and the field. The `pipelines` package travels in the model (code_paths), so the
server needs no checkout. `registry.load_version` reads the Keras model from the artifacts.
"""
from __future__ import annotations

import io
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

from pipelines.config import CONTRACT_FILE
from pipelines.contract import ModelContract, load, save

KERAS, CONTRACT = "keras_model", "contract"       # artifact keys (files artifacts/<name>)
DEFAULT_K = 5


def pip_requirements() -> list[str]:
    """Pinned from this environment: explicit, so log_model does not spend 15 s inferring them."""
    dists = ["mlflow", "keras", "pandas", "numpy", "pillow", "scipy", "pyyaml"]
    pins = [f"{d}=={version(d)}" for d in dists]
    try:
        pins.append(f"tensorflow-cpu=={version('tensorflow-cpu')}")
    except Exception:  # noqa: BLE001 - a GPU machine's own `tensorflow`
        pins.append(f"tensorflow=={version('tensorflow')}")
    return pins


class MedscanModel(mlflow.pyfunc.PythonModel):
    """Rows of (image bytes, optional metadata) -> top-k answers with `abstain`."""

    def load_context(self, context: Any) -> None:
        import pipelines.zoo  # noqa: F401  (custom layers)

        self.contract = load(Path(context.artifacts[CONTRACT]))
        self.model = pipelines.zoo.load_model(context.artifacts[KERAS], compile=False)

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        from pipelines.model_inputs import InvalidInput, diagnose

        frame = pd.DataFrame(model_input)
        if "image" not in frame:
            raise MlflowException("image: every row needs an `image` (base64 of the file's bytes)",
                                  INVALID_PARAMETER_VALUE)
        images, metadata = [], []
        for i, row in enumerate(frame.to_dict("records")):
            raw = row.pop("image")
            if not isinstance(raw, (bytes, bytearray)):
                raise MlflowException(f"row {i}: image: must be the file's bytes (base64 in JSON)",
                                      INVALID_PARAMETER_VALUE)
            images.append(bytes(raw))
            metadata.append(row)
        k = int((params or {}).get("k", DEFAULT_K))
        try:
            return diagnose(self.model, self.contract, images, metadata, k)
        except InvalidInput as err:
            raise MlflowException(str(err), INVALID_PARAMETER_VALUE) from None


def signature(contract: ModelContract) -> ModelSignature:
    cols = [ColSpec("binary", "image")]
    cols += [ColSpec(AnyType(), c, required=False) for c in contract.metadata_columns]
    return ModelSignature(inputs=Schema(cols), params=ParamSchema([ParamSpec("k", "long", DEFAULT_K)]))


def input_example(contract: ModelContract) -> pd.DataFrame:
    """One mid-grey 32x32 PNG with the first allowed value of every metadata column."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buf, "PNG")
    row: dict[str, Any] = {"image": buf.getvalue()}
    for col in contract.metadata_columns:
        if col == "age":
            row[col] = 60.0
        else:
            row[col] = next(iter(contract.categorical_values.get(col) or ()), "unknown")
    return pd.DataFrame([row])


def log_pyfunc(keras_path: Path, contract: ModelContract, work_dir: Path) -> Any:
    """Log the pyfunc as "model" in the active run; returns MLflow's ModelInfo."""
    import pipelines

    contract_path = save(contract, work_dir / CONTRACT_FILE)
    return mlflow.pyfunc.log_model(
        name="model", python_model=MedscanModel(),
        artifacts={KERAS: str(keras_path), CONTRACT: str(contract_path)},
        code_paths=[str(Path(pipelines.__file__).parent)],
        signature=signature(contract), input_example=input_example(contract),
        pip_requirements=pip_requirements())
