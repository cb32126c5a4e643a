"""A stage process dies with the `dvc repro` that launched it, and an interrupted MLflow run ends
KILLED, never RUNNING or FINISHED.

Why: `kill -9` of `dvc repro` (or of the Airflow task running it) does not reach the stage: DVC
runs the stage command through `$SHELL -c` (`/bin/sh` is dash, which forks, so the tree is
dvc -> sh -> python; bash execs, so dvc -> python). The orphan kept training, wrote `models/`
and a FINISHED MLflow run that dvc.lock never recorded. So, in a stage run by DVC (DVC sets
`DVC_STAGE` in the command's environment):

- the nearest `dvc` ancestor is watched (a pidfd, no polling): when it is gone, the stage sends
  itself SIGTERM; if it has not exited `GRACE_S` later (the main thread stuck in C code), it is
  ended with `os._exit` after marking its runs KILLED;
- `PR_SET_PDEATHSIG` (SIGTERM) also covers a direct parent that dies;
- SIGTERM, SIGHUP and SIGINT raise `Interrupted` (a SystemExit with code 128+signal) in the main
  thread, so `with mlflow.start_run()` unwinds; at exit the runs that were active are set KILLED.

It also redacts credentials from every log record of the process (pipelines.redact).

`install()` is idempotent. `import pipelines` calls it in every process DVC runs as a stage (so
before a stage reads any data), and `install_for_stage()` (called by `pipelines.tracking.configure`,
which every MLflow-logging entry point calls) in a `python -m pipelines.X` tool run by hand; never
in a library user such as a test runner or an Airflow worker. An ignored signal (`nohup`) stays
ignored; outside DVC nothing watches the parent (a `nohup`ed training outlives its terminal).
"""
from __future__ import annotations

import atexit
import ctypes
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pipelines import redact

GRACE_S = 30.0                 # from "launcher gone" to a forced exit when SIGTERM is not handled
POLL_S = 0.5                   # only where pidfd_open is unavailable
SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
PR_SET_PDEATHSIG = 1
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "fish", "ksh"})


class Interrupted(SystemExit):
    """Raised in the main thread by SIGTERM/SIGHUP/SIGINT: exits 128+signal after unwinding."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


_installed = False
_interrupted_runs: set[str] = set()


# ---------------------------------------------------------------- the process tree (/proc)

def parent_pid(pid: int) -> int | None:
    """The parent of `pid` from /proc (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])   # after "pid (comm) state": ppid


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_dvc(argv: Sequence[str]) -> bool:
    """`dvc ...`, `/venv/bin/dvc ...`, `python /venv/bin/dvc ...` or `python -m dvc ...`."""
    head = list(argv[:3])
    if any(os.path.basename(arg) == "dvc" for arg in head):
        return True
    return any(a == "-m" and b == "dvc" for a, b in zip(head, head[1:]))


def find_launcher(start: int | None = None) -> int | None:
    """The nearest `dvc` ancestor of this process (or of `start`), None when there is none."""
    pid = parent_pid(os.getpid()) if start is None else start
    seen: set[int] = set()
    while pid and pid > 1 and pid not in seen:
        seen.add(pid)
        if is_dvc(cmdline(pid)):
            return pid
        pid = parent_pid(pid)
    return None


def orphaned() -> bool:
    """Our launcher is already gone: we, or the shell between us, were re-parented to init."""
    pid = os.getppid()
    if pid > 1 and os.path.basename((cmdline(pid) or [""])[0]) in SHELLS:
        pid = parent_pid(pid) or 1
    return pid <= 1


# ---------------------------------------------------------------- dying with the launcher

def set_parent_death_signal(signum: int = signal.SIGTERM) -> bool:
    """Linux `prctl(PR_SET_PDEATHSIG)`: the kernel signals us when our parent exits."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def wait_for_exit(pid: int) -> None:
    """Block until `pid` has exited (a zombie counts): a pidfd where the kernel has one."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        return
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(POLL_S)


