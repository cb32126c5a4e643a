"""The clinician's app: log in, upload a photo, read the top-5 and the heat map, confirm the diagnosis.

Why FastAPI with server-rendered Jinja2 pages: it is an established ASGI framework already in the
lock file (MLflow depends on it), Starlette gives signed sessions and multipart parsing, uvicorn
serves it, and plain HTML forms work on any phone browser (camera capture included) without a
JavaScript build. Every model call goes through pipelines.webapp.model.ModelAdapter.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware.sessions import SessionMiddleware

from pipelines.config import Paths, resolve
from pipelines.webapp import cases
from pipelines.webapp.guards import CSRF_FIELD, BodyLimits, LoginBackoff, csrf_ok, new_csrf_token
from pipelines.webapp.model import InvalidInput, ModelAdapter, Prediction, Prepared
from pipelines.webapp.users import ROLES, User, UserError, UserStore, ensure_first_admin, private_file

log = logging.getLogger("medscan.webapp")
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
DISCLAIMER = ("Decision support only: this is not a diagnosis. The clinician decides, and refers "
              "whenever the picture, the history or this tool leaves doubt.")
FORM_SLACK = 64 * 1024   # the form's other fields ride along with the file


@dataclass
class Pending:
    """An upload waiting for the clinician's final diagnosis (in memory, never logged)."""

    owner: str
    image: bytes
    prepared: Prepared
    metadata: dict[str, Any]
    prediction: Prediction


class State:
    """What the running app holds: stores, limits, the model (or why there is none)."""

    def __init__(self, root: Path, params: Mapping[str, Any], model: ModelAdapter | None,
                 unavailable: str | None) -> None:
        serve = params.get("serve", {})
        self.paths = Paths(root)
        self.params, self.model, self.unavailable = params, model, unavailable
        self.state_dir = self.paths.webapp_state
        self.users = UserStore(self.state_dir / "users.sqlite")
        self.audit_log = self.state_dir / "audit.jsonl"
        self.drop = resolve(root, params["orchestration"]["drop_folder"])
        self.max_upload = int(float(serve.get("max_upload_mb", 10)) * 2**20)
        self.backoff = LoginBackoff(int(serve.get("login_backoff_after", 3)),
                                    float(serve.get("login_backoff_max_s", 60)))
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        self.pending_max = int(serve.get("pending_cases", 256))

    def keep(self, item: Pending) -> str:
        case_id = secrets.token_hex(8)
        self.pending[case_id] = item
        while len(self.pending) > self.pending_max:
            self.pending.popitem(last=False)
        return case_id


class AccessLog:
    """ASGI middleware: logs method, path (never the query), status and time (no patient data, no
    file names) and adds the security headers. Plain ASGI: BaseHTTPMiddleware costs per request."""

    HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
               (b"cache-control", b"no-store")]

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [0]

        async def logged_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            log.info("%s %s %s %.1fms", scope["method"], scope["path"], status[0],
                     (time.perf_counter() - started) * 1000)


def session_secret(state_dir: Path) -> str:
    """The key that signs session cookies: made once, kept 0600 in the state folder."""
    path = state_dir / "session.key"
    if not path.exists():
        private_file(path, secrets.token_urlsafe(48))
    return path.read_text(encoding="utf-8").strip()


