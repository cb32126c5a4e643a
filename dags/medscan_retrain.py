"""Airflow DAGs that retrain Medscan: one retrain DAG and one drop-folder watcher per data set.

The retrain DAG's stage tasks are read from dvc.yaml (pipelines.dag_spec), never written here:
each runs `dvc repro --single-item <stage>` in the project checkout, with DVC's own edges. Around
them: intake of new cases before, a short-circuit that skips the stages when nothing new arrived
and nothing forces a retrain, and after them a git commit of dvc.lock + `dvc push`, then the
promotion outcome. The callables live in pipelines.orchestrate (testable without Airflow).

Checkout: MEDSCAN_ROOT, else the repository holding this dags/ folder. Data sets: that checkout's
`dataset.name`, plus one per checkout listed in params.yaml `orchestration.checkouts`.
"""
from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.providers.standard.sensors.filesystem import FileSensor
from airflow.sdk import (
    DAG,
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    ExceptionRetryPolicy,
    Param,
    RetryAction,
    RetryRule,
    TaskGroup,
    dag,
    get_current_context,
    task,
)

ROOT = Path(os.environ.get("MEDSCAN_ROOT") or Path(__file__).resolve().parents[1]).resolve()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))   # the checkout's own pipelines package, also without `pip install -e`

from pipelines import orchestrate  # noqa: E402
from pipelines import redact as redaction  # noqa: E402
from pipelines.cases import LABELS_FILE  # noqa: E402
from pipelines.config import Paths  # noqa: E402
from pipelines.dag_spec import PipelineSpec, read_spec, split_name, task_id  # noqa: E402

log = logging.getLogger("medscan.airflow")
redaction.install()   # every log record of this process loses its credentials (MEDSCAN_GIT_PUSH, S3 keys)

# No start_date on the scheduled DAGs: with a start_date and catchup=False, Airflow 3.3's
# CronTriggerTimetable schedules the latest *past* slot, so unpausing started a surprise run beside
# the one you trigger. Without one, `run_immediately` decides; `False` still runs a slot that
# passed less than a tenth of the period ago (16.8 h for a weekly cron: trigger.py treats False
# like None), a zero window never runs a past slot: the first run is the next future one.
NEVER_PAST_SLOT = timedelta(0)
STAGE_TIMEOUT = timedelta(hours=12)     # one DVC stage (training on real data included)
RUN_TIMEOUT = timedelta(hours=24)       # a stuck run must not block the next (max_active_runs=1)
WATCH_TIMEOUT_S = 9 * 60                # the watcher waits a little less than its 10-min period
QUEUE = os.environ.get("MEDSCAN_QUEUE")  # scale-out: route checkout tasks to the worker holding it

# StageFailed: the command failed (bad data, a bug) and a retry would fail the same way.
# TransientFailure and anything unexpected: the usual retries with exponential back-off.
RETRY_POLICY = ExceptionRetryPolicy(rules=[
    RetryRule(exception="pipelines.orchestrate.StageFailed", action=RetryAction.FAIL,
              reason="the command failed; retrying would fail the same way"),
    RetryRule(exception="pipelines.orchestrate.TransientFailure", action=RetryAction.RETRY,
              reason="transient failure (lock, network, killed process): retry with back-off"),
])


def notify_failure(context: Any) -> None:
    """One clear log line per failure: which DAG, task, run and try, and where the log is.

    As a task callback it reports the task's exception; as the DAG callback, the failed run.
    Redacted: the exception may quote a command line with a credential in it.
    """
    ti = context.get("ti")
    dag_run = context.get("dag_run")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", "?")
    run_id = getattr(ti, "run_id", None) or getattr(dag_run, "run_id", "?")
    task = getattr(ti, "task_id", "-")
    tries = f"{getattr(ti, 'try_number', '?')}/{getattr(ti, 'max_tries', 0) + 1}" if ti else "-"
    url = redaction.redact(getattr(ti, "log_url", "") if ti else "")
    exception = context.get("exception")
    scope = "TASK FAILED" if exception is not None else "RUN FAILED"
    error = redaction.redact(exception if exception is not None else context.get("reason") or "see the task log").strip()
    log.error("MEDSCAN RETRAIN %s: dag=%s task=%s run=%s try=%s log=%s error=%s",
              scope, dag_id, task, run_id, tries, url, (error.splitlines() or [""])[0][:500])


