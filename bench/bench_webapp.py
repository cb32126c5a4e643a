"""Serving speed: the clinician app (FastAPI + micro-batching adapter) against the old http.server
(`pipelines.serve --http`), the same tiny champion, measured side by side in one run.

    python -m bench.bench_webapp            # 32 px cnn_small champion, 200 single-client uploads

A throw-away project gets a champion trained for one epoch on random 32 px images (registered in
its own MLflow store, exactly as promote leaves one). Each server runs in its own process on
127.0.0.1 (as `make serve` / `serve --http` start them); the clients run in this process.
(a) one client, sequential: p50/p90 per upload end to end: the app's POST /upload (multipart
    form, session cookie, CSRF, metadata, the rendered result page; the heat map is a separate
    request the page's <img> makes and is not fetched here) vs the old POST /predict (raw bytes).
(b) 8 concurrent clients: images/s over a fixed number of uploads each.
Bounded loops, 127.0.0.1 only. Writes bench/results/webapp.{json,md}.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
RESULTS = PROJECT / "bench" / "results"
PASSWORD = "bench-admin-password"
BASELINE_PUBLISHED = 11.5   # images/s of serve --http quoted in issue 11 (one client)


def train_champion(root: Path, size: int) -> str:
    """Register a one-epoch cnn_small (HAM10000 classes + metadata) as the project's champion."""
    import mlflow
    import numpy as np
    from mlflow import MlflowClient

    from pipelines import registry, tracking
    from pipelines.config import ARTIFACT_DIR, TRAIN_INFO_FILE, Paths, load_params
    from pipelines.datasets import get_adapter
    from pipelines.contract import from_train_info
    from pipelines.pyfunc import log_pyfunc
    from pipelines.train import model_inputs_info
    from pipelines.zoo import build_model

    params = load_params(root)
    classes = list(get_adapter("ham10000").classes)
    info = {"arch": "cnn_small", "dataset": "ham10000", "classes": classes, "image_size": size,
            **model_inputs_info("ham10000", True), "tta": "none"}
    model = build_model(params["zoo"]["cnn_small"], (size, size, 3), len(classes),
                        len(info["metadata_features"]), name="cnn_small")
    model.compile("adam", "categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = {"image": rng.uniform(0, 255, (64, size, size, 3)).astype("float32"),
         "metadata": rng.uniform(0, 1, (64, len(info["metadata_features"]))).astype("float32")}
    model.fit(x, np.eye(len(classes))[rng.integers(0, len(classes), 64)], epochs=1, verbose=0)
    experiment = tracking.configure(Paths(root), "ham10000")
    with mlflow.start_run(experiment_id=experiment) as run:
        info_path = root / TRAIN_INFO_FILE
        info_path.write_text(json.dumps({**info, "run_id": run.info.run_id}))
        mlflow.log_artifact(str(info_path), artifact_path=ARTIFACT_DIR)
        # as train + evaluate do: the contract from train_info, calibrated (T=1, the params' target),
        # logged inside the pyfunc that promote registers
        contract = from_train_info(info, params).calibrated(
            1.0, 0.5, float(params["evaluate"]["abstain_target_precision"]))
        keras_path = root / "model.keras"
        model.save(keras_path)
        with tempfile.TemporaryDirectory() as tmp:
            log_pyfunc(keras_path, contract, Path(tmp))
    name = registry.model_name(params)
    version = registry.register(MlflowClient(), name, run.info.run_id, {})
    registry.set_champion(MlflowClient(), name, version.version)
    return f"{name}/{version.version}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(root: Path, args: list[str], port: int, ready: Callable[[], bool]) -> subprocess.Popen:
    env = {**os.environ, "MEDSCAN_ROOT": str(root), "MEDSCAN_PORT": str(port), "MEDSCAN_ADMIN_PASSWORD": PASSWORD,
           "PYTHONPATH": str(PROJECT)}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(root / f"{args[0]}.log", "w"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args} exited: see {root / (args[0] + '.log')}")
        try:
            if ready():
                return proc
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"{args} did not become ready in 180 s")


