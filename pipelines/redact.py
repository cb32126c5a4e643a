"""Strip credentials from anything Medscan logs, raises or returns (task logs, XCom, error text).

Secrets reach text in three ways, and each has one rule here:
- a URL with userinfo (`https://alice:token@host/repo.git`, `postgresql://u:p@h/db`,
  `s3://KEY:SECRET@bucket`): the userinfo becomes `***`, scheme and host stay (they say where);
- `password=...`, `token=...`, `Authorization: Bearer ...` in command lines or DSNs: the value
  becomes `***`;
- the value of any environment variable whose name says it is a secret (AWS_SECRET_ACCESS_KEY,
  *_TOKEN, *_PASSWORD, *_API_KEY, ...) or that holds a URL with a password, wherever it appears
  (git or boto3 may echo it in a form neither rule above knows).

`redact` works on a string, `redact_value` on nested dicts/lists (XCom results), `install` on
every log record of the process (a record factory, so handlers configured later, e.g. by Airflow,
are covered too); `RedactingFilter` does the same for one handler or logger.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
# Environment variable names whose values are secrets (matched case-insensitively on the name).
SECRET_NAME = re.compile(
    r"(SECRET|TOKEN|PASSWORD|PASSWD|(^|_)PASS($|_)|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL"
    r"|(^|_)AUTH($|_))", re.IGNORECASE)
# Short or boolean values are not masked: "1" or "true" would be blanked out everywhere.
MIN_SECRET_LEN = 6
# scheme://userinfo@ ; userinfo may hold ':' and anything but '/', '@' and whitespace.
URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"]+)@")
KEY_VALUE = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|secret[_-]?key"
    r"|aws_secret_access_key|aws_session_token)\s*=\s*)(?P<value>[^\s&;,'\"]+)", re.IGNORECASE)
AUTH_HEADER = re.compile(r"(?P<key>\bAuthorization:\s*(?:Bearer|Basic|Token)\s+)(?P<value>\S+)",
                         re.IGNORECASE)


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Values to mask verbatim: secret-named variables and the passwords in URL-valued ones.

    Longest first, so a secret that contains another is masked whole.
    """
    env = os.environ if env is None else env
    found: set[str] = set()
    for name, value in env.items():
        if not value:
            continue
        if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LEN:
            found.add(value)
        for match in URL_USERINFO.finditer(value):
            userinfo = match.group("userinfo")
            found.add(userinfo)
            if ":" in userinfo:
                found.add(userinfo.split(":", 1)[1])
    return sorted((v for v in found if len(v) >= MIN_SECRET_LEN or ":" in v), key=len, reverse=True)


def redact(text: Any, env: Mapping[str, str] | None = None) -> str:
    """`text` (anything; str() is taken) with every credential replaced by `***`."""
    out = text if isinstance(text, str) else str(text)
    out = URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", out)
    out = KEY_VALUE.sub(lambda m: f"{m.group('key')}{MASK}", out)
    out = AUTH_HEADER.sub(lambda m: f"{m.group('key')}{MASK}", out)
    for value in secret_values(env):
        out = out.replace(value, MASK)
    return out


def redact_value(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """A copy of a JSON-like value (XCom results) with every string redacted; other leaves kept."""
    if isinstance(value, str):
        return redact(value, env)
    if isinstance(value, Mapping):
        return {k: redact_value(v, env) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v, env) for v in value)
    return value


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Format the record's message (and traceback) now, redacted, so no handler sees the raw text."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: keep logging's own error path
        return record
    record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


class RedactingFilter(logging.Filter):
    """Redacts every record it sees (attach to a handler: logger filters skip propagated records)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_INSTALLED = False


def install() -> None:
    """Redact every log record this process creates, whichever logger or handler takes it.

    Entry points call it once (idempotent). A record factory rather than a root-logger filter:
    a filter on the root logger is not applied to records propagated from child loggers.
    """
    global _INSTALLED
    if _INSTALLED:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(previous(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    _INSTALLED = True
