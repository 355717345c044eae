"""A real forwarding HTTP proxy on 127.0.0.1, counting what goes through it.

Clients reach it through http_proxy / HTTPS_PROXY like any corporate proxy: plain HTTP
arrives as absolute-URI requests ("GET http://host:port/path HTTP/1.1") and is forwarded;
HTTPS arrives as CONNECT host:port and is tunnelled byte for byte. `hosts` counts requests
by the host:port they were for, so a test can tell which traffic went through the proxy.
"""

from __future__ import annotations

import collections
import http.client
import select
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate"}
UPSTREAM_TIMEOUT = 30.0


@dataclass
class ForwardProxy:
    url: str = ""
    hosts: collections.Counter = field(default_factory=collections.Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self, host: str) -> int:
        with self._lock:
            return self.hosts[host]

    def count(self, host: str) -> None:
        with self._lock:
            self.hosts[host] += 1


@contextmanager
def start_forward_proxy() -> Iterator[ForwardProxy]:
    """A started proxy on 127.0.0.1 (its address in `url`), stopped on leaving."""
    proxy = ForwardProxy()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(proxy))
    server.daemon_threads = True
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, name="forward-proxy", daemon=True).start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()


def _handler_for(proxy: ForwardProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self) -> None:
            target = urllib.parse.urlsplit(self.path)
            if target.scheme != "http" or not target.hostname:
                self.send_error(400, "a forwarding proxy takes absolute http:// URIs")
                return
            port = target.port or 80
            proxy.count(f"{target.hostname}:{port}")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            upstream = http.client.HTTPConnection(target.hostname, port, timeout=UPSTREAM_TIMEOUT)
            try:
                path = target.path + (f"?{target.query}" if target.query else "")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream.request(self.command, path or "/", body=body or None, headers=headers)
                response = upstream.getresponse()
                data = b"" if self.command == "HEAD" else response.read()
                self.send_response(response.status, response.reason)
                length = None
                for name, value in response.getheaders():
                    if name.lower() in HOP_BY_HOP or name.lower() in ("date", "server"):
                        continue
                    if name.lower() == "content-length":
                        length = value
                        continue
                    self.send_header(name, value)
                self.send_header("Content-Length", (length or "0") if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                upstream.close()

        def do_CONNECT(self) -> None:  # noqa: N802 - http.server's naming
            host, _, port = self.path.rpartition(":")
            proxy.count(f"{host.strip('[]')}:{port}")
            try:
                upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=UPSTREAM_TIMEOUT)
            except OSError:
                self.send_error(502, "cannot reach the destination")
                return
            self.send_response(200, "Connection Established")
            self.end_headers()
            self.close_connection = True
            _pipe(self.connection, upstream)

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except (ConnectionError, socket.timeout, OSError):
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # counts live in proxy.hosts

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = forward

    return Handler


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sockets = [client, upstream]
    try:
        while True:
            readable, _, broken = select.select(sockets, [], sockets, UPSTREAM_TIMEOUT)
            if broken or not readable:
                return
            for source in readable:
                data = source.recv(65536)
                if not data:
                    return
                (upstream if source is client else client).sendall(data)
    finally:
        upstream.close()
