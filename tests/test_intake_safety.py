"""Intake against an adversarial sender and against faults: links out of the drop, FIFOs, a
delivered `processed/` folder, kill -9 in the middle of a run, two intakes at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from ingest_factories import image_bytes, write, write_labels_csv
from pipelines import intake as intake_module
from pipelines.intake import JOURNAL_FILE, archive_dir_for, intake

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
STAMP = "20250301T120000Z"
REPO = Path(intake_module.__file__).resolve().parents[1]
HEADER = ("file", "label", "group_id", "age", "sex", "localization")

# Paths opened by this process while `_watching` is set (sys.audit "open": builtins.open, os.open).
_OPENED: list[str] = []
_WATCH = {"on": False}


def _audit(event: str, args: tuple) -> None:
    if _WATCH["on"] and event == "open" and isinstance(args[0], (str, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def opened_during(fn):
    _OPENED.clear()
    _WATCH["on"] = True
    try:
        return fn(), list(_OPENED)
    finally:
        _WATCH["on"] = False


def cases(intake_dir: Path) -> pd.DataFrame:
    return pd.read_csv(intake_dir / "cases.csv", dtype=str, keep_default_na=False)


def quarantine_log(intake_dir: Path) -> pd.DataFrame:
    path = intake_dir / "quarantine.csv"
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.exists() else pd.DataFrame()


def reasons(result) -> dict[str, str]:
    return {e.source_path: str(e.reason) for e in result.quarantined}


def malaria_drop(drop: Path, n: int, seed0: int = 0) -> list[str]:
    """n good cases (alternating classes) plus labels.csv; returns the file names."""
    names = [f"C{i}P{i}ThinF_IMG_1_cell_{i}.png" for i in range(n)]
    for i, name in enumerate(names):
        write(drop / name, image_bytes(seed0 + i))
    labels = ("Parasitized", "Uninfected")
    write_labels_csv(drop, [(name, labels[i % 2], "", "", "", "") for i, name in enumerate(names)], HEADER)
    return names


@pytest.fixture
def intake_dir(tmp_path) -> Path:
    return tmp_path / "project" / "data" / "intake"


# ------------------------------------------------------------------ links, FIFOs (row: symlinks)


def test_links_out_of_the_drop_are_quarantined_and_never_opened(tmp_path, intake_dir):
    outside = write(tmp_path / "elsewhere" / "secret.png", image_bytes(99))
    drop = tmp_path / "drop"
    write(drop / "real" / "c.png", image_bytes(3))
    drop.mkdir(exist_ok=True)
    (drop / "out.png").symlink_to(outside)
    (drop / "passwd.png").symlink_to("/etc/passwd")
    (drop / "in.png").symlink_to(drop / "real" / "c.png")  # inside the drop: followed
    write_labels_csv(drop, [("out.png", "Parasitized", "", "", "", ""),
                            ("passwd.png", "Uninfected", "", "", "", ""),
                            ("in.png", "Uninfected", "", "", "", "")], HEADER)
    result, opened = opened_during(lambda: intake(drop, intake_dir, "malaria", now=NOW))
    assert reasons(result) == {"out.png": "symlink_outside_root", "passwd.png": "symlink_outside_root"}
    assert [c["label"] for c in result.accepted] == ["Uninfected"]  # in.png, read from real/c.png
    assert not any(p == "/etc/passwd" or "elsewhere" in p for p in opened)
    stored = [p.read_bytes() for p in (intake_dir / "images").iterdir()]
    assert stored == [image_bytes(3)]  # the outside bytes were never copied in
    archived = archive_dir_for(drop) / STAMP
    assert (archived / "out.png").is_symlink() and (archived / "passwd.png").is_symlink()  # links moved
    assert outside.read_bytes() == image_bytes(99)  # targets untouched
    assert result.pending == ["real/c.png"]


def test_fifo_socket_and_linked_folder_in_the_drop_are_never_opened(tmp_path, intake_dir):
    drop = tmp_path / "drop"
    names = malaria_drop(drop, 2)
    os.mkfifo(drop / "pipe.png")
    (drop / "sub").mkdir()
    (drop / "linked").symlink_to(drop / "sub")  # a folder inside the drop: never descended
    with open(drop / "labels.csv", "a", encoding="utf-8") as fh:
        fh.write("pipe.png,Parasitized,,,,\n")
    result = intake(drop, intake_dir, "malaria", now=NOW)  # a read of the FIFO would block forever
    assert reasons(result) == {"pipe.png": "unreadable_file"} and "FIFO" in result.quarantined[0].detail
    assert len(result.accepted) == len(names)
    summary = result.to_summary()
    assert summary["ignored_by_reason"] == {"symlinked_dir": 1} and (drop / "linked").is_symlink()


# ------------------------------------------------------------------ a delivered processed/ folder


def test_a_delivered_processed_folder_is_data_not_the_archive(tmp_path, intake_dir):
    drop = tmp_path / "drop"
    write(drop / "processed" / "x.png", image_bytes(5))
    write(drop / "y.png", image_bytes(6))
    write_labels_csv(drop, [("processed/x.png", "Parasitized", "", "", "", ""),
                            ("y.png", "Uninfected", "", "", "", "")], HEADER)
    first = intake(drop, intake_dir, "malaria", now=NOW)
    assert [c["label"] for c in first.accepted] == ["Parasitized", "Uninfected"] and first.quarantined == []
    assert Path(first.processed_dir) == archive_dir_for(drop) / STAMP
    assert (archive_dir_for(drop) / STAMP / "processed" / "x.png").is_file()
    # the next delivery sees only itself: nothing the archive holds is offered again
    write(drop / "z.png", image_bytes(7))
    write_labels_csv(drop, [("z.png", "Uninfected", "", "", "", "")], HEADER)
    second = intake(drop, intake_dir, "malaria", now=NOW)
    assert len(second.accepted) == 1 and second.quarantined == [] and second.pending == []


# ------------------------------------------------------------------ kill -9 (row: crash-safe intake)

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import datetime, timezone
    from pathlib import Path
    import pipelines.intake as m

    target, after = sys.argv[3], int(sys.argv[4])
    original, calls = getattr(m, target), [0]

    def hooked(*args, **kwargs):
        if calls[0] == after:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9, mid-run
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(m, target, hooked)
    m.intake(Path(sys.argv[1]), Path(sys.argv[2]), "malaria",
             now=datetime(2025, 3, 1, 12, tzinfo=timezone.utc))
    print("not killed")
    """
)


