"""A small HTTP server on its own thread: ``/metrics``, ``/livez`` and ``/readyz``.

It reads the registry and the health checks, which read snapshots; it never touches the
consumer, so a scrape cannot slow or block the poll loop beyond a moment of the GIL.
``start`` raises OSError when the address is taken; requests are logged at debug level
(logger ``consumer.endpoints``).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumer.observability.health import Health, HealthReport

log = logging.getLogger("consumer.endpoints")


class ObservabilityServer:
    """Serves the registry and the health checks on ``host:port`` (port 0: any free port)."""

    def __init__(self, *, host: str, port: int, registry: CollectorRegistry,
                 health: Health) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._health = health
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Bind and serve on a daemon thread; returns the bound address. Raises OSError when
        the address is taken or not this host's."""
        self._server = ThreadingHTTPServer((self._host, self._port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,),
                                        name="consumer-http", daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        registry, health = self._registry, self._health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path in ("/livez", "/readyz"):
                    report = health.live() if path == "/livez" else health.ready()
                    self._health(report)
                else:
                    self._send(404, "text/plain; charset=utf-8",
                               b"not found: try /metrics, /livez or /readyz\n")

            def _health(self, report: HealthReport) -> None:
                body = json.dumps(report.body(), sort_keys=True).encode() + b"\n"
                self._send(200 if report.ok else 503, "application/json", body)

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s %s", self.address_string(), format % args)

        return Handler
