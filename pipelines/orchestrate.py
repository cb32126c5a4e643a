"""What the Airflow retrain DAG's tasks do, as plain functions (no Airflow import: testable alone).

Every task works in one project checkout (`root`): intake new cases, decide whether to retrain,
run one DVC stage with `dvc repro --single-item`, commit dvc.lock and push the data, read the
promotion outcome. Stage logic lives in the stage modules and dvc.yaml only; this module just
runs DVC the way a person would, under a per-checkout lock so that parallel Airflow tasks (the
`train@*` items) never race for DVC's repository lock.

Failures are raised as `TransientFailure` (worth retrying: a lock, the network, a killed
process) or `StageFailed` (the command itself failed: retrying gives the same answer), so the
DAG's retry policy can tell them apart.

Nothing here logs, raises or returns a credential: command lines, their output, error messages
and the dicts handed to XCom go through `pipelines.redact` (MEDSCAN_GIT_PUSH may carry a token).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import PARAMS_FILE, Paths, resolve
from pipelines.cases import LABELS_FILE, ensure_intake_dir
from pipelines.redact import redact, redact_value

log = logging.getLogger(__name__)

DEFAULT_SCHEDULE = "0 3 * * 1"        # Mondays 03:00 UTC: the weekly forced retrain
DEFAULT_WATCH_SCHEDULE = "*/10 * * * *"   # how often the drop-folder watcher looks
DEFAULT_DROP_FOLDER = "incoming"
LOCK_NAME = "medscan-orchestrate.lock"
FORCED_RUN_TYPES = frozenset({"scheduled", "backfill"})
TAIL_CHARS = 4000
# Output that means "try again later", not "the stage is wrong" (matched case-insensitively).
TRANSIENT_MARKERS = (
    "unable to acquire lock", "lock is held", "connection refused", "connection reset",
    "connection aborted", "timed out", "timeout", "temporary failure", "name or service not known",
    "could not connect", "endpointconnectionerror", "max retries exceeded", "slowdown",
    "serviceunavailable", "service unavailable", "throttl", "remote end closed", "broken pipe",
)


class _RedactedError(RuntimeError):
    """An error whose message is redacted when raised: it ends up in task logs and the UI."""

    def __init__(self, message: object = "") -> None:
        super().__init__(redact(message))


class StageFailed(_RedactedError):
    """A command failed in a way a retry will not fix (bad data, a bug, a failed validation)."""


class TransientFailure(_RedactedError):
    """A command failed for a reason that may pass: lock contention, network, a killed process."""


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class Settings:
    """Where one data set's retraining runs and what triggers it (params.yaml + environment)."""

    root: Path
    dataset: str
    schedule: str
    watch_schedule: str | None
    drop_folder: Path
    s3_prefix: str | None
    s3_endpoint_url: str | None


def load_settings(root: Path, env: Mapping[str, str] | None = None, *, primary: bool = True) -> Settings:
    """Read params.yaml's `orchestration:` section (all optional) and, for the primary checkout,
    the MEDSCAN_DROP / MEDSCAN_S3_PREFIX / MEDSCAN_S3_ENDPOINT_URL overrides."""
    env = os.environ if env is None else env
    root = Path(root).resolve()
    params = yaml.safe_load((root / PARAMS_FILE).read_text(encoding="utf-8")) or {}
    orch = params.get("orchestration") or {}
    over = env if primary else {}
    watch = orch.get("watch_schedule", DEFAULT_WATCH_SCHEDULE)
    return Settings(
        root=root,
        dataset=str(params["dataset"]["name"]),
        schedule=str(orch.get("schedule") or DEFAULT_SCHEDULE),
        watch_schedule=str(watch) if watch else None,
        drop_folder=resolve(root, over.get("MEDSCAN_DROP") or orch.get("drop_folder") or DEFAULT_DROP_FOLDER),
        s3_prefix=over.get("MEDSCAN_S3_PREFIX") or orch.get("s3_prefix") or None,
        s3_endpoint_url=over.get("MEDSCAN_S3_ENDPOINT_URL") or orch.get("s3_endpoint_url") or None,
    )


