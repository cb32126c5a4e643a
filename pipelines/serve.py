"""Serve the champion: top-5 diagnoses with probabilities for uploaded images.

`python -m pipelines.serve IMG [IMG ...] [--age 60 --sex male --localization back]` prints JSON;
`--http PORT` serves POST /predict (raw image bytes, metadata as query parameters) on 127.0.0.1.
A non-image upload gets a clear error, never a crash of the server; so does invalid metadata (a
non-numeric or out-of-range age, an unknown sex or site), naming the field. Inputs go through
pipelines.model_inputs, the path evaluate and the registered MLflow pyfunc use; answers carry
calibrated probabilities, readable names and `abstain` (pipelines.contract).

Bad input never ends a batch: a missing file, a directory or a non-image is reported as that
image's error entry (and one stderr line) while the others are predicted; the exit status is
non-zero when any image failed. A champion whose artifacts are gone fails with one line naming
the version and what is missing. Patient metadata (age, sex, site) is never logged: the access
log has the path without its query string, and errors quote neither metadata nor image bytes.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import traceback
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pipelines import registry, tracking
from pipelines.config import ARTIFACT_DIR, TRAIN_INFO_FILE, Paths, artifact, load_params, project_root
from pipelines.errors import RegistryError

TRAIN_INFO = artifact(TRAIN_INFO_FILE)      # logged by the train stage next to the model
QUERY = re.compile(r"\?[^\s'\"]*")           # a query string carries patient metadata


class ChampionUnavailable(RegistryError, RuntimeError):
    """The champion cannot be served (none yet, or its artifacts are gone): one line says why."""


def missing_artifacts(client: MlflowClient, name: str, version: ModelVersion) -> list[str]:
    """What serving `version` needs that its artifact store no longer has (empty: all there).

    Checked before loading so the error names the version and the file, not MLflow's
    `No such artifact: ''` from deep inside the loader. A store that cannot be listed (network)
    is named with its error rather than called empty.
    """
    def why(err: Exception) -> str:
        return f" (cannot list: {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]})"

    missing = []
    try:
        if TRAIN_INFO not in {a.path for a in client.list_artifacts(version.run_id, ARTIFACT_DIR)}:
            missing.append(f"runs:/{version.run_id}/{TRAIN_INFO}")
    except (MlflowException, OSError) as err:
        missing.append(f"runs:/{version.run_id}/{TRAIN_INFO}{why(err)}")
    model = f"the model files of models:/{name}/{version.version}"
    try:
        location = client.get_model_version_download_uri(name, version.version)
        if not mlflow.artifacts.list_artifacts(artifact_uri=location):
            missing.append(f"{model} ({location})")
    except (MlflowException, OSError) as err:
        missing.append(f"{model} ({version.source}){why(err)}")
    return missing


class Predictor:
    """The champion model with its contract (pipelines.contract), loaded once.

    Inputs go through pipelines.model_inputs, the path evaluate and the MLflow pyfunc use, and
    answers carry the calibrated probabilities, readable names and `abstain`.
    """

    def __init__(self, model: Any, info: Mapping[str, Any], version: str, contract: Any = None) -> None:
        from pipelines.contract import as_contract

        self.model, self.info, self.version = model, info, version
        self.contract = contract if contract is not None else as_contract(info)

    @classmethod
    def champion(cls, params: Mapping[str, Any], paths: Paths) -> "Predictor":
        tracking.configure(paths, params["dataset"]["name"])
        name = registry.model_name(params)
        version = registry.version_by_alias(MlflowClient(), name, registry.CHAMPION)
        if version is None:
            raise ChampionUnavailable(f"{name} has no champion yet: run the pipeline first (make demo)")
        label = f"{name} version {version.version} (champion, run {version.run_id})"
        missing = missing_artifacts(MlflowClient(), name, version)
        if missing:
            raise ChampionUnavailable(
                f"{label} cannot be served: missing or unreadable artifact(s): {'; '.join(missing)}. Restore them "
                f"or roll back (python -m pipelines.registry rollback --model {name})")
        try:
            model, info, contract = registry.load_served(name, version)
        except (MlflowException, OSError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ChampionUnavailable(f"{label} cannot be loaded: {type(err).__name__}: {first}") from err
        return cls(model, info, f"{name}/{version.version}", contract)

    def predict_one(self, image: bytes, metadata: Mapping[str, Any] | None = None, k: int = 5) -> dict[str, Any]:
        """One upload -> {"model", "label", "name", "probability", "abstain", "top": [...]}.

        Raises pipelines.model_inputs.InvalidInput (its `field`: image, age, sex, localization;
        `reason`: an ImageReason code or invalid_metadata) for an unusable upload.
        """
        from pipelines.model_inputs import diagnose

        return {"model": self.version, **diagnose(self.model, self.contract, [image], [metadata], k)[0]}

    def predict(self, images: list[bytes], metadata: Mapping[str, Any] | None = None,
                k: int = 5) -> list[dict[str, Any]]:
        """One result per image (one model call for all): an answer, or an error entry."""
        from pipelines.calibration import apply_temperature
        from pipelines.model_inputs import (InvalidInput, answers, image_pixels, metadata_matrix,
                                            predict_inputs)

        try:
            meta = metadata_matrix(self.contract, pd.DataFrame([dict(metadata or {})]))
        except InvalidInput as err:
            return [{"error": err.reason, "field": err.field, "detail": err.detail} for _ in images]
        results: list[dict[str, Any]] = [{} for _ in images]
        pixels, good = [], []
        for i, raw in enumerate(images):
            try:
                pixels.append(image_pixels(self.contract, raw))
                good.append(i)
            except InvalidInput as err:
                results[i] = {"error": err.reason, "detail": err.detail}
        if good:
            inputs = {"image": np.stack(pixels).astype(np.float32)}
            if meta is not None and meta.shape[1] > 0:
                inputs["metadata"] = np.repeat(meta, len(good), axis=0)
            probs = apply_temperature(predict_inputs(self.model, self.contract, inputs), self.contract.temperature)
            for i, answer in zip(good, answers(self.contract, probs, k)):
                results[i] = {"model": self.version, **answer}
        return results


def scrub(text: str) -> str:
    """A log line without query strings (age, sex and site travel there)."""
    return QUERY.sub("?<query removed>", text)


class PredictHandler(BaseHTTPRequestHandler):
    """POST /predict; logs method, path and status only (never the query, the body or a file name)."""

    predictor: Any = None   # set on the subclass make_server builds

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        url = urlparse(self.path)
        if url.path != "/predict":
            self.send_error(404)
            return
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            meta = {k: v[0] for k, v in parse_qs(url.query).items()}
            result = self.predictor.predict([body], meta)[0]
        except Exception as err:   # a message may quote the metadata: log where, not what
            where = traceback.extract_tb(err.__traceback__)[-1]
            self.log_message("predict failed: %s at %s:%s", type(err).__name__, Path(where.filename).name,
                             where.lineno)
            result, status = {"error": "internal_error", "detail": "see the server log"}, 500
        else:
            status = 400 if "error" in result else 200
        payload = json.dumps(result).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if getattr(self, "path", None) is None:   # an unparsable request line: scrubbed below
            self.log_message('"%s" %s %s', self.requestline, code, size)
            return
        self.log_message('"%s %s" %s %s', self.command, urlparse(self.path).path, code, size)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server naming)
        sys.stderr.write(scrub(f"{self.address_string()} - - [{self.log_date_time_string()}] "
                               f"{format % args}") + "\n")


def make_server(predictor: Any, port: int) -> ThreadingHTTPServer:
    """The HTTP server for `predictor` on 127.0.0.1:`port` (0: any free port), not yet serving."""
    handler = type("Handler", (PredictHandler,), {"predictor": predictor})
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


def serve_http(predictor: Predictor, port: int) -> None:
    server = make_server(predictor, port)
    print(f"serving {predictor.version} on http://127.0.0.1:{server.server_port}/predict", file=sys.stderr)
    server.serve_forever()


def read_image(path: Path) -> bytes | dict[str, str]:
    """The file's bytes, or an error entry saying why it cannot be read (the batch goes on)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return {"error": "not_found", "detail": "no such file"}
    except IsADirectoryError:
        return {"error": "is_a_directory", "detail": "a directory, not an image file"}
    except PermissionError:
        return {"error": "permission_denied", "detail": "not readable by this user"}
    except OSError as err:
        return {"error": "unreadable", "detail": err.strerror or type(err).__name__}


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 every image predicted, 1 some image failed, 2 no champion to serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--age", type=float)
    parser.add_argument("--sex")
    parser.add_argument("--localization")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--http", type=int, metavar="PORT")
    args = parser.parse_args(argv)
    if not args.images and not args.http:
        parser.error("give one or more image files, or --http PORT")
    root = project_root()
    inputs = [read_image(p) for p in args.images]
    results: list[dict[str, Any]] = [x if isinstance(x, dict) else {} for x in inputs]
    good = [i for i, x in enumerate(inputs) if isinstance(x, bytes)]
    if good or args.http:
        try:
            predictor = Predictor.champion(load_params(root), Paths(root))
        except ChampionUnavailable as err:
            print(f"serve: error: {err}", file=sys.stderr)
            return 2
        if args.http:
            serve_http(predictor, args.http)
            return 0
        meta = {k: getattr(args, k) for k in ("age", "sex", "localization") if getattr(args, k) is not None}
        for i, result in zip(good, predictor.predict([inputs[i] for i in good], meta, args.k)):
            results[i] = result
    for path, result in zip(args.images, results):
        if "error" in result:   # the path is named: the user needs it to find the bad file
            print(f"serve: {path}: {result['error']} ({result.get('detail', '')})", file=sys.stderr)
    print(json.dumps([{"image": str(p), **r} for p, r in zip(args.images, results)], indent=2))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
