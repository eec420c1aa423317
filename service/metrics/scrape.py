"""The /metrics endpoint: a small bounded HTTP server of its own, on its own port."""

from __future__ import annotations

import http.server
import threading
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class MetricsServer(http.server.HTTPServer):
    """/metrics on a bounded server: a few worker threads (prometheus_client's own server
    starts a thread per connection), connections beyond them and a short backlog closed at
    once, and every connection timed out after a few seconds (no slow client holds a worker)."""

    WORKERS = 2
    BACKLOG = 4  # connections waiting for a worker; more are closed
    TIMEOUT_SECONDS = 5.0

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry):
        self.registry = registry
        self._pool = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="sdedit-metrics")
        self._slots = threading.BoundedSemaphore(self.WORKERS + self.BACKLOG)
        self.refused = 0
        super().__init__(address, _MetricsHandler)

    @classmethod
    def start(cls, registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
        """Serving on its own thread (port 0 = a free one)."""
        server = cls((host, port), registry)
        threading.Thread(target=server.serve_forever, name="sdedit-metrics", daemon=True).start()
        return server

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        self._pool.submit(self._handle, request, client_address)

    def _handle(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - a broken connection is that client's problem
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        pass  # no traceback per dropped scrape

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    timeout = MetricsServer.TIMEOUT_SECONDS
    server: MetricsServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass  # no log line per scrape