DEFAULT_ARGS: dict[str, Any] = {
    "owner": "medscan",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,     # 2 min, then 4 min
    "max_retry_delay": timedelta(minutes=30),
    "retry_policy": RETRY_POLICY,
    "execution_timeout": STAGE_TIMEOUT,
    "on_failure_callback": notify_failure,
    **({"queue": QUEUE} if QUEUE else {}),
}


def drop_asset(settings: orchestrate.Settings) -> Asset:
    """'New cases landed in the drop folder': set by the watcher DAG (or POST /api/v2/assets/events)."""
    return Asset(name=f"medscan_drop_{settings.dataset}", uri=settings.drop_folder.as_uri(), group="medscan")


def promotion_asset(settings: orchestrate.Settings) -> Asset:
    """'A retrain finished with a promotion verdict': for downstream DAGs (e.g. serving reload)."""
    return Asset(name=f"medscan_promotion_{settings.dataset}",
                 uri=Paths(settings.root).promotion.as_uri(), group="medscan")


def weekly(settings: orchestrate.Settings) -> CronTriggerTimetable:
    """The retrain's cron; never runs a slot that passed before the DAG was unpaused."""
    return CronTriggerTimetable(settings.schedule, timezone="UTC", run_immediately=NEVER_PAST_SLOT)


def cron_words(cron: str) -> str:
    """The cron in words, as Airflow's own timetable description writes it (cron-descriptor)."""
    from cron_descriptor import CasingTypeEnum, ExpressionDescriptor

    return ExpressionDescriptor(cron, casing_type=CasingTypeEnum.Sentence,
                                use_24hour_time_format=True).get_description()


def schedule_label(settings: orchestrate.Settings) -> str:
    """Both triggers in words, for the DAG list: the UI's schedule column shows only the asset."""
    return f"{cron_words(settings.schedule)} UTC (cron {settings.schedule}) or a new drop"


def retrain_doc(settings: orchestrate.Settings, spec: PipelineSpec) -> str:
    stages = "\n".join(f"- `{task_id(s.name)}`: `dvc repro --single-item {s.name}`"
                       + (f" (after {', '.join(f'`{u}`' for u in s.upstream)})" if s.upstream else "")
                       for s in spec.stages)
    return f"""\
### Retrain Medscan on `{settings.dataset}`

Runs the DVC pipeline of the checkout `{settings.root}` stage by stage; the stage tasks and their
dependencies are read from `dvc.yaml` when this file is parsed, so they always match `dvc dag`.

**Triggers**: the cron `{settings.schedule}` (UTC; a scheduled run always retrains) **or** the
asset `medscan_drop_{settings.dataset}` (set by `medscan_drop_watch_{settings.dataset}` when a
`labels.csv` lands in `{settings.drop_folder}`), **or** a manual trigger.

**Unpausing** starts nothing by itself: the first scheduled run is the next cron slot
({cron_words(settings.schedule)}, UTC). A DAG paused again after it has run and unpaused later
does start the one latest slot it missed (Airflow's catchup=False), like any scheduled DAG.

**Trigger form**: every field has a working default, so *Trigger* works as it opens; leave
`s3_prefix` empty (null) for no S3 source. From the CLI:
`airflow dags trigger medscan_retrain_{settings.dataset} --conf '{{"force_retrain": true}}'`.

**Tasks**
1. `intake`: `python -m pipelines.intake --drop <drop_folder> --dvc-add` (and `--s3 <s3_prefix>`
   when set): accepted cases join `data/intake/`, the rest are quarantined.
2. `should_retrain` (short-circuit): retrains when cases were accepted, on the schedule, with
   `force_retrain`, or when the checkout never completed a run (no dvc.lock / champion yet);
   otherwise every task below is **skipped**.
3. One task per DVC stage ({len(spec.stages)}):
{stages}
   A stage whose inputs did not change is a no-op (DVC cache). `dvc_force` re-executes them all.
4. `publish`: `git commit` of {', '.join(f'`{p}`' for p in spec.git_paths())} and `dvc push` to the
   default DVC remote.
5. `record_outcome`: reads `reports/promotion.json` and returns blessed / candidate / champion
   (XCom), and updates the asset `medscan_promotion_{settings.dataset}`.

Failures: a failed command fails at once (retrying gives the same result); locks, network and
killed processes retry twice with exponential back-off. Every failure logs one
`MEDSCAN RETRAIN TASK FAILED` line with the task, try and log link.
"""