def _stop_self(reason: str, grace_s: float) -> None:
    """SIGTERM ourselves (the handler unwinds and marks runs KILLED); force the exit if stuck."""
    print(f"medscan: {reason}: stopping this stage", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    print(f"medscan: still running {grace_s:.0f} s after SIGTERM: forced exit", file=sys.stderr, flush=True)
    _mark_killed()
    os._exit(128 + signal.SIGTERM)


def watch_launcher(pid: int, on_gone: Callable[[], None]) -> threading.Thread:
    """A daemon thread that calls `on_gone` once `pid` has exited."""
    def run() -> None:
        wait_for_exit(pid)
        on_gone()

    thread = threading.Thread(target=run, name=f"medscan-watch-{pid}", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------- signals -> KILLED runs

def _active_run_ids() -> list[str]:
    """Ids of the MLflow runs active in the main thread (no store access: safe in a handler)."""
    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is None:
        return []
    stack = getattr(fluent, "_active_run_stack", None)
    runs = list(stack.get()) if stack is not None else [fluent.active_run()]
    return [run.info.run_id for run in runs if run is not None]


def _mark_killed() -> None:
    """Set every run that was active when the signal came to KILLED (after `with` made it FAILED)."""
    if not _interrupted_runs:
        return
    try:
        import mlflow

        while mlflow.active_run() is not None:      # runs started without `with`: not FINISHED
            mlflow.end_run("KILLED")
        client = mlflow.MlflowClient()
        for run_id in sorted(_interrupted_runs):
            client.set_terminated(run_id, "KILLED")
    except Exception as err:  # the store may be what failed; say so instead of hiding the run
        print(f"medscan: could not mark run(s) {sorted(_interrupted_runs)} KILLED: {err}",
              file=sys.stderr, flush=True)
    _interrupted_runs.clear()


def _handler(signum: int, frame: object) -> None:
    if not _interrupted_runs:
        atexit.register(_mark_killed)   # registered after MLflow's own: runs before it (LIFO)
    _interrupted_runs.update(_active_run_ids())
    # While unwinding, more SIGTERM/SIGHUP (the parent-death signal and the watchdog both send one)
    # must not kill the process before its runs are marked; a second Ctrl-C still interrupts.
    for other in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(other) is _handler:
            signal.signal(other, _already_stopping)
    if signum == signal.SIGINT:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    raise Interrupted(signum)


def _already_stopping(signum: int, frame: object) -> None:
    """A further SIGTERM/SIGHUP during the unwind: noted; the watchdog's grace timer still applies."""
    # os.write, not print: a handler may run in the middle of a print (a reentrant write raises).
    os.write(2, f"medscan: {signal.Signals(signum).name} while already stopping: unwinding goes on\n".encode())


def install_signal_handlers() -> list[int]:
    """SIGTERM/SIGHUP/SIGINT raise `Interrupted`; ignored signals stay ignored. Main thread only."""
    done = []
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN:
            continue
        if signum == signal.SIGINT and current is not signal.default_int_handler:
            continue   # someone else's handler (a debugger, a server): theirs wins
        signal.signal(signum, _handler)
        done.append(signum)
    return done


def install(*, grace_s: float = GRACE_S) -> bool:
    """Make this process a well-behaved stage (see the module doc). False outside the main thread."""
    global _installed
    if _installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    redact.install()
    install_signal_handlers()
    if os.environ.get("DVC_STAGE") is not None:
        launcher = find_launcher()
        if launcher is not None:
            set_parent_death_signal(signal.SIGTERM)
            watch_launcher(launcher, lambda: _stop_self(f"dvc (pid {launcher}) is gone", grace_s))
        elif orphaned():
            _installed = True
            _stop_self("started by dvc, but dvc is already gone", grace_s)
    _installed = True
    return True


def install_for_stage() -> bool:
    """`install()` in a process run by DVC or started as `python -m pipelines.X`; else nothing."""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", "") or ""
    if os.environ.get("DVC_STAGE") is None and not spec_name.startswith("pipelines."):
        return False
    return install()
