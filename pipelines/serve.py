"""Serve the champion: top-5 diagnoses with probabilities for uploaded images.

`python -m pipelines.serve IMG [IMG ...] [--age 60 --sex male --localization back]` prints JSON;
`--http PORT` serves POST /predict (raw image bytes, metadata as query parameters) on 127.0.0.1.
A non-image upload gets a clear error, never a crash of the server.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from pipelines import registry, tracking
from pipelines.config import Paths, load_params, project_root
from pipelines.images import ImageLimits, ImageRejected, normalize_image
from pipelines.inference import metadata_for, top_k


class Predictor:
    """The champion model with its preprocessing contract, loaded once."""

    def __init__(self, model: Any, info: Mapping[str, Any], version: str) -> None:
        self.model, self.info, self.version = model, info, version

    @classmethod
    def champion(cls, params: Mapping[str, Any], paths: Paths) -> "Predictor":
        tracking.configure(paths, params["dataset"]["name"])
        name = registry.model_name(params)
        version = registry.version_by_alias(MlflowClient(), name, registry.CHAMPION)
        if version is None:
            raise SystemExit(f"{name} has no champion yet: run the pipeline first (make demo)")
        model, info = registry.load_version(name, version)
        return cls(model, info, f"{name}/{version.version}")

    def predict(self, images: list[bytes], metadata: Mapping[str, Any] | None = None,
                k: int = 5) -> list[dict[str, Any]]:
        """One result per image: top-k diagnoses, or an error entry for an unusable upload."""
        from pipelines.data import decode_image

        results: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory() as tmp:
            for raw in images:
                try:
                    stored = normalize_image(raw, Path(tmp), ImageLimits(store_max_side=512))
                except ImageRejected as err:
                    results.append({"error": str(err.reason), "detail": err.detail})
                    continue
                pixels = decode_image(str(stored.stored_path), int(self.info["image_size"])).numpy()[None]
                inputs: dict[str, np.ndarray] = {"image": pixels.astype(np.float32)}
                meta = metadata_for(pd.DataFrame([dict(metadata or {})]), self.info)
                if meta is not None:
                    inputs["metadata"] = meta
                probs = np.asarray(self.model.predict(inputs, verbose=0))
                results.append({"model": self.version, "top": top_k(probs, self.info["classes"], k)[0]})
        return results


def serve_http(predictor: Predictor, port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            url = urlparse(self.path)
            if url.path != "/predict":
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            meta = {k: v[0] for k, v in parse_qs(url.query).items()}
            result = predictor.predict([body], meta)[0]
            payload = json.dumps(result).encode()
            self.send_response(400 if "error" in result else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"serving {predictor.version} on http://127.0.0.1:{port}/predict", file=sys.stderr)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--age", type=float)
    parser.add_argument("--sex")
    parser.add_argument("--localization")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--http", type=int, metavar="PORT")
    args = parser.parse_args(argv)
    root = project_root()
    predictor = Predictor.champion(load_params(root), Paths(root))
    if args.http:
        serve_http(predictor, args.http)
        return
    meta = {k: getattr(args, k) for k in ("age", "sex", "localization") if getattr(args, k) is not None}
    results = predictor.predict([p.read_bytes() for p in args.images], meta, args.k)
    print(json.dumps([{"image": str(p), **r} for p, r in zip(args.images, results)], indent=2))


if __name__ == "__main__":
    main()
