"""Patient metadata as model input: one encoding shared by training, evaluation and serving.

age -> age/100 plus a missing flag; sex and localization -> one-hot over the adapter's value set
plus an 'unknown' slot, so missing or unseen values are encoded rather than dropped.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

UNKNOWN = "unknown"


def metadata_layout(metadata_columns: Sequence[str],
                    categorical_values: Mapping[str, Sequence[str]]) -> list[str]:
    """Names of the encoded features, in order; empty when the data set has no metadata."""
    names: list[str] = []
    for col in metadata_columns:
        if col == "age":
            names += ["age", "age_missing"]
        else:
            values = [v for v in categorical_values.get(col, ()) if v != UNKNOWN]
            names += [f"{col}={v}" for v in values] + [f"{col}={UNKNOWN}"]
    return names


def encode_metadata(frame: pd.DataFrame, metadata_columns: Sequence[str],
                    categorical_values: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Encode the frame's metadata as float32 [n, len(metadata_layout(...))]."""
    blocks: list[np.ndarray] = []
    n = len(frame)
    for col in metadata_columns:
        raw = frame[col] if col in frame else pd.Series([None] * n, index=frame.index)
        if col == "age":
            age = pd.to_numeric(raw, errors="coerce")
            blocks.append(np.stack([age.fillna(0).to_numpy() / 100.0, age.isna().to_numpy()], 1))
        else:
            values = [v for v in categorical_values.get(col, ()) if v != UNKNOWN]
            text = raw.fillna(UNKNOWN).astype(str).str.strip().str.lower()
            codes = pd.Categorical(text, categories=[v.lower() for v in values]).codes
            codes = np.where(codes < 0, len(values), codes)  # unseen or missing -> 'unknown' slot
            blocks.append(np.eye(len(values) + 1, dtype=np.float32)[codes])
    if not blocks:
        return np.zeros((n, 0), np.float32)
    return np.concatenate(blocks, axis=1).astype(np.float32)
