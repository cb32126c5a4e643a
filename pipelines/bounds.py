"""Per-case bounds: the one definition of a usable case, read by intake, ingest and validate.

The numbers (image sides, pixels, age range) live in params.yaml `bounds:`; the categorical value
sets are facts of the data set and live on its adapter (`categorical_values`). Intake and ingest
apply both per case, so one impossible case is quarantined with a reason code and never reaches
the manifest; validate feeds the same numbers and sets to its row-level Great Expectations checks,
a safety net that only fires if a row slipped past ingest, next to its data-set-level checks.

Reason codes:
  too_small / too_large / decompression_bomb   an image side or pixel count outside the bounds
                                               (checked on the header, in pipelines.images)
  age_out_of_range                             a numeric age outside `bounds.age_range`
  invalid_metadata                             a non-numeric age, or a categorical value outside
                                               the adapter's set (adapter.parse_metadata)

An unknown categorical value (sex 'x', a localization the adapter does not list) is quarantined,
not mapped to 'unknown': it is a typo or a new coding scheme upstream, and quietly recoding it
would hide that while teaching the model a wrong 'unknown'. An EMPTY value is missing metadata and
does become 'unknown' (kept and encoded by pipelines.features).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from pipelines.datasets.base import Candidate
from pipelines.errors import ConfigError
from pipelines.features import UNKNOWN
from pipelines.images import ImageLimits
from pipelines.manifest import QuarantineEntry


class BoundReason(StrEnum):
    """Quarantine reasons found on the metadata of a case (image-size ones are ImageReason)."""

    AGE_OUT_OF_RANGE = "age_out_of_range"


@dataclass(frozen=True)
class CaseBounds:
    """params.yaml `bounds:`. The defaults equal params.yaml (a test keeps them so), for callers
    without a project, such as the intake CLI run with `--dataset` outside a checkout."""

    min_side: int = 8
    max_side: int = 20_000
    max_pixels: int = 40_000_000
    age_range: tuple[float, float] = (0.0, 120.0)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "CaseBounds":
        """From the whole params dict (its `bounds` section); missing keys keep the defaults.

        An unknown key is an error, so a typo (`max_sides`) cannot silently disable a bound.
        """
        section = dict(params.get("bounds") or {})
        unknown = set(section) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"params.yaml bounds: unknown key(s) {sorted(unknown)}")
        if "age_range" in section:
            low, high = section["age_range"]
            section["age_range"] = (float(low), float(high))
        for key in ("min_side", "max_side", "max_pixels"):
            if key in section:
                section[key] = int(section[key])
        bounds = cls(**section)
        if bounds.age_range[0] > bounds.age_range[1] or bounds.min_side > bounds.max_side:
            raise ConfigError(f"params.yaml bounds: empty range in {bounds}")
        return bounds

    def image_limits(self, store_max_side: int = ImageLimits.store_max_side) -> ImageLimits:
        """What pipelines.images checks on every header (plus the normalised copy's size)."""
        return ImageLimits(
            store_max_side=int(store_max_side),
            max_pixels=self.max_pixels,
            min_side=self.min_side,
            max_side=self.max_side,
        )

    def metadata_problem(self, metadata: Mapping[str, Any]) -> tuple[BoundReason, str] | None:
        """(reason, detail) for parsed metadata outside the bounds; None when it is fine.

        Only ranges are checked here: types and value sets were checked by `parse_metadata`.
        A missing age (NaN) is allowed: it is encoded as unknown, not rejected.
        """
        age = metadata.get("age")
        if isinstance(age, (int, float)) and not math.isnan(age):
            low, high = self.age_range
            if not low <= age <= high:
                detail = f"age {age:g} outside bounds.age_range [{low:g}, {high:g}]"
                return BoundReason.AGE_OUT_OF_RANGE, detail
        return None

    def suite_parameters(self, categorical_values: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        """The GE suite parameters of the row-level safety net: the same numbers and value sets.

        Categorical sets become `<column>_values`, always with the 'unknown' marker (missing
        metadata is kept and encoded, not rejected).
        """
        values: dict[str, Any] = {
            "min_side": self.min_side,
            "max_side": self.max_side,
            "max_pixels": self.max_pixels,
            "age_min": self.age_range[0],
            "age_max": self.age_range[1],
        }
        for col, allowed in categorical_values.items():
            values[f"{col}_values"] = list(dict.fromkeys([*allowed, UNKNOWN]))
        return values


def screen_candidates(
    candidates: Sequence[Candidate], bounds: CaseBounds
) -> tuple[list[Candidate], list[QuarantineEntry]]:
    """Candidates whose metadata is within the bounds, and a quarantine entry for each other one."""
    kept: list[Candidate] = []
    quarantine: list[QuarantineEntry] = []
    for cand in candidates:
        problem = bounds.metadata_problem(cand.metadata)
        if problem is None:
            kept.append(cand)
        else:
            reason, detail = problem
            quarantine.append(QuarantineEntry(cand.source_path, reason, detail, label=cand.label))
    return kept, quarantine
