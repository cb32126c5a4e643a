"""`python -m pipelines.webapp` (make serve): the clinician app on 127.0.0.1:8000.

MEDSCAN_PORT changes the port; MEDSCAN_HOST the address (127.0.0.1 unless you put a TLS proxy in
front on purpose). MEDSCAN_ADMIN_PASSWORD seeds the first admin; without it a generated password
is printed once. uvicorn's own access log is off: the app logs method, path and status only.
"""
from __future__ import annotations

import logging
import os

import uvicorn

from pipelines.webapp.app import app_from_env


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    host = os.environ.get("MEDSCAN_HOST", "127.0.0.1")
    port = int(os.environ.get("MEDSCAN_PORT", "8000"))
    uvicorn.run(app_from_env(), host=host, port=port, access_log=False, timeout_keep_alive=5,
                limit_concurrency=64, h11_max_incomplete_event_size=64 * 1024, log_level="info")


if __name__ == "__main__":
    main()
