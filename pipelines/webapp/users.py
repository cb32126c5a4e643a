"""Who may use the app: a small SQLite user store with scrypt password hashes and two roles.

Why stdlib: `hashlib.scrypt` is a memory-hard KDF from the standard library, so no extra
dependency carries the one secret that matters. Each hash stores its own parameters and salt, so
the cost can be raised later without invalidating existing passwords.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("clinician", "admin")
SCRYPT = {"n": 2**14, "r": 8, "p": 1}   # 16 MiB, ~50 ms here: cheap for one login, dear for a guesser
MIN_PASSWORD = 10


class UserError(ValueError):
    """A user operation that cannot be done; the message says why (shown to the admin)."""


@dataclass(frozen=True)
class User:
    username: str
    role: str
    disabled: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=64 * 2**20, dklen=32, **SCRYPT)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if kind != "scrypt":
        return False
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                         maxmem=64 * 2**20, dklen=len(digest) // 2)
    return hmac.compare_digest(got.hex(), digest)


# A hash to check against when the user does not exist, so timing does not reveal user names.
_DUMMY = hash_password(secrets.token_urlsafe(16))


def private_file(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only (0600), created that way from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


class UserStore:
    """users(username, role, password, disabled, created) in one SQLite file (0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        new = not path.exists()
        with closing(self._connect()) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS users (username TEXT PRIMARY KEY, role TEXT NOT NULL, "
                       "password TEXT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL)")
        if new:
            os.chmod(path, 0o600)

    def _connect(self) -> "_Borrowed":
        """This thread's connection (opening one costs more than the query; threads each keep one)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=10)
        return _Borrowed(db)

    def count(self) -> int:
        with closing(self._connect()) as db:
            return int(db.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    def get(self, username: str) -> User | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT username, role, disabled FROM users WHERE username = ?",
                             (username,)).fetchone()
        return User(row[0], row[1], bool(row[2])) if row else None

    def all(self) -> list[User]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT username, role, disabled FROM users ORDER BY username").fetchall()
        return [User(u, r, bool(d)) for u, r, d in rows]

    def authenticate(self, username: str, password: str) -> User | None:
        """The user when the password is right and the account enabled; None otherwise."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT username, role, disabled, password FROM users WHERE username = ?",
                             (username,)).fetchone()
        if row is None:
            check_password(password, _DUMMY)
            return None
        if not check_password(password, row[3]) or row[2]:
            return None
        return User(row[0], row[1], False)

    def create(self, username: str, password: str, role: str) -> User:
        username = username.strip()
        if not username or len(username) > 64 or not username.replace(".", "").replace("-", "").replace(
                "_", "").isalnum():
            raise UserError("user name: 1-64 letters, digits, '.', '-' or '_'")
        if role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}")
        _check_strength(password)
        try:
            with closing(self._connect()) as db, db:
                db.execute("INSERT INTO users VALUES (?, ?, ?, 0, ?)",
                           (username, role, hash_password(password), time.time()))
        except sqlite3.IntegrityError:
            raise UserError(f"user {username!r} already exists") from None
        return User(username, role, False)

    def set_disabled(self, username: str, disabled: bool) -> None:
        self._update(username, "UPDATE users SET disabled = ? WHERE username = ?", (int(disabled), username))

    def reset_password(self, username: str, password: str) -> None:
        _check_strength(password)
        self._update(username, "UPDATE users SET password = ? WHERE username = ?",
                     (hash_password(password), username))

    def _update(self, username: str, sql: str, args: tuple) -> None:
        with closing(self._connect()) as db, db:
            if db.execute(sql, args).rowcount != 1:
                raise UserError(f"no user {username!r}")


class _Borrowed:
    """A kept connection used like a fresh one: `closing()` leaves it open, `with` commits."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, *args: Any) -> sqlite3.Cursor:
        return self.db.execute(*args)

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Borrowed":
        return self

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if kind is None:
            self.db.commit()
        else:
            self.db.rollback()


def _check_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: at least {MIN_PASSWORD} characters")


def ensure_first_admin(store: UserStore, secret_file: Path, env_password: str | None) -> str | None:
    """Create the first admin (`admin`) when the store is empty.

    The password is MEDSCAN_ADMIN_PASSWORD when set; otherwise a generated one, written to
    `secret_file` (0600) and returned so the caller prints it once. Returns None when nothing
    was generated.
    """
    if store.count():
        return None
    if env_password:
        store.create("admin", env_password, "admin")
        return None
    password = secrets.token_urlsafe(18)
    store.create("admin", password, "admin")
    private_file(secret_file, f"admin {password}\n")
    return password
