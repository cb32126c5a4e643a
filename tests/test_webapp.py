"""The clinician app through its HTTP interface (FastAPI TestClient): login, roles, CSRF, back-off,
every upload error path, confirm -> drop folder + audit log, limits, and no patient data in logs."""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import stat

import numpy as np
import pytest

pytest.importorskip("keras")
from fastapi.testclient import TestClient  # noqa: E402

from pipelines.webapp.app import create_app  # noqa: E402
from tests.patient_data import mentions  # noqa: E402
from tests.webapp_factories import ADMIN_PASSWORD, image_bytes, project, tiny_adapter, tiny_contract  # noqa: E402

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    _, params = project(tmp_path_factory.mktemp("adapter"))
    return tiny_adapter(params)


@pytest.fixture
def setup(tmp_path, adapter):
    root, params = project(tmp_path, max_upload_mb=1)
    adapter.predictor.contract = adapter.contract.calibrated(1.0, 0.5, 0.9)   # a test may lower it
    app = create_app(root, params, adapter, admin_password=ADMIN_PASSWORD)
    return root, TestClient(app, base_url="http://127.0.0.1")


def csrf(client: TestClient, path: str = "/login") -> str:
    return CSRF.search(client.get(path).text).group(1)


def login(client: TestClient, user: str = "admin", password: str = ADMIN_PASSWORD):
    return client.post("/login", data={"username": user, "password": password, "csrf_token": csrf(client)})


def upload(client: TestClient, data: bytes | None = image_bytes(), name: str = "lesion.png", **fields):
    files = {"image": (name, data, "image/png")} if data is not None else {"image": ("", b"", "application/octet-stream")}
    return client.post("/upload", data={"csrf_token": csrf(client, "/upload"), **fields}, files=files)


def make_clinician(client: TestClient, name: str = "dr.lee", password: str = "clinician-pass-1") -> None:
    done = client.post("/admin/users", data={"action": "create", "username": name, "password": password,
                                             "role": "clinician", "csrf_token": csrf(client, "/admin/users")})
    assert done.status_code == 200 and f"User {name} created." in done.text


def test_healthz_names_the_champion_and_is_503_without_one(setup, tmp_path):
    _, client = setup
    assert client.get("/healthz").json() == {"status": "ok", "model": "medscan-ham10000", "version": "1"}
    root, params = project(tmp_path / "empty")
    bare = TestClient(create_app(root, params, None, "medscan-ham10000 has no champion yet", ADMIN_PASSWORD))
    answer = bare.get("/healthz")
    assert answer.status_code == 503 and "no champion" in answer.json()["detail"]


def test_login_then_upload_shows_five_named_diagnoses_version_and_disclaimer(setup):
    _, client = setup
    assert client.get("/upload", follow_redirects=False).headers["location"] == "/login"
    assert login(client).status_code == 200   # redirected to /upload
    form = client.get("/upload").text
    assert 'accept="image/*" capture="environment"' in form
    assert all(f'name="{f}"' in form for f in ("age", "sex", "localization"))
    page = upload(client, age="63", sex="female", localization="back")
    assert page.status_code == 200
    assert page.text.count('class="diagnosis"') == 5
    assert "Melanocytic nevus" in page.text and "version 1" in page.text and "Decision support only" in page.text
    assert "Uncertain: refer" in page.text          # untrained: every class about 1/7 < 0.5
    heat = client.get(re.search(r'src="(/cases/[0-9a-f]+/heatmap.png)"', page.text).group(1))
    assert heat.status_code == 200 and heat.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_confident_prediction_does_not_abstain(setup, adapter):
    _, client = setup
    adapter.predictor.contract = adapter.contract.calibrated(1.0, 0.0, 0.9)
    login(client)
    assert "Uncertain: refer" not in upload(client).text


@pytest.mark.parametrize("kind, status, message", [
    ("none", 400, "No image was uploaded"),
    ("empty", 400, "empty"),
    ("text", 415, "not a usable image"),
    ("oversize", 413, "larger than the limit of 1 MB"),
])
def test_upload_errors_are_clear(setup, kind, status, message):
    _, client = setup
    login(client)
    data = {"none": None, "empty": b"", "text": b"hello, not a picture",
            "oversize": b"\xff" * (2**20 + 10)}[kind]
    answer = upload(client, data, name="x.png" if kind != "none" else "")
    assert answer.status_code == status and message in answer.text


