"""Great Expectations checks of the manifest and of the splits: the suites, GE run, readable results.

The validate stage runs `validate_manifest`, the split stage `validate_splits`; both live here (a
library) so that neither stage imports the other.

The expectations live in `expectations/<dataset>.json` (GE ExpectationSuite JSON). They carry no
class lists or numeric bounds: those arrive at run time as GE suite parameters (`{"$PARAMETER": ...}`)
from the data set adapter (class set, categorical value sets), `params.yaml` `bounds:` (through
pipelines.bounds, the definition intake and ingest apply) and `validate:`, so a change of either
is picked up without editing a suite.

A suite file may hold expectations for derived frames too: an expectation whose `meta.batch` names
one (`class_counts`, `quarantine_rate`, `labels`) runs on that frame, everything else runs on the manifest. GE has no
"minimum rows per value" expectation, so the per-class minimum is an ordinary column expectation on
a (label, count) frame; it still appears in Data Docs as a GE result like every other check.

Great Expectations is imported lazily (4-9 s): `import pipelines.checks` stays cheap, and GE's
start-up is paid once per validation call, which builds one ephemeral context for all its batches.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.bounds import CaseBounds
from pipelines.datadocs import make_offline
from pipelines.errors import ConfigError
from pipelines.jsonsafe import json_safe
from pipelines.manifest import CORE_COLUMNS, SPLITS, TRAIN

if TYPE_CHECKING:  # pragma: no cover - typing only
    from great_expectations.data_context import AbstractDataContext

SUITE_DIR = Path(__file__).resolve().parent.parent / "expectations"
MANIFEST_BATCH = "manifest"
DOCS_SITE = "medscan"
MAX_EXAMPLES = 5

# Which column identifies a row in each frame: GE reports it next to every unexpected value, so a
# failure names the offending image, group or class rather than just a value.
ID_COLUMNS: dict[str, str] = {
    "manifest": "image_id",
    "class_counts": "label",
    "quarantine_rate": "reasons",
    "labels": "label",
    "splits": "image_id",
    "split_groups": "group_id",
    "split_classes": "label",
}

# The split contract is the same for every data set (it is about the split stage, not the source),
# so it is one suite here rather than a copy in every data set's file.
SPLIT_SUITE: dict[str, Any] = {
    "name": "splits",
    "notes": "Split stage output: one split per row, groups never straddle splits, every class trains.",
    "expectations": [
        *({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": col},
           "description": f"{col} not null"} for col in ("image_id", "group_id", "label", "split")),
        {"type": "expect_column_values_to_be_in_set",
         "kwargs": {"column": "split", "value_set": {"$PARAMETER": "split_names"}},
         "description": "split in {train, val, test}"},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "image_id"},
         "description": "image_id appears once"},
        {"type": "expect_column_values_to_be_in_set",
         "kwargs": {"column": "n_splits", "value_set": [1]},
         "description": "each group_id in exactly one split",
         "notes": "Derived frame (group_id, n_splits): a group on two sides of a split leaks into the score.",
         "meta": {"batch": "split_groups"}},
        {"type": "expect_column_values_to_be_between",
         "kwargs": {"column": "train_count", "min_value": 1},
         "description": "every class present in train",
         "notes": "Derived frame (label, train_count) over every known class.",
         "meta": {"batch": "split_classes"}},
    ],
}


@dataclass
class ValidationOutcome:
    """What a validation found, in plain data: for the stage's exit code, metrics file and log."""

    name: str
    success: bool
    results: list[dict[str, Any]]
    rows: int
    docs_index: Path | None = None
    errors: list[str] = field(default_factory=list)
    quarantine: dict[str, Any] | None = None  # offered / quarantined / rate, when it was checked

    @property
    def evaluated(self) -> int:
        return len(self.results)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if not r["success"])

    def summary(self) -> str:
        """One header line, one line per failed expectation, then the quarantine count: readable
        without Data Docs."""
        state = "passed" if self.success else "FAILED"
        lines = [f"validation {self.name}: {state} ({self.failed} of {self.evaluated} expectations "
                 f"failed, {self.rows} rows)"]
        lines += [_describe_failure(r) for r in self.results if not r["success"]]
        if self.quarantine:
            q = self.quarantine
            lines.append(f"quarantined {q['quarantined']} of {q['offered']} offered cases "
                         f"({100 * q['rate']:.2f}%: {q['reasons']}); see data/quarantine.csv")
        if self.docs_index is not None:
            lines.append(f"Data Docs: {self.docs_index}")
        return "\n".join(lines)

    def to_metrics(self) -> dict[str, Any]:
        """The DVC metrics document: numeric top-level fields first, details below."""
        return {
            "success": self.success,
            "evaluated": self.evaluated,
            "failed": self.failed,
            "passed": self.evaluated - self.failed,
            "rows": self.rows,
            **({"quarantine_rate": self.quarantine["rate"], "quarantined": self.quarantine["quarantined"]}
               if self.quarantine else {}),
            "suite": self.name,
            "expectations": self.results,
        }


