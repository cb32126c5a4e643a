"""Drive the real services of scripts/services-up.sh from a test: start/stop them, read their
settings (services.env), talk to Airflow's REST API and to S3. No mock: every call goes to a server
on 127.0.0.1."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
SCRIPTS = PROJECT / "scripts"
# The ports services-up.sh uses by default (scripts/services-lib.sh): the test needs them free.
PORTS = {"postgres": 55432, "redis": 56379, "s3": 8333, "mlflow": 5500, "airflow": 18080}
TERMINAL = {"success", "failed"}


def busy_ports() -> list[str]:
    """Services already listening where the test's would (a `make services-up` left running)."""
    busy = []
    for name, port in PORTS.items():
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(f"{name} :{port}")
    return busy


def read_env_file(path: Path) -> dict[str, str]:
    """services.env: KEY=value lines (comments and blanks skipped)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


@dataclass
class Stack:
    """One set of services (state dir `state`) serving the checkout `root`."""

    state: Path
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def _script(self, name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.extra_env, "MEDSCAN_SERVICES_DIR": str(self.state),
               "MEDSCAN_ROOT": str(self.root)}
        done = subprocess.run([str(SCRIPTS / name), *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=PROJECT)
        assert done.returncode == 0, f"{name} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def up(self, *services: str) -> str:
        return self._script("services-up.sh", *services).stdout

    def down(self, *services: str) -> str:
        return self._script("services-down.sh", *services).stdout

    @property
    def env(self) -> dict[str, str]:
        return read_env_file(self.state / "services.env")

    def client_env(self, **overrides: str) -> dict[str, str]:
        """The environment of a worker/task: this process's, plus every service setting."""
        env = {**os.environ, **self.env, **self.extra_env, **overrides}
        for name in ("MLFLOW_REGISTRY_URI",):   # a store an earlier test of this process set
            env.pop(name, None)
        return env

    def startup_times(self) -> dict[str, float]:
        """The latest start-up seconds of each service (startup-times.tsv)."""
        times: dict[str, float] = {}
        for line in (self.state / "startup-times.tsv").read_text().splitlines():
            _, name, seconds = line.split("\t")
            times[name] = float(seconds)
        return times

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.state / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else f"(no {path})"

    def s3(self) -> Any:
        import boto3

        env = self.env
        return boto3.client("s3", endpoint_url=env["MEDSCAN_S3_ENDPOINT_URL"],
                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def airflow(self) -> "AirflowApi":
        env = self.env
        return AirflowApi(env["AIRFLOW__API__BASE_URL"], env["MEDSCAN_AIRFLOW_USER"], env["MEDSCAN_AIRFLOW_PASSWORD"])


@dataclass
class AirflowApi:
    """The few REST calls an operator (or an S3 event handler) makes: /auth/token, then /api/v2."""

    base: str
    user: str
    password: str
    token: str | None = None

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self.token is None and not path.startswith("/auth/"):
            self.token = self._call("POST", "/auth/token", {"username": self.user, "password": self.password})["access_token"]
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode()[:2000]}") from None
        return json.loads(text) if text else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict[str, Any]:
        """The DAG once the dag-processor has parsed it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._call("GET", f"/api/v2/dags/{dag_id}")
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(3)

    def dag_ids(self) -> list[str]:
        return sorted(d["dag_id"] for d in self._call("GET", "/api/v2/dags?limit=100")["dags"])

    def tasks(self, dag_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/v2/dags/{dag_id}/tasks")["tasks"]

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        run = self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        found = self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        return {ti["task_id"]: ti for ti in found["task_instances"]}

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.run_state(dag_id, run_id)) not in TERMINAL:
            if time.monotonic() > deadline:
                return state
            time.sleep(5)
        return state

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        entry = self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
                                  "/xcomEntries/return_value?deserialize=true&stringify=false")
        return entry["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        found = self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
                                  f"/logs/{try_number}?full_content=true")
        content = found.get("content")
        if isinstance(content, list):
            return "\n".join(str(c.get("event", c)) if isinstance(c, dict) else str(c) for c in content)
        return str(content)