def test_a_body_far_over_the_limit_is_refused_before_it_is_read(setup):
    _, client = setup
    login(client)
    answer = client.post("/upload", content=b"x" * (3 * 2**20), headers={"content-type": "application/octet-stream"})
    assert answer.status_code == 413
    bad = client.post("/upload", content=b"x", headers={"content-length": "abc"})
    assert bad.status_code == 400


@pytest.mark.parametrize("field, value, message", [
    ("age", "abc", "age must be a number"), ("age", "inf", "age must be within bounds.age_range [0, 120]"),
    ("age", "130", "age must be within"), ("sex", "alien", "sex must be one of"),
    ("localization", "moon", "localization must be one of"),
])
def test_invalid_metadata_names_the_field_and_is_never_nan(setup, field, value, message):
    _, client = setup
    login(client)
    answer = upload(client, **{field: value})
    assert answer.status_code == 422 and message in answer.text and "NaN" not in answer.text
    assert 'aria-invalid="true"' in answer.text


def test_every_post_needs_the_csrf_token(setup):
    _, client = setup
    assert client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD}).status_code == 403
    login(client)
    for path, data in (("/upload", {}), ("/admin/users", {"action": "create"}), ("/logout", {}),
                       ("/cases/00/confirm", {"label": "nv"})):
        answer = client.post(path, data={**data, "csrf_token": "forged"})
        assert answer.status_code == 403 and "CSRF" in answer.text, path


def test_wrong_passwords_slow_further_attempts_even_with_the_right_one(setup):
    _, client = setup
    for _ in range(3):
        assert login(client, password="wrong-password").status_code == 401
    slowed = login(client)
    assert slowed.status_code == 429 and "Too many failed attempts" in slowed.text
    assert client.get("/upload", follow_redirects=False).status_code == 303   # still logged out


def test_admin_manages_users_and_a_clinician_cannot(setup):
    root, client = setup
    login(client)
    make_clinician(client)
    short = client.post("/admin/users", data={"action": "create", "username": "x", "password": "short",
                                              "role": "clinician", "csrf_token": csrf(client, "/admin/users")})
    assert short.status_code == 400 and "at least 10 characters" in short.text
    reset = client.post("/admin/users", data={"action": "reset", "username": "dr.lee", "password": "new-pass-123",
                                              "csrf_token": csrf(client, "/admin/users")})
    assert "Password of dr.lee reset." in reset.text
    other = TestClient(client.app, base_url="http://127.0.0.1")
    assert login(other, "dr.lee", "clinician-pass-1").status_code == 401
    assert login(other, "dr.lee", "new-pass-123").status_code == 200
    assert other.get("/admin/users").status_code == 403
    assert other.post("/admin/users", data={"action": "create", "username": "y", "password": "y" * 12,
                                            "role": "admin", "csrf_token": csrf(other, "/upload")}).status_code == 403
    client.post("/admin/users", data={"action": "disable", "username": "dr.lee",
                                      "csrf_token": csrf(client, "/admin/users")})
    assert other.get("/upload", follow_redirects=False).status_code == 303   # the session ends at once
    db = root / ".medscan-app" / "users.sqlite"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    assert ADMIN_PASSWORD.encode() not in db.read_bytes()


def test_generated_first_admin_password_is_printed_once_and_kept_private(tmp_path, adapter, capsys):
    root, params = project(tmp_path)
    create_app(root, params, adapter)
    printed = re.search(r"password (\S+) ", capsys.readouterr().out).group(1)
    secret = root / ".medscan-app" / "first-admin-password"
    assert secret.read_text().split() == ["admin", printed]
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    create_app(root, params, adapter)
    assert "password" not in capsys.readouterr().out
    assert login(TestClient(create_app(root, params, adapter)), "admin", printed).status_code == 200