# --------------------------------------------------------------------------------------------
# Suites


def load_suite(dataset_name: str, suite_dir: Path | None = None) -> dict[str, Any]:
    """Read `<suite_dir>/<dataset_name>.json`; a missing file names the data set it was for."""
    path = (suite_dir or SUITE_DIR) / f"{dataset_name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no expectation suite for data set {dataset_name!r}: {path}")
    suite = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(suite.get("expectations"), list) or not suite["expectations"]:
        raise ConfigError(f"{path}: an ExpectationSuite JSON with a non-empty 'expectations' list is expected")
    return suite


def suite_parameter_names(suite: Mapping[str, Any]) -> set[str]:
    """Every `$PARAMETER` name the suite's expectations refer to."""
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            if "$PARAMETER" in value:
                names.add(str(value["$PARAMETER"]))
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for exp in suite["expectations"]:
        walk(exp.get("kwargs", {}))
    return names


# Moved to params.yaml `bounds:` (one definition for intake, ingest and validate).
MOVED_TO_BOUNDS = frozenset({"min_side", "max_side", "max_pixels", "age_range"})
# Quarantine reasons that lose nothing: an encoding note (rows kept) and an exact copy of a kept
# image. They are listed in data/quarantine.csv but do not count towards the quarantine rate.
NOT_LOST_REASONS = frozenset({"wrong_encoding", "duplicate"})


def manifest_parameters(classes: Sequence[str], categorical_values: Mapping[str, Sequence[str]],
                        params: Mapping[str, Any], labels: Sequence[str] | None = None,
                        bounds: CaseBounds = CaseBounds()) -> dict[str, Any]:
    """Suite parameters for a manifest suite, from the adapter, `bounds:` and `validate:`.

    Bounds and categorical value sets come from `CaseBounds.suite_parameters`, the same
    definition intake and ingest apply per case.
    """
    moved = sorted(MOVED_TO_BOUNDS & set(params))
    if moved:
        raise ConfigError(f"params.yaml validate: {moved} moved to the `bounds:` section (one definition)")
    return {
        "classes": list(classes),
        "expected_classes": expected_classes(classes, labels, params),
        "core_columns": list(CORE_COLUMNS),
        "min_images_per_class": params["min_images_per_class"],
        "max_quarantine_rate": float(params["max_quarantine_rate"]),
        **bounds.suite_parameters(categorical_values),
    }


def expected_classes(classes: Sequence[str], labels: Sequence[str] | None,
                     params: Mapping[str, Any]) -> list[str]:
    """The classes that must each have enough images: every known class by default; only those
    present (labels.json) when `validate.require_all_classes` is false, for subset copies such as
    a DermNet extract with 3 of its 23 classes. Unknown labels still fail the class-set check."""
    if params.get("require_all_classes", True) or labels is None:
        return list(classes)
    present = set(labels)
    return [c for c in classes if c in present]