@pytest.mark.parametrize(
    "target, after",
    [
        ("_store_case", 4),  # while copying accepted images: before anything is recorded
        ("_apply_append", 1),  # cases.csv appended, quarantine.csv not yet
        ("_move_one", 0),  # everything recorded, nothing moved
        ("_move_one", 7),  # in the middle of the moves (the 1,482 already_accepted case)
    ],
)
def test_kill_minus_9_mid_intake_then_a_rerun_reports_the_truth(tmp_path, intake_dir, target, after):
    drop = tmp_path / "drop"
    names = malaria_drop(drop, 12)
    write(drop / "bad.png", b"not an image")
    with open(drop / "labels.csv", "a", encoding="utf-8") as fh:
        fh.write("bad.png,Parasitized,,,,\n")
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(drop), str(intake_dir), target, str(after)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert killed.returncode == -9, killed.stdout + killed.stderr
    rerun = intake(drop, intake_dir, "malaria", now=NOW)
    summary = rerun.to_summary()
    assert summary["accepted"] == len(names) and summary["by_reason"] == {"not_an_image": 1}
    assert "already_accepted" not in set(quarantine_log(intake_dir)["reason"])
    assert len(cases(intake_dir)) == len(names) and cases(intake_dir)["sha256"].is_unique
    assert list(quarantine_log(intake_dir)["reason"]) == ["not_an_image"]  # logged once
    assert summary["recovered"] == (0 if target == "_store_case" else len(names))
    assert list(drop.iterdir()) == [] and not (intake_dir / JOURNAL_FILE).exists()
    assert not list(intake_dir.rglob(".tmp-*"))
    archived = {p.name for d in archive_dir_for(drop).iterdir() for p in d.iterdir()}
    assert archived == {*names, "bad.png", "labels.csv"}
    again = intake(drop, intake_dir, "malaria", now=NOW)
    assert (again.accepted, again.quarantined, again.recovered) == ([], [], 0)


# ------------------------------------------------------------------ two intakes at once (row: lock)

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import pipelines.intake as m

    release = Path(sys.argv[3])
    original = m._run_drop

    def slow(*args, **kwargs):  # holds both locks until the test says so (at most 60 s)
        print("locked", flush=True)
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return original(*args, **kwargs)

    m._run_drop = slow
    print(m.intake(Path(sys.argv[1]), Path(sys.argv[2]), "malaria").to_summary()["accepted"], flush=True)
    """
)


def _project(root: Path, lock_timeout_s: float) -> Path:
    write(root / "params.yaml", f"dataset: {{name: malaria, root: x}}\nintake: {{lock_timeout_s: {lock_timeout_s}}}\n".encode())
    return root


def _cli(project: Path, drop: Path) -> subprocess.Popen:
    env = {**os.environ, "MEDSCAN_ROOT": str(project)}
    return subprocess.Popen([sys.executable, "-m", "pipelines.intake", "--drop", str(drop)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("lock_timeout_s", [0.5, 60])
def test_a_second_intake_on_the_same_drop_waits_or_exits_with_a_clear_message(tmp_path, lock_timeout_s):
    project = _project(tmp_path / "project", lock_timeout_s)
    intake_dir = project / "data" / "intake"
    drop = tmp_path / "drop"
    names = malaria_drop(drop, 4)
    release = tmp_path / "release"
    second = None
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(drop), str(intake_dir), str(release)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        second = _cli(project, drop)
        if lock_timeout_s < 1:
            out, err = second.communicate(timeout=60)
            assert second.returncode == intake_module.BUSY_EXIT and out == ""
            assert err.strip().splitlines() == [
                f"intake: another intake is running on drop folder {drop}; gave up after 0.5 s "
                "(params.yaml intake.lock_timeout_s). Run intake again once it has finished."]
        time.sleep(0.5)
        release.touch()
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0 and out.splitlines()[-1] == str(len(names)), err
        if lock_timeout_s > 1:  # it waited, then found the drop already taken in
            out, err = second.communicate(timeout=60)
            assert second.returncode == 0, err
            assert json.loads(out.splitlines()[-1])["accepted"] == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len(cases(intake_dir)) == len(names)