def create_app(root: Path, params: Mapping[str, Any], model: ModelAdapter | None,
               unavailable: str | None = None, admin_password: str | None = None) -> FastAPI:
    """The app for project `root`. `model` None: pages say why (`unavailable`), /healthz is 503.
    `admin_password` seeds the first admin (else a generated one is printed once and kept 0600)."""
    state = State(root, params, model, unavailable)
    generated = ensure_first_admin(state.users, state.state_dir / "first-admin-password", admin_password)
    if generated:
        print(f"medscan: first admin created: user 'admin', password {generated} "
              f"(also in {state.state_dir / 'first-admin-password'}, mode 0600; change it)", flush=True)
    serve = params.get("serve", {})
    app = FastAPI(title="Medscan", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.medscan = state
    app.add_middleware(SessionMiddleware, secret_key=session_secret(state.state_dir),
                       session_cookie="medscan_session", same_site="strict",
                       max_age=int(float(serve.get("session_hours", 8)) * 3600))

    app.add_middleware(AccessLog)
    app.add_middleware(BodyLimits, max_bytes=state.max_upload + 2**20,
                       timeout_s=float(serve.get("request_timeout_s", 30)))

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = request.session
        if "csrf" not in session:
            session["csrf"] = new_csrf_token()
        user = current_user(request)
        return TEMPLATES.TemplateResponse(request, template, {
            "user": user, "csrf": session["csrf"], "csrf_field": CSRF_FIELD, "disclaimer": DISCLAIMER,
            "model": state.model, "unavailable": state.unavailable, **context}, status_code=status)

    def current_user(request: Request) -> User | None:
        """The session's user, re-read from the store once per request (a disabled account is
        logged out at its next request)."""
        if "user" not in request.state._state:
            name = request.session.get("user")
            user = state.users.get(name) if name else None
            request.state.user = user if user and not user.disabled else None
        return request.state.user

    async def checked_form(request: Request) -> Any:
        form = await request.form(max_files=1, max_fields=20)
        if not csrf_ok(request.session.get("csrf"), form.get(CSRF_FIELD)):
            return None
        return form

    def csrf_refused(request: Request) -> HTMLResponse:
        return page(request, "error.html", 403, message="The form expired or did not come from this "
                    "site (CSRF check failed). Reload the page and try again.")

    def login_required(request: Request, admin: bool = False) -> User | Response:
        user = current_user(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        if admin and not user.is_admin:
            return page(request, "error.html", 403, message="This page is for administrators.")
        return user

    async def signed_in_form(request: Request, admin: bool = False) -> tuple[User, Any] | Response:
        """(user, form) of a signed-in POST whose CSRF token checks, else the response to send."""
        user = login_required(request, admin=admin)
        if isinstance(user, Response):
            return user
        form = await checked_form(request)
        return csrf_refused(request) if form is None else (user, form)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        if state.model is None:
            return JSONResponse({"status": "unavailable", "detail": state.unavailable or "no champion"}, 503)
        return JSONResponse({"status": "ok", "model": state.model.name, "version": state.model.version_number})

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        return RedirectResponse("/upload" if current_user(request) else "/login", status_code=303)

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request) -> HTMLResponse:
        return page(request, "login.html")

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await checked_form(request)
        if form is None:
            return csrf_refused(request)
        username = str(form.get("username") or "").strip()
        keys = (f"user:{username.lower()}", f"ip:{request.client.host if request.client else '-'}")
        wait = state.backoff.wait_left(*keys)
        if wait > 0:
            return page(request, "login.html", 429, error=f"Too many failed attempts: wait {wait:.0f} s "
                        "and try again.", username=username)
        user = await run_in_threadpool(state.users.authenticate, username, str(form.get("password") or ""))
        if user is None:
            state.backoff.failed(*keys)
            return page(request, "login.html", 401, error="Wrong user name or password, or the "
                        "account is disabled.", username=username)
        state.backoff.succeeded(*keys)
        request.state.user = user
        request.session.clear()
        request.session.update({"user": user.username, "csrf": new_csrf_token()})
        return RedirectResponse("/upload", status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        form = await checked_form(request)
        if form is None:
            return csrf_refused(request)
        request.session.clear()
        request.state.user = None
        return RedirectResponse("/login", status_code=303)

    @app.get("/upload", response_class=HTMLResponse)
    def upload_page(request: Request) -> Response:
        user = login_required(request)
        return user if isinstance(user, Response) else page(request, "upload.html")

    @app.post("/upload", response_class=HTMLResponse)
    async def upload(request: Request) -> Response:
        signed = await signed_in_form(request)
        if isinstance(signed, Response):
            return signed
        user, form = signed
        values = {k: str(v) for k, v in form.items() if isinstance(v, str)}

        def again(status: int, error: str, field: str | None = None) -> HTMLResponse:
            return page(request, "upload.html", status, error=error, error_field=field, values=values)

        if state.model is None:
            return again(503, f"No model to ask: {state.unavailable}")
        file = form.get("image")
        if not isinstance(file, UploadFile) or not file.filename:
            return again(400, "No image was uploaded: choose a photo or take one with the camera.", "image")
        data = await file.read(state.max_upload + 1)
        if len(data) > state.max_upload:
            return again(413, f"The image is larger than the limit of {state.max_upload / 2**20:.0f} MB.", "image")
        if not data:
            return again(400, "The uploaded file is empty: choose a photo.", "image")
        try:
            metadata = state.model.parse_metadata(values)
        except InvalidInput as err:   # names the field, never quotes the value
            return again(422, f"{err.field} {err.detail}", err.field)
        model = state.model

        def score() -> tuple[Prepared, Prediction]:   # one thread hand-off for both steps
            prepared = model.prepare(data, metadata)
            return prepared, model.predict(prepared)

        try:
            prepared, prediction = await run_in_threadpool(score)
        except InvalidInput as err:
            if err.field != "image":
                return again(422, f"{err.field} {err.detail}", err.field)
            return again(415, f"This file is not a usable image ({err.reason}): upload a photo "
                              "(JPEG or PNG).", "image")
        case_id = state.keep(Pending(user.username, data, prepared, metadata, prediction))
        return page(request, "result.html", case_id=case_id, prediction=prediction,
                    classes=[(c, state.model.display[c]) for c in state.model.classes])

    def owned(request: Request, user: User, case_id: str) -> Pending | None:
        item = state.pending.get(case_id)
        return item if item is not None and item.owner == user.username else None

    @app.get("/cases/{case_id}/heatmap.png")
    async def heatmap(request: Request, case_id: str) -> Response:
        user = login_required(request)
        if isinstance(user, Response):
            return user
        item = owned(request, user, case_id)
        if item is None or state.model is None:
            return Response(status_code=404)
        png = await run_in_threadpool(state.model.heatmap_png, item.prepared)
        return Response(png, media_type="image/png")

    @app.post("/cases/{case_id}/confirm", response_class=HTMLResponse)
    async def confirm(request: Request, case_id: str) -> Response:
        signed = await signed_in_form(request)
        if isinstance(signed, Response):
            return signed
        user, form = signed
        item = owned(request, user, case_id)
        if item is None:
            return page(request, "error.html", 404, message="This case is no longer waiting for a "
                        "diagnosis (already recorded, or too old): upload it again.")
        label = str(form.get("label") or "")
        if state.model is None or label not in state.model.classes:
            return page(request, "error.html", 422, message="Choose the final diagnosis from the list.")
        try:
            rel = await run_in_threadpool(cases.write_case, state.drop, case_id, item.image,
                                          item.prepared.image_format, label, item.metadata, 10.0)
        except cases.DropBusy:   # the case stays pending: the same button works again
            return page(request, "error.html", 503, message="The intake is taking in new cases right "
                        "now; go back and press 'Record diagnosis' again in a minute.")
        top = item.prediction.top[0]
        cases.audit(state.audit_log, user=user.username, model_version=item.prediction.model_version,
                    predicted=top["label"], predicted_probability=top["probability"],
                    abstained=item.prediction.abstain, final_label=label,
                    agreed=label == top["label"], case_file=rel)
        state.pending.pop(case_id, None)
        return page(request, "confirmed.html", label=label, display=state.model.display[label], file=rel)

    @app.get("/admin/users", response_class=HTMLResponse)
    def admin_users(request: Request) -> Response:
        user = login_required(request, admin=True)
        if isinstance(user, Response):
            return user
        return page(request, "admin.html", users=state.users.all(), roles=ROLES)

    @app.post("/admin/users", response_class=HTMLResponse)
    async def admin_action(request: Request) -> Response:
        signed = await signed_in_form(request, admin=True)
        if isinstance(signed, Response):
            return signed
        user, form = signed
        action, name = str(form.get("action") or ""), str(form.get("username") or "").strip()
        try:
            if action == "create":
                await run_in_threadpool(state.users.create, name, str(form.get("password") or ""),
                                        str(form.get("role") or ""))
                done = f"User {name} created."
            elif action in ("disable", "enable"):
                if name == user.username:
                    raise UserError("you cannot disable your own account")
                state.users.set_disabled(name, action == "disable")
                done = f"User {name} {action}d."
            elif action == "reset":
                await run_in_threadpool(state.users.reset_password, name, str(form.get("password") or ""))
                done = f"Password of {name} reset."
            else:
                raise UserError("unknown action")
        except UserError as err:
            return page(request, "admin.html", 400, users=state.users.all(), roles=ROLES, error=str(err))
        return page(request, "admin.html", users=state.users.all(), roles=ROLES, done=done)

    return app


def app_from_env() -> FastAPI:
    """The app for MEDSCAN_ROOT (or the working directory) with the registry's champion."""
    from pipelines.config import load_params, project_root
    from pipelines.serve import ChampionUnavailable

    root = project_root()
    params = load_params(root)
    try:
        model, why = ModelAdapter.champion(params, Paths(root)), None
    except ChampionUnavailable as err:
        model, why = None, str(err)
        print(f"medscan: warning: {why}", flush=True)
    return create_app(root, params, model, why, os.environ.get("MEDSCAN_ADMIN_PASSWORD") or None)