def build_retrain_dag(settings: orchestrate.Settings, spec: PipelineSpec) -> DAG:
    """intake -> should_retrain -> (the DVC stages, DVC's edges) -> publish -> record_outcome."""
    root = settings.root
    model = promotion_asset(settings)

    @dag(
        dag_id=f"medscan_retrain_{settings.dataset}",
        dag_display_name=f"Medscan retrain: {settings.dataset} · {schedule_label(settings)}",
        description=(f"{schedule_label(settings)}: intake, DVC stages, commit + push, promotion "
                     f"verdict for {settings.dataset}"),
        doc_md=retrain_doc(settings, spec),
        schedule=AssetOrTimeSchedule(timetable=weekly(settings), assets=[drop_asset(settings)]),
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=RUN_TIMEOUT,
        default_args=DEFAULT_ARGS,
        on_failure_callback=notify_failure,
        tags=["medscan", settings.dataset],
        params={
            "force_retrain": Param(False, type="boolean",
                                   description="Run the stages even when no new case arrived."),
            "dvc_force": Param(False, type="boolean",
                               description="`dvc repro --force`: re-execute stages DVC finds up to date."),
            # Nullable: the form sends an empty field as null, and a plain "string" type then keeps
            # the Trigger button disabled until something is typed in.
            "drop_folder": Param(str(settings.drop_folder), type=["null", "string"],
                                 description="Folder with new images + labels.csv (empty: none)."),
            "s3_prefix": Param(settings.s3_prefix or None, type=["null", "string"],
                               description="s3://bucket/prefix with new cases (empty: none)."),
        },
    )
    def retrain() -> None:
        @task(task_id="intake", doc_md="Take in new labelled cases (pipelines.intake).")
        def intake() -> dict[str, Any]:
            params = get_current_context()["params"]
            drop = params.get("drop_folder") or None
            return orchestrate.take_in(root, Path(drop) if drop else None,
                                       params.get("s3_prefix") or None, settings.s3_endpoint_url)

        @task.short_circuit(task_id="should_retrain",
                            doc_md="False skips every stage: nothing new and nothing forces a retrain.")
        def should_retrain(summary: dict[str, Any]) -> bool:
            context = get_current_context()
            run_type = context["dag_run"].run_type
            decision = orchestrate.retrain_decision(
                accepted=int(summary.get("accepted", 0)),
                run_type=str(getattr(run_type, "value", run_type)),
                force=bool(context["params"].get("force_retrain")),
                first_run=orchestrate.first_run_reason(root, spec.names),
            )
            log.info("%s: %s", "RETRAIN" if decision.retrain else "SKIP", decision.reason)
            return decision.retrain

        @task(execution_timeout=STAGE_TIMEOUT)
        def dvc_stage(stage: str) -> dict[str, Any]:
            force = bool(get_current_context()["params"].get("dvc_force"))
            return orchestrate.run_stage(root, stage, force=force)

        @task(task_id="publish", doc_md="git commit dvc.lock (+ .dvc files) and dvc push.")
        def publish() -> dict[str, Any]:
            context = get_current_context()
            message = f"medscan: retrain {settings.dataset} ({context['dag_run'].run_id})"
            return orchestrate.publish(root, spec.git_paths(), message)

        @task(task_id="record_outcome", outlets=[model], execution_timeout=timedelta(minutes=10),
              doc_md="The promotion verdict (reports/promotion.json) as this run's result.")
        def record_outcome(published: dict[str, Any]) -> dict[str, Any]:
            context = get_current_context()
            results = context["ti"].xcom_pull(task_ids=[task_id(n) for n in spec.names]) or []
            outcome = orchestrate.read_outcome(root)
            outcome.update(
                dataset=settings.dataset,
                stages_run=[r["stage"] for r in results if isinstance(r, dict) and r.get("ran")],
                commit=published.get("commit"),
            )
            verdict = "BLESSED" if outcome["blessed"] else "not blessed"
            log.info("%s v%s (%s): %s, %s %.4f; champion v%s (was v%s). Stages run: %s. Commit: %s",
                     outcome["model_name"], outcome["candidate_version"], outcome["candidate_arch"],
                     verdict, outcome["metric"], outcome["candidate_score"] or 0.0,
                     outcome["champion_after"], outcome["champion_before"],
                     ", ".join(outcome["stages_run"]) or "none", outcome["commit"] or "none")
            context["outlet_events"][model].extra = {
                k: outcome[k] for k in ("blessed", "candidate_version", "champion_after", "metric",
                                        "candidate_score")}
            return redaction.redact_value(outcome)

        gate = should_retrain(intake())
        groups: dict[str, TaskGroup] = {}
        stage_tasks = {}
        for stage in spec.stages:
            family, item = split_name(stage.name)
            group = None
            if family is not None:
                group = groups.get(family) or groups.setdefault(
                    family, TaskGroup(group_id=family, tooltip=f"DVC foreach stage {family}@*"))
            stage_tasks[stage.name] = dvc_stage.override(
                task_id=item, task_group=group,
                doc_md=f"`dvc repro --single-item {stage.name}` in `{root}`")(stage.name)
        for stage in spec.stages:
            for upstream in stage.upstream:
                stage_tasks[upstream] >> stage_tasks[stage.name]
        gate >> [stage_tasks[name] for name in spec.roots]
        published = publish()
        [stage_tasks[name] for name in spec.sinks] >> published
        record_outcome(published)

    return retrain()


