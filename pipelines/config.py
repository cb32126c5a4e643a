"""Where every stage reads and writes, and how params.yaml is loaded: the single source of truth.

Stages run with the project root as the working directory (DVC does that); tests pass a root.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"
# Candidates assembled from other candidates' models and metrics (pipelines/assemble.py). They live
# under derived/ so that their DVC stage can depend on the whole models/ and metrics/ folders
# without a cycle (a stage cannot depend on a folder holding its own output).
ENSEMBLE = "ensemble"
DERIVED: tuple[str, ...] = (ENSEMBLE,)
# data/intake: accepted intake cases (layout in pipelines/cases.py); also the source-path prefix of
# those cases in the manifest.
INTAKE_DIR = "intake"
LOCK_FILE = "dvc.lock"
COMPARE_MD, COMPARE_HTML, COMPARE_JSON = "compare.md", "compare.html", "compare.json"
# One candidate's model folder (Paths.model_dir). A registered version carries the same files under
# the MLflow artifact folder ARTIFACT_DIR (`artifact(name)`), so local and registry readers agree.
MODEL_FILE = "model.keras"
TRAIN_INFO_FILE = "train_info.json"
HISTORY_FILE = "history.json"
CONTRACT_FILE = "contract.json"
FINGERPRINT_FILE = "train_fingerprint.json"
SKIPPED_FILE = "skipped.json"
ARTIFACT_DIR = "medscan"
# The PNGs evaluate draws per candidate (plots/<arch>/<name>.png) and compare shows, in report order.
PLOT_NAMES: tuple[str, ...] = ("learning_curves", "confusion_matrix", "roc", "reliability", "gradcam")


@dataclass(frozen=True)
class Paths:
    """On-disk contract between stages (see README, 'Stages and files')."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def images(self) -> Path:
        """Content-addressed, normalised RGB copies: data/images/<sha256>.png (one DVC dir output)."""
        return self.data / "images"

    @property
    def ingest_cache(self) -> Path:
        """Normalised copies by sha256 and normalisation digest (git-ignored, not a DVC output):
        what lets ingest decode only new images. See pipelines/image_cache.py."""
        return self.root / ".cache" / "ingest"

    @property
    def intake(self) -> Path:
        """Cases accepted by intake (images/, cases.csv, quarantine.csv), merged by ingest."""
        return self.data / INTAKE_DIR

    @property
    def manifest(self) -> Path:
        return self.data / "manifest.parquet"

    @property
    def quarantine(self) -> Path:
        return self.data / "quarantine.csv"

    @property
    def ignored(self) -> Path:
        """What the source holds that is not a case (unread folders, FIFOs, extra frames), with reasons."""
        return self.data / "ignored.csv"

    @property
    def labels(self) -> Path:
        """Ordered class list of the active data set: index i is the model's output i."""
        return self.data / "labels.json"

    @property
    def splits(self) -> Path:
        return self.data / "splits.parquet"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def validation(self) -> Path:
        return self.reports / "validation.json"

    @property
    def expectations(self) -> Path:
        """Great Expectations suites, one JSON file per data set (pipelines.checks)."""
        return self.root / "expectations"

    @property
    def data_docs(self) -> Path:
        return self.reports / "data_docs"

    @property
    def split_report(self) -> Path:
        return self.reports / "split_report.json"

    @property
    def compare_dir(self) -> Path:
        """compare.md / compare.html / compare.json: the side-by-side report."""
        return self.reports / "compare"

    @property
    def compare_json(self) -> Path:
        """The comparison as data (ranking, best candidate): what promote and the summary read."""
        return self.compare_dir / COMPARE_JSON

    @property
    def dvc_lock(self) -> Path:
        """What DVC recorded of the last run (promote's lineage, the DAG's first-run check)."""
        return self.root / LOCK_FILE

    @property
    def promotion(self) -> Path:
        """The promote stage's verdict (blessed or not and why, every gate number, the lineage): the
        DAG's run outcome and asset, and what the demo's summary explains."""
        return self.reports / "promotion.json"

    def _candidates(self, arch: str) -> Path:
        return self.root / "derived" if arch in DERIVED else self.root

    def model_dir(self, arch: str) -> Path:
        return self._candidates(arch) / "models" / arch

    def model_file(self, arch: str) -> Path:
        return self.model_dir(arch) / MODEL_FILE

    def train_info(self, arch: str) -> Path:
        """How the candidate was trained (classes, image size, run id, split sizes, ...)."""
        return self.model_dir(arch) / TRAIN_INFO_FILE

    def history(self, arch: str) -> Path:
        """Keras' per-epoch history (the learning curves evaluate plots)."""
        return self.model_dir(arch) / HISTORY_FILE

    def contract(self, arch: str) -> Path:
        """What the model expects as input (pipelines.contract)."""
        return self.model_dir(arch) / CONTRACT_FILE

    def train_fingerprint(self, arch: str) -> Path:
        """sha256 of every image the model trained or early-stopped on (train + val): the gate
        excludes them from the images it compares champion and challenger on."""
        return self.model_dir(arch) / FINGERPRINT_FILE

    def skipped(self, arch: str) -> Path:
        """Written instead of a model by a candidate that did not train (a warm start with no
        champion): evaluate then writes {"skipped": reason, "arch": arch} as its metrics."""
        return self.model_dir(arch) / SKIPPED_FILE

    def metrics_file(self, arch: str) -> Path:
        """The architecture's headline numbers (DVC metrics: what `dvc metrics show` prints)."""
        return self._candidates(arch) / "metrics" / f"{arch}.json"

    def eval_report(self, arch: str) -> Path:
        """The full evaluation report of one architecture (plain output; compare and promote read it)."""
        return self._candidates(arch) / "reports" / "evaluate" / f"{arch}.json"

    def test_probabilities(self, arch: str) -> Path:
        """evaluate's test-split class probabilities (one row per image, keyed by `path`): promote
        reuses them for the challenger instead of scoring the same images again."""
        return self._candidates(arch) / "reports" / "evaluate" / f"{arch}.test.parquet"

    def stage_metrics(self, stage: str) -> Path:
        """A stage's few headline numbers (DVC metrics); its full report stays a plain output."""
        return self.root / "metrics" / f"{stage}.json"

    def plots_dir(self, arch: str) -> Path:
        return self.root / "plots" / arch

    def plot(self, arch: str, name: str) -> Path:
        """One of the candidate's PNGs (PLOT_NAMES)."""
        if name not in PLOT_NAMES:
            raise ValueError(f"unknown plot {name!r}; known: {PLOT_NAMES}")
        return self.plots_dir(arch) / plot_file(name)

    def plot_data(self, kind: str, arch: str) -> Path:
        """Data of one DVC plot kind (confusion, roc, learning_curves, calibration) per
        architecture: one folder per kind, so dvc.yaml's top-level `plots:` gives each kind its
        template and x/y once, whatever `architectures` lists."""
        return self.root / "plots" / "dvc" / kind / f"{arch}.csv"

    @property
    def webapp_state(self) -> Path:
        """The clinician app's private state (git-ignored): users.sqlite, the session key, the
        generated first-admin password and the audit log, all created with 0600 permissions."""
        return self.root / ".medscan-app"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"


def plot_file(name: str) -> str:
    return f"{name}.png"


def artifact(name: str) -> str:
    """Where a model-folder file sits among a registered version's MLflow artifacts."""
    return f"{ARTIFACT_DIR}/{name}"


def project_root() -> Path:
    """The project checkout: MEDSCAN_ROOT if set, else the working directory."""
    return Path(os.environ.get("MEDSCAN_ROOT", os.getcwd())).resolve()


def candidates(params: Mapping[str, Any]) -> list[str]:
    """What compare ranks and promote may pick: the trained `architectures`, then each derived
    candidate that params.yaml configures (a section of its name, e.g. `ensemble:`)."""
    return [*(params.get("architectures") or []), *(d for d in DERIVED if d in params)]


def load_params(root: Path | None = None) -> dict[str, Any]:
    with open((root or project_root()) / PARAMS_FILE, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def resolve(root: Path, maybe_relative: str | Path) -> Path:
    """Params hold paths relative to the project root; absolute ones pass through."""
    p = Path(maybe_relative).expanduser()
    return p if p.is_absolute() else (root / p).resolve()
