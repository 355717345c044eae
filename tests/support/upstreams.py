"""Tiny HTTP servers standing for an app's slots behind a proxy: each answers its own name.

`GET /` answers the name at once; `GET /slow` answers it only when the test calls `release()`,
and `slow_started` is set as soon as such a request arrived, so a test can hold a request in flight
on one slot, switch the proxy, and then let it finish: no sleeps, only events.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from contextlib import contextmanager

HOLD_LIMIT = 60.0  # seconds a /slow request waits for release() at most, so a failed test cannot hang


class Upstream:
    """One slot's server on 127.0.0.1 (a kernel-chosen port, bound at once, so no race)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.slow_started = threading.Event()
        self._release = threading.Event()
        self.served = 0  # requests answered, any path
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a proxy's connection pool expects

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.startswith("/slow"):
                    upstream.slow_started.set()
                    upstream._release.wait(HOLD_LIMIT)
                body = upstream.name.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with upstream._lock:
                    upstream.served += 1

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # a proxy opening connections in a burst must not see a full backlog

            def handle_error(self, request: object, client_address: object) -> None:
                # A proxy closing its idle keep-alive connection to us (on a reload, at exit) is normal.
                import sys

                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"upstream-{name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Let every held /slow request (and later ones) answer."""
        self._release.set()

    def close(self) -> None:
        """Stop accepting and answering; held requests are released first."""
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def upstreams(*names: str) -> Iterator[list[Upstream]]:
    """One running Upstream per name, closed at the end."""
    started = [Upstream(name) for name in names]
    try:
        yield started
    finally:
        for upstream in started:
            upstream.close()