# --------------------------------------------------------------------------------------------
# Derived frames


def class_counts(df: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """(label, count) with one row per known class, zero for a class the manifest lacks."""
    counts = df["label"].value_counts() if "label" in df.columns else pd.Series(dtype="int64")
    frame = pd.DataFrame({"label": list(classes)})
    frame["count"] = [int(counts.get(c, 0)) for c in classes]
    return frame


def quarantine_rate(manifest_rows: int, quarantine: pd.DataFrame) -> pd.DataFrame:
    """One row (offered, quarantined, rate, reasons): the share of offered cases ingest kept out.

    Offered = accepted (manifest rows) + quarantined; reasons in NOT_LOST_REASONS are not counted.
    """
    reasons = quarantine["reason"] if "reason" in quarantine.columns else pd.Series(dtype=str)
    lost = reasons[~reasons.isin(NOT_LOST_REASONS)]
    offered = manifest_rows + len(lost)
    counts = ", ".join(f"{k}={v}" for k, v in sorted(lost.value_counts().items())) or "none"
    return pd.DataFrame({
        "offered": [offered],
        "quarantined": [len(lost)],
        "rate": [len(lost) / offered if offered else 0.0],
        "reasons": [counts],
    })


def group_split_counts(splits_df: pd.DataFrame) -> pd.DataFrame:
    """(group_id, n_splits): how many distinct splits each group's images landed in."""
    counts = splits_df.groupby("group_id", dropna=True)["split"].nunique()
    return pd.DataFrame({"group_id": counts.index.astype(str), "n_splits": counts.to_numpy(dtype="int64")})


def train_class_counts(splits_df: pd.DataFrame, classes: Iterable[str] | None = None) -> pd.DataFrame:
    """(label, train_count) over the known classes and every label the frame holds."""
    labels = [str(v) for v in splits_df["label"].dropna().unique()]
    known = list(dict.fromkeys([*(classes or ()), *sorted(labels)]))
    train = splits_df.loc[splits_df["split"] == TRAIN, "label"].value_counts()
    return pd.DataFrame({"label": known, "train_count": [int(train.get(c, 0)) for c in known]})


# --------------------------------------------------------------------------------------------
# Great Expectations


class _GX:
    """One ephemeral GE context per run: suites, validations and (optionally) Data Docs."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._gx = gx
        self.context: AbstractDataContext = gx.get_context(mode="ephemeral")
        # Progress bars would go to stderr on every metric: DVC logs want the summary only.
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.source = self.context.data_sources.add_pandas("medscan")

    def _build_suite(self, name: str, expectations: list[dict[str, Any]], notes: Any) -> Any:
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        built = []
        for i, exp in enumerate(expectations):
            try:  # ExpectationSuite(**json) logs and skips a bad expectation: fail loudly instead
                built.append(ExpectationConfiguration(**exp).to_domain_obj())
            except Exception as err:
                raise ConfigError(f"suite {name}: expectation {i} ({exp.get('type')}) is invalid: {err}") from err
        return self.context.suites.add(self._gx.ExpectationSuite(name=name, expectations=built, notes=notes))

    def validate(self, suite: Mapping[str, Any], frames: Mapping[str, pd.DataFrame],
                 parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run the suite's expectations, each on the frame its `meta.batch` names; results in file order."""
        missing = suite_parameter_names(suite) - set(parameters)
        if missing:
            raise ConfigError(f"suite {suite['name']} needs parameters nobody supplied: {sorted(missing)}")
        by_batch: dict[str, list[dict[str, Any]]] = {}
        for exp in suite["expectations"]:
            by_batch.setdefault((exp.get("meta") or {}).get("batch", _default_batch(frames)), []).append(exp)
        unknown = set(by_batch) - set(frames)
        if unknown:
            raise ConfigError(f"suite {suite['name']} names batches with no frame: {sorted(unknown)}")
        results: list[dict[str, Any]] = []
        for batch, exps in by_batch.items():
            frame = frames[batch]
            gx_suite = self._build_suite(f"{suite['name']}.{batch}", exps, suite.get("notes"))
            order = {e.id: i for i, e in enumerate(gx_suite.expectations)}
            asset = self.source.add_dataframe_asset(f"{suite['name']}.{batch}")
            definition = self.context.validation_definitions.add(self._gx.ValidationDefinition(
                name=f"{suite['name']}.{batch}",
                data=asset.add_batch_definition_whole_dataframe("whole"),
                suite=gx_suite,
            ))
            result_format: dict[str, Any] = {"result_format": "SUMMARY"}
            id_col = ID_COLUMNS.get(batch)
            if id_col in frame.columns:
                result_format["unexpected_index_column_names"] = [id_col]
            run = definition.run(batch_parameters={"dataframe": frame},
                                 expectation_parameters=dict(parameters), result_format=result_format)
            ordered = sorted(run.results, key=lambda r: order.get(r.expectation_config.id, len(order)))
            results += [_result_dict(batch, r.to_json_dict()) for r in ordered]
        return results

    def build_docs(self, docs_dir: Path) -> Path:
        """Write GE's static Data Docs site (suites + this run's results) to `docs_dir`."""
        docs_dir = Path(docs_dir).resolve()
        if docs_dir.exists():  # the site is regenerated from this run only: drop stale result pages
            shutil.rmtree(docs_dir)
        docs_dir.mkdir(parents=True)
        # Replace the ephemeral default site (a temp dir) so exactly one site is built, ours.
        self.context.variables.data_docs_sites = {DOCS_SITE: {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }}
        self.context.build_data_docs(site_names=[DOCS_SITE])
        index = docs_dir / "index.html"
        if not index.is_file():
            raise RuntimeError(f"GE built no Data Docs index at {index}")
        make_offline(docs_dir)  # GE's pages load CDN assets: point them at vendored copies
        return index


def _default_batch(frames: Mapping[str, pd.DataFrame]) -> str:
    """Expectations without `meta.batch` run on the main frame: the first one given."""
    return next(iter(frames))


def _result_dict(batch: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten one GE result into the JSON-safe record kept in validation.json and the summary."""
    config = raw.get("expectation_config") or {}
    kwargs = config.get("kwargs") or {}
    result = raw.get("result") or {}
    examples = (result.get("partial_unexpected_index_list")
                or result.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]
    mismatched = (result.get("details") or {}).get("mismatched") or {}
    missing = result.get("partial_missing_list") or mismatched.get("missing")
    return json_safe({
        "batch": batch,
        "expectation": config.get("type"),
        "title": config.get("description") or f"{config.get('type')} {kwargs.get('column', '')}".strip(),
        "column": kwargs.get("column"),
        "success": bool(raw.get("success")),
        "element_count": result.get("element_count"),
        "unexpected_count": result.get("unexpected_count"),
        "unexpected_percent": result.get("unexpected_percent"),
        "observed_value": result.get("observed_value"),
        "missing": list(missing) if missing else None,
        "examples": list(examples),
        "error": _exception_message(raw.get("exception_info")),
    })


def _exception_message(info: Any) -> str | None:
    """GE reports exceptions flat or keyed by metric id; return the first message, if any."""
    if not isinstance(info, Mapping):
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info.get("raised_exception") else None
    for sub in info.values():
        message = _exception_message(sub)
        if message:
            return message
    return None


def _short(value: Any, limit: int = 24) -> str:
    """repr, cut to `limit` characters so a sha256 does not swamp the line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _format_example(example: Any, value_column: str | None) -> str:
    """`'foo' (image_id=b)` for an indexed example, `'foo'` for a bare value."""
    if not isinstance(example, Mapping):
        return _short(example)
    if value_column in example:
        ids = ", ".join(f"{k}={v}" for k, v in example.items() if k != value_column)
        value = _short(example[value_column])
        return f"{value} ({ids})" if ids else value
    return ", ".join(f"{k}={v}" for k, v in example.items())


def _describe_failure(r: Mapping[str, Any]) -> str:
    """One readable line per failed expectation: what was unexpected, what was missing."""
    if r.get("error"):
        return f"ERROR {r['title']}: {r['error'].splitlines()[0][:200]}"
    parts: list[str] = []
    if r.get("unexpected_count"):
        shown = ", ".join(_format_example(e, r.get("column")) for e in r.get("examples", [])[:3])
        parts.append(f"{r['unexpected_count']} unexpected" + (f" (e.g. {shown})" if shown else ""))
    if r.get("missing"):
        parts.append(f"missing {r['missing']}")
    if not parts:
        parts.append(f"observed {str(r.get('observed_value'))[:200]}")
    return f"FAIL {r['title']}: " + "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Public API


def validate_manifest(df: pd.DataFrame, dataset_name: str, classes: Sequence[str],
                      categorical_values: Mapping[str, Sequence[str]], params: Mapping[str, Any], *,
                      labels: Sequence[str] | None = None, suite_dir: Path | None = None,
                      docs_dir: Path | None = None, bounds: CaseBounds = CaseBounds(),
                      quarantine: pd.DataFrame | None = None) -> ValidationOutcome:
    """Validate a manifest against `expectations/<dataset_name>.json`.

    `classes` and `categorical_values` come from the data set adapter, `params` is params.yaml's
    `validate:` section, `bounds` its `bounds:` section. `labels` (labels.json) feeds the suite's
    `labels` batch and `quarantine` (data/quarantine.csv) its `quarantine_rate` batch; without
    them those expectations are left out, not faked. With `docs_dir`, GE Data Docs are written there.
    """
    suite = load_suite(dataset_name, suite_dir)
    expected = expected_classes(classes, labels, params)
    frames: dict[str, pd.DataFrame] = {MANIFEST_BATCH: df, "class_counts": class_counts(df, expected)}
    if labels is not None:
        frames["labels"] = pd.DataFrame({"label": [str(v) for v in labels]})
    if quarantine is not None:
        frames["quarantine_rate"] = quarantine_rate(len(df), quarantine)
    absent = {"labels", "quarantine_rate"} - set(frames)
    suite = {**suite, "expectations": [e for e in suite["expectations"]
                                       if (e.get("meta") or {}).get("batch") not in absent]}
    gx_run = _GX()
    results = gx_run.validate(
        suite, frames, manifest_parameters(classes, categorical_values, params, labels, bounds))
    index = gx_run.build_docs(docs_dir) if docs_dir is not None else None
    rate = frames.get("quarantine_rate")
    return ValidationOutcome(name=dataset_name, success=all(r["success"] for r in results),
                             results=results, rows=len(df), docs_index=index,
                             quarantine=None if rate is None else json_safe(rate.iloc[0].to_dict()))


def validate_splits(splits_df: pd.DataFrame, classes: Sequence[str] | None = None, *,
                    docs_dir: Path | None = None) -> ValidationOutcome:
    """Validate the split stage's (image_id, group_id, label, split) frame.

    No group on two sides of a split, split names in {train, val, test}, every class in train
    (`classes` adds classes the frame may lack entirely; the frame's own labels always count).
    """
    frames = {
        "splits": splits_df,
        "split_groups": group_split_counts(splits_df),
        "split_classes": train_class_counts(splits_df, classes),
    }
    gx_run = _GX()
    results = gx_run.validate(SPLIT_SUITE, frames, {"split_names": list(SPLITS)})
    index = gx_run.build_docs(docs_dir) if docs_dir is not None else None
    return ValidationOutcome(name="splits", success=all(r["success"] for r in results),
                             results=results, rows=len(splits_df), docs_index=index)
