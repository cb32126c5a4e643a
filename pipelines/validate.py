"""Validate stage: the manifest checked with Great Expectations 1.x (suites in pipelines.checks).

The stage's job is the data set as a whole: schema, class set, minimum images per class, and the
share of offered cases that ingest quarantined (`validate.max_quarantine_rate`). A single bad case
is quarantined by intake/ingest with its reason and never reaches the manifest, so it cannot fail
this stage; the row-level bound checks stay as a safety net for a manifest that bypassed ingest.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines import dvc_metrics
from pipelines.bounds import CaseBounds
from pipelines.checks import ValidationOutcome, validate_manifest
from pipelines.cli import exits_on_error, setup_logging
from pipelines.config import Paths, load_params, project_root
from pipelines.errors import DataError
from pipelines.manifest import read_labels, read_manifest, read_quarantine

log = logging.getLogger(__name__)


def run(paths: Paths, params: Mapping[str, Any], classes: Sequence[str] | None = None,
        categorical_values: Mapping[str, Sequence[str]] | None = None) -> ValidationOutcome:
    """The stage: manifest, labels and quarantine in, validation.json + Data Docs out. A failed
    validation is a result (written, returned); `main` turns it into exit status 1.

    Class set and value sets default to the data set adapter (the single source of truth); tests
    pass them in so they need no adapter.
    """
    name = params["dataset"]["name"]
    if classes is None or categorical_values is None:
        from pipelines.datasets import get_adapter  # only at run time: adapters may be absent in tests

        adapter = get_adapter(name)
        classes = adapter.classes if classes is None else classes
        categorical_values = adapter.categorical_values if categorical_values is None else categorical_values
    outcome = validate_manifest(
        read_manifest(paths.manifest), name, classes, categorical_values, params["validate"],
        labels=read_labels(paths.labels), suite_dir=paths.expectations, docs_dir=paths.data_docs,
        bounds=CaseBounds.from_params(params), quarantine=read_quarantine(paths.quarantine),
    )
    paths.validation.parent.mkdir(parents=True, exist_ok=True)
    paths.validation.write_text(json.dumps(outcome.to_metrics(), indent=2, default=str) + "\n",
                                encoding="utf-8")
    dvc_metrics.write(paths.stage_metrics("validate"), dvc_metrics.validation(outcome.to_metrics()))
    return outcome


def main(root: Path | None = None, classes: Sequence[str] | None = None,
         categorical_values: Mapping[str, Sequence[str]] | None = None) -> ValidationOutcome:
    """`python -m pipelines.validate`: exits 1 with the readable summary when validation fails."""
    setup_logging()
    root = root or project_root()
    with exits_on_error("validate"):
        outcome = run(Paths(root), load_params(root), classes, categorical_values)
        if not outcome.success:
            raise DataError(outcome.summary())
    log.info("%s", outcome.summary())
    return outcome


if __name__ == "__main__":
    main()
