"""One JSON sanitiser for every report the project writes (metrics, bootstrap, compare, GE results).

numpy scalars and arrays become Python types and NaN/inf become None, so every file is strict JSON
(`json.dumps(..., allow_nan=False)` passes) whichever library produced the numbers. Kept apart from
pipelines.metrics so that writing a validation report does not import scikit-learn.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays into Python types and NaN/inf into None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    return value