def checkouts(root: Path) -> list[Path]:
    """The primary checkout, then `orchestration.checkouts` (one checkout per further data set).

    A DVC checkout has one params.yaml, hence one active data set; another data set is retrained
    in its own checkout (e.g. `git worktree add ../medscan-malaria`, dataset.name: malaria there).
    """
    root = Path(root).resolve()
    params = yaml.safe_load((root / PARAMS_FILE).read_text(encoding="utf-8")) or {}
    extra = (params.get("orchestration") or {}).get("checkouts") or []
    found = [root]
    for item in extra:
        path = resolve(root, item)
        if path not in found:
            found.append(path)
    return found


# ---------------------------------------------------------------- running commands in the checkout

@contextmanager
def checkout_lock(root: Path) -> Iterator[None]:
    """One DVC/git writer per checkout at a time: parallel tasks queue here instead of failing
    on DVC's own lock. (Scale-out keeps one checkout per worker queue; see docs/scale-out.md.)"""
    lock_dir = Path(root) / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / LOCK_NAME, "a+", encoding="utf-8") as fh:
        started = time.monotonic()
        fcntl.flock(fh, fcntl.LOCK_EX)
        waited = time.monotonic() - started
        if waited > 1:
            log.info("waited %.0f s for the checkout lock", waited)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def command_env(root: Path) -> dict[str, str]:
    """This interpreter's bin first on PATH (dvc.yaml runs `python -m ...`), MEDSCAN_ROOT set."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MEDSCAN_ROOT"] = str(root)
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    env.setdefault("GIT_TERMINAL_PROMPT", "0")   # a failing push must fail, never wait for a password
    return env


def run_command(cmd: Sequence[str], root: Path) -> tuple[int, str]:
    """Run `cmd` in the checkout, streaming its output to the log; returns (code, output).

    The command line and every output line are redacted before they are logged or returned.
    """
    log.info("$ %s", redact(" ".join(cmd)))
    proc = subprocess.Popen(list(cmd), cwd=root, env=command_env(root), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = redact(line)
            lines.append(line)
            log.info("%s", line.rstrip())
        code = proc.wait()
    except BaseException:
        # Airflow's execution timeout and SIGTERM arrive as exceptions here: stop the child too.
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return code, "".join(lines)


def is_transient(code: int, output: str) -> bool:
    """A signal (OOM killer, SIGTERM) or a lock/network message: the next try may succeed."""
    if code < 0 or code in (137, 143):
        return True
    low = output.lower()
    return any(marker in low for marker in TRANSIENT_MARKERS)


# A Python exception's last line ("botocore.exceptions.ClientError: ..."): `dvc repro` prints its own
# "failed to reproduce" line after the stage's traceback, which names no cause.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failure|Failed|Busy)\b: ")


def _cause(lines: Sequence[str]) -> str:
    """The last exception line of the output, else its last line."""
    return next((line for line in reversed(lines) if EXCEPTION_LINE.match(line)), lines[-1] if lines else "no output")


def _check(code: int, output: str, what: str) -> None:
    """Raise with the cause first (the exception the command died of), then the tail."""
    if code == 0:
        return
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    cause = _cause(lines)
    tail = output[-TAIL_CHARS:]
    if is_transient(code, output):
        raise TransientFailure(f"{what} failed (exit {code}, looks transient): {cause}\n{tail}")
    raise StageFailed(f"{what} failed (exit {code}): {cause}\n{tail}")


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


# ---------------------------------------------------------------- tasks

def run_stage(root: Path, stage: str, *, force: bool = False) -> dict[str, Any]:
    """`dvc repro --single-item <stage>`: runs the stage only if its deps/params changed.

    Returns {stage, ran, seconds}; `ran` is False when DVC found the stage up to date.
    """
    cmd = _dvc("repro", "--single-item", *(["--force"] if force else []), stage)
    started = time.monotonic()
    with checkout_lock(root):
        code, output = run_command(cmd, root)
    _check(code, output, f"dvc repro {stage}")
    ran = f"Running stage '{stage}'" in output
    seconds = round(time.monotonic() - started, 1)
    log.info("stage %s %s in %.1f s", stage, "ran" if ran else "was up to date", seconds)
    return redact_value({"stage": stage, "ran": ran, "seconds": seconds})


def drop_waiting(drop: Path) -> bool:
    """A drop is waiting while its labels.csv is there (intake moves it to <drop>.processed/)."""
    return (Path(drop) / LABELS_FILE).is_file()


def _intake(root: Path, source_args: list[str]) -> dict[str, Any]:
    """`python -m pipelines.intake ... --dvc-add`; returns its JSON summary."""
    code, output = run_command([sys.executable, "-m", "pipelines.intake", *source_args, "--dvc-add"], root)
    _check(code, output, "intake " + " ".join(source_args))
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise StageFailed(f"intake printed no JSON summary:\n{output[-TAIL_CHARS:]}")


def take_in(root: Path, drop: Path | None, s3_prefix: str | None = None,
            endpoint_url: str | None = None) -> dict[str, Any]:
    """Take in the drop folder (when a labels.csv waits there) and the S3 prefix (when set).

    Returns {"accepted": total, "sources": [intake summaries]}. The drop folder is created when
    missing, so whoever delivers cases finds where to put them.
    """
    sources: list[dict[str, Any]] = []
    with checkout_lock(root):
        # A fresh checkout has no data/intake yet (it is DVC-tracked from the first accepted case);
        # the ingest stage depends on it, so create the empty state before any stage runs.
        ensure_intake_dir(Paths(root).intake)
        if drop is not None:
            drop = Path(drop)
            drop.mkdir(parents=True, exist_ok=True)
            if drop_waiting(drop):
                sources.append(_intake(root, ["--drop", str(drop)]))
            else:
                sources.append({"source": str(drop), "accepted": 0, "note": f"no {LABELS_FILE} waiting"})
        if s3_prefix:
            extra = ["--endpoint-url", endpoint_url] if endpoint_url else []
            sources.append(_intake(root, ["--s3", s3_prefix, *extra]))
    accepted = sum(int(s.get("accepted", 0)) for s in sources)
    sources = redact_value(sources)
    log.info("intake accepted %d new case(s): %s", accepted, json.dumps(sources))
    return {"accepted": accepted, "sources": sources}


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str


def first_run_reason(root: Path, stage_names: Sequence[str]) -> str | None:
    """Why this checkout has never completed a retrain (None when it has).

    No dvc.lock, a stage missing from it (a new architecture), no promotion outcome, or no
    champion yet: the first run trains whatever triggered it.
    """
    paths = Paths(Path(root))
    lock = paths.dvc_lock
    if not lock.is_file():
        return f"no {lock.name} yet: the pipeline has never run in this checkout"
    locked = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    missing = [s for s in stage_names if s not in locked]
    if missing:
        return f"stage(s) never run here: {', '.join(missing)}"
    promotion = paths.promotion
    if not promotion.is_file():
        return f"no promotion outcome yet ({promotion.relative_to(paths.root)})"
    if json.loads(promotion.read_text(encoding="utf-8")).get("champion_after") is None:
        return "no champion yet"
    return None


def retrain_decision(accepted: int, run_type: str, force: bool, first_run: str | None) -> RetrainDecision:
    """Retrain when new cases arrived, the weekly schedule or a user forces it, or on a first run.

    An asset-triggered or manual run with nothing new and no force skips every stage.
    """
    reasons = []
    if accepted > 0:
        reasons.append(f"{accepted} new case(s) accepted")
    if force:
        reasons.append("force_retrain requested")
    if run_type in FORCED_RUN_TYPES:
        reasons.append(f"{run_type} run: the schedule forces a retrain")
    if first_run:
        reasons.append(f"first run ({first_run})")
    if reasons:
        return RetrainDecision(True, "; ".join(reasons))
    return RetrainDecision(False, f"{run_type} run, no new cases and nothing forces a retrain: stages skipped")


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, env=command_env(root), capture_output=True, text=True)


def _identity(root: Path) -> list[str]:
    """Commit as the configured user; a fixed bot identity where git has none (a fresh worker)."""
    if _git(root, "config", "user.email").stdout.strip() or os.environ.get("GIT_AUTHOR_EMAIL"):
        return []
    return ["-c", "user.name=Medscan Airflow", "-c", "user.email=medscan-airflow@localhost"]


# Written by `pipelines.intake --dvc-add` once the first case is accepted: not in dvc.yaml's graph
# when the DAG is parsed on a fresh checkout, so always offered to the commit.
INTAKE_GIT_PATHS = ("data/intake.dvc", "data/.gitignore")


def publish(root: Path, git_paths: Sequence[str], message: str, *, push: bool = True,
            run_id: str | None = None) -> dict[str, Any]:
    """Commit what the run changed (dvc.lock, .dvc files, DVC's .gitignores) and `dvc push`.

    Only `git_paths` are committed (`git commit -- paths`), never other staged work in the
    checkout. `dvc push` goes to the default remote (.dvc/config: dvc-remote/, or S3 when
    configured). MEDSCAN_GIT_PUSH=<remote> also pushes the commit. The registered version of
    this run then gets the commit and the run id (`run_id`, default the Airflow run id Airflow
    exports to its tasks) as tags (pipelines/lineage.py).
    """
    root = Path(root)
    git_paths = list(dict.fromkeys([*git_paths, *INTAKE_GIT_PATHS]))
    with checkout_lock(root):
        tracked = set(_git(root, "ls-files", "--", *git_paths).stdout.split())
        paths = [p for p in git_paths if (root / p).exists() or p in tracked]
        add = _git(root, "add", "--", *paths)
        _check(add.returncode, add.stdout + add.stderr, "git add")
        staged = _git(root, "diff", "--cached", "--name-only", "--", *paths).stdout.split()
        commit = None
        if staged:
            done = _git(root, *_identity(root), "commit", "-q", "-m", message, "--", *staged)
            _check(done.returncode, done.stdout + done.stderr, "git commit")
            commit = _git(root, "rev-parse", "HEAD").stdout.strip()
            log.info("committed %s as %s", ", ".join(staged), commit)
        else:
            log.info("nothing to commit: %s unchanged", ", ".join(paths))
        pushed = None
        if push:
            code, output = run_command(_dvc("push"), root)
            _check(code, output, "dvc push")
            pushed = output.strip().splitlines()[-1] if output.strip() else "pushed"
        remote = os.environ.get("MEDSCAN_GIT_PUSH")
        if commit and remote:
            done = _git(root, "push", remote, "HEAD")
            _check(done.returncode, redact(done.stdout + done.stderr), f"git push {redact(remote)}")
    from pipelines.lineage import tag_published_version

    version = tag_published_version(root, commit, run_id or os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"))
    return redact_value({"commit": commit, "committed": staged, "dvc_push": pushed, "version": version})


OUTCOME_KEYS = ("model_name", "blessed", "reason", "metric", "candidate_arch", "candidate_version",
                "candidate_score", "champion_before", "champion_after", "champion_score")


def read_outcome(root: Path) -> dict[str, Any]:
    """The promote stage's verdict (reports/promotion.json), reduced to what a run log needs."""
    path = Paths(Path(root)).promotion
    if not path.is_file():
        raise StageFailed(f"{path} is missing: the promote stage did not write its outcome")
    outcome = json.loads(path.read_text(encoding="utf-8"))
    result = {key: outcome.get(key) for key in OUTCOME_KEYS}
    result["blessed"] = bool(result["blessed"])
    return redact_value(result)
