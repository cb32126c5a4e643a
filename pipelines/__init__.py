"""Medscan: labelled medical images in, validated, compared and promoted classifiers out.

Importing the package turns off every library's usage telemetry for this process and the
processes it starts (a hospital will not run a tool that phones home by default). Every entry
point imports this package first: the stages (`python -m pipelines.X`), the DAG, the CLI tools.
`.dvc/config` (`core.analytics = false`) and the Makefile cover `dvc` and `mlflow` run directly.
A user who sets one of these variables keeps their own value.
"""
from __future__ import annotations

import os

# Each switch is the library's documented opt-out: MLflow 3 (MLFLOW_DISABLE_TELEMETRY and the
# DO_NOT_TRACK convention), DVC (DVC_NO_ANALYTICS), Great Expectations (GX_ANALYTICS_ENABLED).
TELEMETRY_OFF: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}

for _name, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_name, _value)

# A process that DVC runs as a stage command (DVC sets DVC_STAGE in its environment) dies with its
# `dvc repro`, ends interrupted MLflow runs KILLED and redacts credentials from its log records.
if "DVC_STAGE" in os.environ:
    from pipelines import lifecycle

    lifecycle.install()