class DropSensor(FileSensor):
    """FileSensor on an absolute path, so no Airflow `fs` connection has to be configured."""

    @property
    def path(self) -> str:  # type: ignore[override]
        return self.filepath


def build_watch_dag(settings: orchestrate.Settings) -> DAG:
    """Every few minutes: wait (deferred, in the triggerer) for <drop>/labels.csv, then set the asset."""
    asset = drop_asset(settings)
    labels = settings.drop_folder / LABELS_FILE

    @dag(
        dag_id=f"medscan_drop_watch_{settings.dataset}",
        dag_display_name=f"Medscan drop watch: {settings.dataset}",
        description=f"Triggers medscan_retrain_{settings.dataset} when a drop lands in {settings.drop_folder}",
        doc_md=f"""\
### Watch the `{settings.dataset}` drop folder

`wait_for_labels` waits (deferred: no worker slot) up to {WATCH_TIMEOUT_S // 60} min for
`{labels}`; when it appears, `announce_drop` updates the asset `{asset.name}`, which triggers
`medscan_retrain_{settings.dataset}`. The retrain's intake moves the drop to `<drop folder>.processed/`.
No drop: the run ends *skipped* (soft fail), not failed.
""",
        schedule=CronTriggerTimetable(settings.watch_schedule or orchestrate.DEFAULT_WATCH_SCHEDULE,
                                      timezone="UTC", run_immediately=NEVER_PAST_SLOT),
        catchup=False,
        max_active_runs=1,
        default_args={"owner": "medscan", "retries": 0, "on_failure_callback": notify_failure},
        tags=["medscan", settings.dataset],
    )
    def watch() -> None:
        wait = DropSensor(task_id="wait_for_labels", filepath=str(labels), deferrable=True,
                          poke_interval=30, timeout=WATCH_TIMEOUT_S, soft_fail=True)

        @task(task_id="announce_drop", outlets=[asset])
        def announce_drop() -> dict[str, Any]:
            files = list(settings.drop_folder.iterdir())  # the archive lives beside the drop, not in it
            note = {"drop_folder": str(settings.drop_folder), "entries": len(files)}
            get_current_context()["outlet_events"][asset].extra = note
            log.info("drop waiting in %s (%d entries): triggering the retrain", settings.drop_folder, len(files))
            return note

        wait >> announce_drop()

    return watch()


def build_all(root: Path) -> dict[str, DAG]:
    """Both DAGs for every configured checkout (one data set each)."""
    dags: dict[str, DAG] = {}
    for number, checkout in enumerate(orchestrate.checkouts(root)):
        settings = orchestrate.load_settings(checkout, primary=number == 0)
        built = [build_retrain_dag(settings, read_spec(checkout))]
        if settings.watch_schedule:
            built.append(build_watch_dag(settings))
        for one in built:
            if one.dag_id in dags:
                raise ValueError(f"two checkouts both train {settings.dataset!r}: {one.dag_id} is defined twice")
            dags[one.dag_id] = one
    return dags


globals().update(build_all(ROOT))
