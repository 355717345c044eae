"""A file served over HTTP on loopback that a Dockerfile's `RUN wget` downloads, whose content a test
can change: what a scheduled `rebuild --no-cache` picks up and the build key cannot see (issue 15)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PayloadServer:
    """Serves `body` (bytes, changeable at any time) at `url` (any path); `paths` lists the paths asked
    for, in order; close() stops it."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.paths: list[str] = []
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                served.paths.append(self.path)
                body = served.body
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a test reads what it served from `body`

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="payload", daemon=True).start()

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT/payload"""
        return f"http://127.0.0.1:{self.server.server_address[1]}/payload"

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
