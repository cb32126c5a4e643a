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


def tiny_adapter(params: dict[str, Any], size: int = 24) -> Any:
    """ModelAdapter over an untrained cnn_small with HAM10000's classes and metadata input."""
    from pipelines.datasets import get_adapter
    from pipelines.train import model_inputs_info
    from pipelines.webapp.model import ModelAdapter
    from pipelines.zoo import build_model

    info = {"classes": list(get_adapter("ham10000").classes), "image_size": size, "dataset": "ham10000",
            **model_inputs_info("ham10000", True)}
    model = build_model(params["zoo"]["cnn_small"], (size, size, 3), len(info["classes"]),
                        len(info["metadata_features"]), name="cnn_small")
    return ModelAdapter(model, info, "medscan-ham10000/1", params)


def image_bytes(fmt: str = "PNG", size: int = 40, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()
