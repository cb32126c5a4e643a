"""Medscan: labelled medical images in, validated, compared and promoted classifiers out.

Importing the package turns off every library's usage telemetry for this process and the
processes it starts (a hospital will not run a tool that phones home by default), and keeps
TensorFlow's start-up notices out of the output (pipelines.quiet). Every entry
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

# TensorFlow's C++ INFO/WARNING lines (GPU probing, CPU feature notes) stay out of every stage's
# output; errors still show. Its two start-up notices ignore this switch: pipelines.quiet
# filters them from the first `import tensorflow` without turning oneDNN off.
QUIET: dict[str, str] = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
}

for _name, _value in {**TELEMETRY_OFF, **QUIET}.items():
    os.environ.setdefault(_name, _value)

from pipelines import quiet as _quiet  # noqa: E402  (stdlib only: cheap for stages without TF)

_quiet.install()

# A process that DVC runs as a stage command (DVC sets DVC_STAGE in its environment) dies with its
# `dvc repro`, ends interrupted MLflow runs KILLED and redacts credentials from its log records.
if "DVC_STAGE" in os.environ:
    from pipelines import lifecycle

    lifecycle.install()
