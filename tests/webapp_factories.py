"""A tiny untrained champion stand-in and a project folder for the web app tests (24 px, no MLflow)."""
from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from tests.conftest import PROJECT

ADMIN_PASSWORD = "admin-password-1"


def project(tmp_path: Path, **serve: Any) -> tuple[Path, dict[str, Any]]:
    """params.yaml of the repo with a private drop folder; `serve` overrides params `serve:`."""
    root = tmp_path / "proj"
    root.mkdir(parents=True)
    shutil.copy2(PROJECT / "params.yaml", root / "params.yaml")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["serve"].update(serve)
    params["orchestration"]["drop_folder"] = "incoming"
    return root, params


def tiny_contract(params: dict[str, Any], size: int = 24, threshold: float | None = 0.5) -> Any:
    """HAM10000's contract the way train and evaluate make it: `from_train_info` (train), then
    `calibrated` (evaluate: temperature 1, `threshold` chosen for the params' target precision).
    `threshold=None`: an old model's contract, never calibrated."""
    from pipelines.contract import from_train_info
    from pipelines.datasets import get_adapter
    from pipelines.train import model_inputs_info

    info = {"classes": list(get_adapter("ham10000").classes), "image_size": size, "dataset": "ham10000",
            "arch": "cnn_small", "tta": "none", **model_inputs_info("ham10000", True)}
    contract = from_train_info(info, params)
    if threshold is None:
        return contract
    return contract.calibrated(1.0, threshold, float(params["evaluate"]["abstain_target_precision"]))


def tiny_predictor(params: dict[str, Any], size: int = 24, threshold: float | None = 0.5) -> Any:
    """pipelines.serve.Predictor over an untrained cnn_small with the contract above (no MLflow)."""
    from pipelines.serve import Predictor
    from pipelines.zoo import build_model

    contract = tiny_contract(params, size, threshold)
    model = build_model(params["zoo"]["cnn_small"], (size, size, 3), len(contract.classes),
                        len(contract.metadata_features), name="cnn_small")
    info = {"classes": list(contract.classes), "image_size": size, "dataset": contract.dataset}
    return Predictor(model, info, "medscan-ham10000/1", contract)


def tiny_adapter(params: dict[str, Any], size: int = 24, threshold: float | None = 0.5) -> Any:
    """The web app's ModelAdapter over `tiny_predictor`."""
    from pipelines.webapp.model import ModelAdapter

    return ModelAdapter(tiny_predictor(params, size, threshold), params)


def image_bytes(fmt: str = "PNG", size: int = 40, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()