def test_confirmed_diagnosis_lands_in_the_drop_folder_and_the_audit_log(setup, caplog):
    root, client = setup
    login(client)
    caplog.set_level(logging.INFO, logger="medscan.webapp")
    page = upload(client, image_bytes("JPEG"), "IMG_0001.jpg", age="63", sex="female", localization="scalp")
    case = re.search(r'action="/cases/([0-9a-f]+)/confirm"', page.text).group(1)
    done = client.post(f"/cases/{case}/confirm", data={"label": "mel", "csrf_token": csrf(client, "/upload")})
    assert done.status_code == 200 and "Melanoma (mel) was recorded" in done.text
    rows = list(csv.DictReader((root / "incoming" / "labels.csv").open()))
    assert rows == [{"file": f"medscan-app/{case}.jpg", "label": "mel", "group_id": f"app-{case}",
                     "age": "63", "sex": "female", "localization": "scalp"}]
    assert (root / "incoming" / rows[0]["file"]).read_bytes()[:2] == b"\xff\xd8"
    assert not [p for p in (root / "incoming").rglob(".*")]   # no lock or temp file left in the drop
    entry = json.loads((root / ".medscan-app" / "audit.jsonl").read_text())
    assert {entry[k] for k in ("user", "model_version", "final_label")} == {"admin", "medscan-ham10000/1", "mel"}
    assert "predicted" in entry and "at" in entry
    again = client.post(f"/cases/{case}/confirm", data={"label": "mel", "csrf_token": csrf(client, "/upload")})
    assert again.status_code == 404                      # recorded once
    logged = (caplog.text + (root / ".medscan-app" / "audit.jsonl").read_text()).replace(str(root), "<root>")
    assert not {"age", "sex", "localization"} & set(entry)
    for patient in ("63", "female", "scalp", "IMG_0001"):
        assert not mentions(logged, patient)


def test_a_case_belongs_to_the_clinician_who_uploaded_it(setup):
    _, client = setup
    login(client)
    make_clinician(client)
    page = upload(client)
    case = re.search(r'action="/cases/([0-9a-f]+)/confirm"', page.text).group(1)
    other = TestClient(client.app, base_url="http://127.0.0.1")
    login(other, "dr.lee", "clinician-pass-1")
    assert other.get(f"/cases/{case}/heatmap.png").status_code == 404
    assert other.post(f"/cases/{case}/confirm", data={"label": "nv", "csrf_token": csrf(other, "/upload")}
                      ).status_code == 404
    bad = client.post(f"/cases/{case}/confirm", data={"label": "not-a-class", "csrf_token": csrf(client, "/upload")})
    assert bad.status_code == 422


def test_a_body_that_does_not_arrive_in_time_gets_408():
    import asyncio

    from pipelines.webapp.guards import BodyLimits

    async def app(scope, receive, send):
        await receive()
        raise AssertionError("the body never came")

    async def never():
        await asyncio.sleep(60)

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": [(b"content-length", b"10")]}
    asyncio.run(BodyLimits(app, 100, 0.05)(scope, never, send))
    assert sent[0]["status"] == 408 and b"did not arrive in time" in sent[1]["body"]


def test_the_app_feeds_the_model_what_training_fed_it(adapter, tmp_path):
    """Upload bytes -> pixels equal ingest's normalised PNG read by the training input path."""
    from pipelines.data import decode_image
    from pipelines.images import normalize_image

    raw = image_bytes("JPEG", size=300, seed=5)
    stored = normalize_image(raw, tmp_path, adapter.contract.image_limits()).stored_path
    trained = decode_image(str(stored), adapter.contract.image_size).numpy()
    assert (adapter.prepare(raw, {}).pixels == trained).all()