def demo_image(size: int = 128) -> bytes:
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[:size, :size]
    lesion = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    rng = np.random.default_rng(1)
    pixels = np.where(lesion[..., None], [120, 60, 40], [220, 180, 160]) + rng.normal(0, 12, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class AppClient:
    """A logged-in browser-like session against the app."""

    def __init__(self, base: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=base, timeout=30)
        token = re.search(r'name="csrf_token" value="([^"]+)"', self.http.get("/login").text).group(1)
        self.http.post("/login", data={"username": "admin", "password": PASSWORD, "csrf_token": token})
        self.csrf = re.search(r'name="csrf_token" value="([^"]+)"', self.http.get("/upload").text).group(1)

    def upload(self, image: bytes) -> None:
        answer = self.http.post("/upload", data={"csrf_token": self.csrf, "age": "55", "sex": "male",
                                                 "localization": "back"},
                                files={"image": ("lesion.jpg", image, "image/jpeg")})
        if answer.status_code != 200 or answer.text.count('class="diagnosis"') != 5:
            raise RuntimeError(f"app upload failed: {answer.status_code}")


class OldClient:
    def __init__(self, base: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=base, timeout=30)

    def upload(self, image: bytes) -> None:
        answer = self.http.post("/predict", params={"age": "55", "sex": "male", "localization": "back"},
                                content=image)
        if answer.status_code != 200 or len(answer.json()["top"]) != 5:
            raise RuntimeError(f"old upload failed: {answer.status_code}")


def cpu_seconds(proc: subprocess.Popen) -> float:
    """User + system CPU time of a server process so far (Linux /proc)."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(proc: subprocess.Popen, run: Callable[[], Any], images: int) -> tuple[Any, float]:
    """run()'s result and the server's CPU milliseconds per image during it."""
    before = cpu_seconds(proc)
    result = run()
    return result, round((cpu_seconds(proc) - before) * 1000 / images, 2)


def sequential(client: Any, image: bytes, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        client.upload(image)
        times.append((time.perf_counter() - started) * 1000)
    return times


def concurrent(make: Callable[[], Any], image: bytes, clients: int, each: int) -> float:
    """images/s for `clients` threads each uploading `each` images (after one warm-up each)."""
    sessions = [make() for _ in range(clients)]
    for s in sessions:
        s.upload(image)
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def work(s: Any) -> None:
        barrier.wait()
        try:
            for _ in range(each):
                s.upload(image)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return clients * each / wall


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def render(result: dict[str, Any], argv: list[str]) -> str:
    """The Markdown report of one run's figures."""
    a, o = result["app"], result["old_http_server"]
    clients = next(int(key.split("_")[0]) for key in a if key.endswith("_clients_images_per_s"))
    k, c = f"{clients}_clients_images_per_s", f"server_cpu_ms_per_image_{clients}_clients"
    return f"""# Serving speed: the clinician app vs the old http.server

`python -m bench.bench_webapp {' '.join(argv)}`: champion `{result['champion']}` (cnn_small,
{result['image_size']} px, HAM10000 classes + metadata, one epoch on random images), a {result['upload_bytes']}-byte JPEG upload
with age/sex/site, both servers in their own process on 127.0.0.1, clients in the bench process (httpx,
keep-alive), {result['cpu_count']} CPU cores shared with other work (load average at the end
{result['load_average_end']}), wall {result['wall_s']} s.

App: `POST /upload` as a browser sends it (multipart form, session cookie, CSRF token), the result page
rendered; the Grad-CAM heat map is the page's separate `<img>` request and is not fetched. Old:
`POST /predict` with raw bytes, metadata in the query string (`pipelines.serve --http`).

| server | one client p50 ms | p90 ms | one client images/s | {clients} clients images/s | server CPU ms/image, 1 client | {clients} clients |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
| app (FastAPI, micro-batching) | {a['one_client_p50_ms']} | {a['one_client_p90_ms']} | {a['one_client_images_per_s']} | {a[k]} | {a['server_cpu_ms_per_image_one_client']} | {a[c]} |
| old http.server | {o['one_client_p50_ms']} | {o['one_client_p90_ms']} | {o['one_client_images_per_s']} | {o[k]} | {o['server_cpu_ms_per_image_one_client']} | {o[c]} |

Server CPU per image is the server process's user + system time over the phase divided by the images
served: unlike wall-clock figures it does not grow with the load other processes put on the cores.
At {a[c]} ms per image, {result['cpu_count']} otherwise idle cores hold the CPU for at most
{result['cpu_count'] * 1000 / a[c]:.0f} images/s of the app (an upper bound from the CPU budget, not a measurement;
the clients need CPU too).

Targets: one client p50 <= 20 ms (app: **{a['one_client_p50_ms']} ms**); {clients} clients >= 150 images/s
(app: **{a[k]}**). Ratio app / old, one client images/s: **{a['one_client_images_per_s'] / o['one_client_images_per_s']:.1f}x**;
{clients} clients: **{a[k] / o[k]:.1f}x**. Issue 11 quoted {BASELINE_PUBLISHED} images/s for the old server.
Samples: app {a['n']} sequential + {clients}x{a['each']} concurrent, old {o['n']} sequential +
{clients}x{o['each']} concurrent.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("-n", type=int, default=200, help="sequential uploads per server")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--each", type=int, default=60, help="uploads per concurrent client")
    parser.add_argument("--old-n", type=int, default=60, help="sequential uploads to the old server")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    import httpx

    work = Path(tempfile.mkdtemp(prefix="medscan-bench-webapp-"))
    procs: list[subprocess.Popen] = []
    try:
        shutil.copy2(PROJECT / "params.yaml", work / "params.yaml")
        champion = train_champion(work, args.image_size)
        image = demo_image()
        app_port, old_port = free_port(), free_port()
        app_base, old_base = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{old_port}"
        procs.append(start(work, ["pipelines.webapp"], app_port,
                           lambda: httpx.get(f"{app_base}/healthz", timeout=2).status_code == 200))
        procs.append(start(work, ["pipelines.serve", "--http", str(old_port)], old_port,
                           lambda: httpx.post(f"{old_base}/nothing", timeout=2).status_code == 404))
        app, old = AppClient(app_base), OldClient(old_base)
        sequential(app, image, 20)                    # warm-up: traces, caches
        sequential(old, image, 5)
        old_each = max(5, args.each // 6)
        app_seq, app_seq_cpu = measured(procs[0], lambda: sequential(app, image, args.n), args.n)
        old_seq, old_seq_cpu = measured(procs[1], lambda: sequential(old, image, args.old_n), args.old_n)
        # (the warm-up upload of each concurrent client is counted in the CPU per image)
        app_par, app_par_cpu = measured(procs[0], lambda: concurrent(lambda: AppClient(app_base), image,
                                        args.clients, args.each), args.clients * (args.each + 1))
        old_par, old_par_cpu = measured(procs[1], lambda: concurrent(lambda: OldClient(old_base), image,
                                        args.clients, old_each), args.clients * (old_each + 1))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "argv": list(argv if argv is not None else sys.argv[1:]), "champion": champion, "image_size": args.image_size, "upload_bytes": len(image),
        "cpu_count": os.cpu_count(), "load_average_end": round(os.getloadavg()[0], 2),
        "python": platform.python_version(), "wall_s": round(time.perf_counter() - began, 1),
        "app": {"one_client_p50_ms": round(statistics.median(app_seq), 2),
                "one_client_p90_ms": round(pct(app_seq, 90), 2),
                "one_client_images_per_s": round(1000 / statistics.mean(app_seq), 1),
                f"{args.clients}_clients_images_per_s": round(app_par, 1), "n": args.n,
                "each": args.each, "server_cpu_ms_per_image_one_client": app_seq_cpu,
                f"server_cpu_ms_per_image_{args.clients}_clients": app_par_cpu},
        "old_http_server": {"one_client_p50_ms": round(statistics.median(old_seq), 2),
                            "one_client_p90_ms": round(pct(old_seq, 90), 2),
                            "one_client_images_per_s": round(1000 / statistics.mean(old_seq), 1),
                            f"{args.clients}_clients_images_per_s": round(old_par, 1), "n": args.old_n,
                            "each": old_each, "server_cpu_ms_per_image_one_client": old_seq_cpu,
                            f"server_cpu_ms_per_image_{args.clients}_clients": old_par_cpu},
        "published_old_images_per_s": BASELINE_PUBLISHED,
        "targets": {"one_client_p50_ms": 20, f"{args.clients}_clients_images_per_s": 150},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "webapp.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render(result, result["argv"])
    (RESULTS / "webapp.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
