"""Request guards: login back-off, CSRF tokens, and body size / read-time limits.

Why here and not in a proxy: the app binds 127.0.0.1 and may run without nginx in front, so it
must refuse an oversize or slow body itself, before a byte of it is buffered.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

CSRF_FIELD = "csrf_token"


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(session_token: str | None, sent: str | None) -> bool:
    return bool(session_token) and bool(sent) and hmac.compare_digest(str(session_token), str(sent))


class LoginBackoff:
    """Failed logins per user name and per client address: after `free` failures each further
    attempt must wait 2**(extra failures) seconds, up to `max_wait` (a right password included,
    so guessing cannot outrun it). A success clears the user's and the address's count."""

    def __init__(self, free: int, max_wait: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.max_wait, self.clock = free, max_wait, clock
        self._fails: dict[str, tuple[int, float]] = {}   # key -> (failures, when the last failed)
        self._lock = threading.Lock()

    def wait_left(self, *keys: str) -> float:
        """Seconds before `keys` may try again (0: now)."""
        now = self.clock()
        with self._lock:
            return max([0.0] + [self._until(k) - now for k in keys])

    def _until(self, key: str) -> float:
        count, last = self._fails.get(key, (0, 0.0))
        if count < self.free:
            return 0.0
        return last + min(self.max_wait, 2.0 ** (count - self.free))

    def failed(self, *keys: str) -> None:
        now = self.clock()
        with self._lock:
            for k in keys:
                self._fails[k] = (self._fails.get(k, (0, 0.0))[0] + 1, now)
            if len(self._fails) > 10_000:   # bounded memory under a spray of names
                for k, _ in sorted(self._fails.items(), key=lambda kv: kv[1][1])[:5_000]:
                    del self._fails[k]

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._fails.pop(k, None)


class BodyLimits:
    """ASGI middleware: 413 for a body over `max_bytes` (declared or streamed), 400 for a bad
    Content-Length, 408 when the body does not arrive within `timeout_s`."""

    def __init__(self, app: Any, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
                if length < 0:
                    raise ValueError
            except ValueError:
                await _plain(send, 400, "bad Content-Length")
                return
            if length > self.max_bytes:
                await _plain(send, 413, self.too_large())
                return
        seen = 0
        started = time.monotonic()
        responded = False

        async def guarded_send(message: dict) -> None:
            nonlocal responded
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        async def limited_receive() -> dict:
            nonlocal seen
            left = self.timeout_s - (time.monotonic() - started)
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
            except asyncio.TimeoutError:
                raise _Refused(408, "the request body did not arrive in time") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _Refused(413, self.too_large())
            return message

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _Refused as err:
            if not responded:
                await _plain(send, err.status, err.text)

    def too_large(self) -> str:
        return f"the upload is larger than the limit of {self.max_bytes / 2**20:.0f} MB"


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


async def _plain(send: Callable, status: int, text: str) -> None:
    body = json.dumps({"error": text}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