def test_the_app_answers_what_the_serving_path_answers(adapter):
    """The micro-batched app and pipelines.serve.Predictor give the same calibrated top-5 and
    abstention, alone and in a batch whose rows carry different metadata."""
    adapter.predictor.contract = adapter.contract.calibrated(1.7, 0.3, 0.9)
    records = [{"age": 63.0, "sex": "female", "localization": "back"}, {}, {"age": 5.0, "sex": "male"}]
    raws = [image_bytes("JPEG", size=60, seed=s) for s in range(3)]
    prepared = [adapter.prepare(r, adapter.parse_metadata({k: str(v) for k, v in m.items()}))
                for r, m in zip(raws, records)]
    together = adapter._score(prepared)
    for raw, record, prep, batched in zip(raws, records, prepared, together):
        served = adapter.predictor.predict_one(raw, record)
        alone = adapter.predict(prep)
        for answer in (alone.top, batched["top"]):
            assert [t["label"] for t in answer] == [t["label"] for t in served["top"]]
            assert np.allclose([t["probability"] for t in answer], [t["probability"] for t in served["top"]],
                               atol=1e-5)
        assert alone.abstain == served["abstain"] == batched["abstain"]
    # A second pass reads the memoised metadata encoding: the same answers, row for row.
    assert adapter._score(prepared[::-1]) == together[::-1]


def test_abstention_threshold_is_the_contracts_else_the_params_fallback(tmp_path):
    """A calibrated contract's threshold is used as chosen on validation; a contract without one
    (a model registered before calibration) gets serve.abstain_below_uncalibrated."""
    _, params = project(tmp_path, abstain_below_uncalibrated=0.35)
    calibrated = tiny_adapter(params, threshold=0.8)
    assert calibrated.abstain_threshold == 0.8 == calibrated.contract.abstain_threshold
    old = tiny_adapter(params, threshold=None)
    assert tiny_contract(params, threshold=None).abstain_target_precision is None
    assert old.abstain_threshold == 0.35 == old.predictor.contract.abstain_threshold
    assert old.predict(old.prepare(image_bytes(), {})).abstain is True   # untrained: about 1/7 each


def test_cases_written_by_the_app_are_accepted_by_intake(tmp_path):
    """What confirm writes is a delivery the intake stage takes in, metadata and all; rows written
    by parallel confirmations are all there (the lock serialises them)."""
    import math
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.intake import ensure_intake_dir, intake
    from pipelines.webapp.cases import write_case

    drop, intake_dir = tmp_path / "incoming", ensure_intake_dir(tmp_path / "intake")
    metas = [{"age": 40.0 + i, "sex": "female", "localization": "back"} for i in range(6)]
    metas[0] = {"age": math.nan, "sex": "unknown", "localization": "unknown"}
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: write_case(drop, f"case{i}", image_bytes("JPEG", 48, seed=i), "JPEG",
                                           "nv" if i % 2 else "mel", metas[i]), range(6)))
    assert not [p for p in drop.rglob(".tmp-*")]
    result = intake(drop, intake_dir, "ham10000")
    assert len(result.accepted) == 6 and not result.quarantined and not result.pending
    accepted = {r["group_id"]: r for r in result.accepted}
    assert accepted["app-case0"]["age"] in ("", "nan") and accepted["app-case3"]["label"] == "nv"
    assert float(accepted["app-case5"]["age"]) == 45.0


def test_confirm_waits_for_a_running_intake_and_says_so(setup, monkeypatch):
    """The drop folder's flock is the one intake holds during a run: a confirmation then gets a
    clear 503 and the case stays pending, so the same button works once intake is done."""
    import fcntl

    from pipelines.webapp import cases as cases_module

    root, client = setup
    login(client)
    page = upload(client)
    case = re.search(r'action="/cases/([0-9a-f]+)/confirm"', page.text).group(1)
    drop = root / "incoming"
    drop.mkdir()
    real = cases_module.write_case
    monkeypatch.setattr(cases_module, "write_case", lambda *a: real(*a[:-1], 0.2))
    fd = os.open(drop, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)                       # what an intake run holds
        busy = client.post(f"/cases/{case}/confirm", data={"label": "nv", "csrf_token": csrf(client, "/upload")})
    finally:
        os.close(fd)
    assert busy.status_code == 503 and "intake is taking in new cases" in busy.text
    done = client.post(f"/cases/{case}/confirm", data={"label": "nv", "csrf_token": csrf(client, "/upload")})
    assert done.status_code == 200 and (drop / "labels.csv").exists()
