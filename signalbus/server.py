"""The listener's HTTP port: metrics, probes and the status page.

``flask signalbus listen --metrics-port PORT`` (or ``SIGNALBUS_METRICS_PORT``)
serves, on ``SIGNALBUS_METRICS_HOST`` (default 127.0.0.1):

- ``/metrics``: Prometheus metrics (:mod:`signalbus.metrics`);
- ``/healthz`` and ``/readyz``: probes with a JSON body (:mod:`signalbus.probes`);
- ``/``: the status page, and ``/status.json``, what it shows
  (:mod:`signalbus.status_page`).

Requests are served by threads of their own, never by the listener's
workers or main loop; everything served is read-only.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .activity import Activity
from .backlog_watch import BacklogWatch
from .metrics import CONTENT_TYPE, metrics_registry, render_metrics
from .probes import Probe, health, readiness
from .status_page import render_page, status_document

__all__ = ["StatusServer"]

logger = logging.getLogger(__name__)


class StatusServer:
    """Serves one listener's metrics, probes and status page on *host*:*port*.

    Port 0 picks a free port (see :attr:`port`). :meth:`start` raises
    ``OSError`` when the address cannot be bound.
    """

    def __init__(
        self,
        host: str,
        port: int,
        activity: Activity,
        backlogs: BacklogWatch,
        ready_failing_seconds: float,
    ) -> None:
        self.host = host
        self.requested_port = port
        self._activity = activity
        self._backlogs = backlogs
        self._ready_failing_seconds = ready_failing_seconds
        self._registry = metrics_registry(activity, backlogs)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (the one picked, for port 0); the requested one before :meth:`start`."""
        return self.requested_port if self._server is None else self._server.server_address[1]

    def start(self) -> None:
        """Bind the port and serve it from a thread of its own."""
        server = ThreadingHTTPServer((self.host, self.requested_port), _Handler)
        server.daemon_threads = True
        server.status = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="signalbus-http", daemon=True
        )
        self._thread.start()
        logger.info("Serving metrics, probes and the status page on http://%s:%d/",
                    self.host, self.port)  # fmt: skip

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def respond(self, path: str) -> tuple[HTTPStatus, str, bytes]:
        """Status, content type and body for a GET of *path*."""
        route = path.split("?", 1)[0]
        if route == "/metrics":
            return HTTPStatus.OK, CONTENT_TYPE, render_metrics(self._registry)
        if route == "/healthz":
            return _probe(health(self._activity.snapshot()))
        if route == "/readyz":
            return _probe(readiness(self._activity.snapshot(), self._ready_failing_seconds))
        if route in ("/", "/status.json"):
            document = status_document(self._activity.snapshot(), self._backlogs.current())
            if route == "/":
                return HTTPStatus.OK, "text/html; charset=utf-8", render_page(document).encode()
            return HTTPStatus.OK, "application/json", _json(document)
        return HTTPStatus.NOT_FOUND, "application/json", _json({"error": f"no page {route}"})


class _Handler(BaseHTTPRequestHandler):
    server_version = "signalbus"

    def do_GET(self) -> None:
        status: StatusServer = self.server.status  # type: ignore[attr-defined]
        try:
            code, content_type, body = status.respond(self.path)
        except Exception:
            logger.exception("Serving %s failed", self.path)
            code, content_type = HTTPStatus.INTERNAL_SERVER_ERROR, "application/json"
            body = _json({"error": "internal error; see the listener's log"})
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


def _probe(probe: Probe) -> tuple[HTTPStatus, str, bytes]:
    code = HTTPStatus.OK if probe.ok else HTTPStatus.SERVICE_UNAVAILABLE
    return code, "application/json", _json(probe.body)


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()
