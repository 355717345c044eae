"""A counting, fault-injecting HTTP proxy in front of a registry on 127.0.0.1.

Clients talk to the proxy as if it were the registry (`proxy.host` goes into the
image reference). Every request is counted by (method, kind), kind taken from the
path: manifest, blob upload, blob, token, other. Faults queued with `inject`
apply to the next matching requests: a TCP reset, an error status (optionally
with Retry-After), a delay longer than the client's timeout, a truncated body,
a response stripped of Docker-Content-Digest, or one whose Docker-Content-Digest is
replaced by `Fault.digest` (a lying registry, or something on the way to a plain-HTTP one).
`aliases` serve an upstream repository under other names (pulls only: bodies are not rewritten).
"""

from __future__ import annotations

import collections
import http.client
import re
import socket
import struct
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

FaultAction = Literal["reset", "status", "delay", "truncate", "strip_digest", "set_digest"]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate"}
MAX_DELAY = 30.0  # a delay fault never holds a thread longer than this
UPSTREAM_TIMEOUT = 30.0


@dataclass
class Fault:
    action: FaultAction
    kind: str | None = "manifest"  # which requests it hits; None: any
    method: str | None = None
    times: int | None = 1  # None: every matching request until cleared
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0
    path_contains: str | None = None  # only requests whose path contains this (e.g. one digest)
    digest: str = ""  # set_digest: the Docker-Content-Digest value sent instead of the registry's

    def matches(self, method: str, kind: str, path: str = "") -> bool:
        return ((self.kind is None or self.kind == kind) and (self.method is None or self.method == method)
                and (self.path_contains is None or self.path_contains in path))


def request_kind(path: str) -> str:
    path = path.split("?", 1)[0]
    if re.search(r"/token$|/auth$|/oauth2?/token", path):
        return "token"
    if re.match(r"^/v2/.+/manifests/[^/]+$", path):
        return "manifest"
    if re.match(r"^/v2/.+/blobs/uploads(/.*)?$", path):
        return "blob upload"
    if re.match(r"^/v2/.+/blobs/[^/]+$", path):
        return "blob"
    return "other"


@dataclass
class RegistryProxy:
    upstream_host: str
    upstream_port: int
    request_counts: collections.Counter = field(default_factory=collections.Counter)
    request_bytes: collections.Counter = field(default_factory=collections.Counter)  # body bytes sent, by (method, kind)
    faults: list[Fault] = field(default_factory=list)
    faults_applied: collections.Counter = field(default_factory=collections.Counter)
    aliases: dict[str, str] = field(default_factory=dict)  # repository name clients use -> the upstream's
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        return self._server.server_address[1]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}"

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.request_counts.clear()
            self.request_bytes.clear()
            self.faults_applied.clear()

    def count(self, method: str, kind: str) -> int:
        with self._lock:
            return self.request_counts[(method, kind)]

    def take_fault(self, method: str, kind: str, path: str = "") -> Fault | None:
        """Count the request and hand out the first fault it triggers, if any."""
        with self._lock:
            self.request_counts[(method, kind)] += 1
            for fault in self.faults:
                if fault.matches(method, kind, path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
                    self.faults_applied[fault.action] += 1
                    return fault
        return None

    def unseen_name(self, repository: str) -> str:
        """A new image name (host/alias, no tag) for the upstream's `repository`, which no engine has
        pulled from. An engine pull of it must ask this proxy for the manifest: Docker 20.10 keeps a
        manifest in its content store labelled with the registry host and repository it came from, and
        pulls that digest from that source again with no manifest request (a /v2/ ping only), even
        after every name was untagged. This proxy's ephemeral port may have been an earlier proxy's
        (another test, an earlier run) that pulled the same images (checked by hand: a second proxy on
        a reused port saw only the ping for rollout-test/app, and a HEAD for an alias)."""
        alias = f"unseen-{uuid.uuid4().hex[:12]}/{repository.rpartition('/')[2]}"
        self.aliases[alias] = repository
        return f"{self.host}/{alias}"

    def upstream_path(self, path: str) -> str:
        """path with an aliased repository name replaced by the upstream's."""
        for alias, repository in self.aliases.items():
            if path.startswith(f"/v2/{alias}/"):
                return f"/v2/{repository}/" + path.removeprefix(f"/v2/{alias}/")
        return path

    def start(self) -> "RegistryProxy":
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="registry-proxy", daemon=True).start()
        return self

    def close(self) -> None:
        self._stopping.set()  # wakes delayed handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "RegistryProxy":
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_proxy(upstream: str) -> RegistryProxy:
    """A started proxy in front of `upstream` ("127.0.0.1:PORT")."""
    host, _, port = upstream.rpartition(":")
    return RegistryProxy(host, int(port)).start()


@dataclass
class Upstream:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


def forward(proxy: RegistryProxy, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Upstream:
    connection = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=UPSTREAM_TIMEOUT)
    try:
        # Keep the client's Host header: the registry builds upload Locations from it,
        # so they point back at the proxy.
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                connection.putheader(name, value)
        if body or method in ("POST", "PUT", "PATCH"):
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        data = b"" if method == "HEAD" else response.read()
        return Upstream(response.status, response.reason, response.getheaders(), data)
    finally:
        connection.close()


def read_chunked(stream: Any) -> bytes:
    """A chunked request body (RFC 9112 section 7.1), trailers dropped."""
    body = b""
    while True:
        size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline() not in (b"\r\n", b"\n", b""):
                pass
            return body
        body += stream.read(size)
        stream.readline()


def _handler_for(proxy: RegistryProxy) -> type[BaseHTTPRequestHandler]:
    class ProxyHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as the Go registry behind it: a body never waits for a delayed ACK

        def handle_any(self) -> None:
            kind = request_kind(self.path)
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                body = read_chunked(self.rfile)  # `docker push` uploads layers chunked
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with proxy._lock:
                proxy.request_bytes[(self.command, kind)] += len(body)
            fault = proxy.take_fault(self.command, kind, self.path)
            if fault is not None and fault.action == "reset":
                return self.reset_connection()
            if fault is not None and fault.action == "status":
                return self.send_status(fault)
            if fault is not None and fault.action == "delay":
                if proxy._stopping.wait(min(fault.delay, MAX_DELAY)):
                    return self.reset_connection()
            upstream = forward(proxy, self.command, proxy.upstream_path(self.path), list(self.headers.items()), body)
            self.relay(upstream, fault)

        def relay(self, upstream: Upstream, fault: Fault | None) -> None:
            self.send_response(upstream.status, upstream.reason)
            length = None
            for name, value in upstream.headers:
                lowered = name.lower()
                if lowered in HOP_BY_HOP or lowered in ("date", "server"):
                    continue
                if lowered == "docker-content-digest" and fault is not None and fault.action == "strip_digest":
                    continue
                if lowered == "docker-content-digest" and fault is not None and fault.action == "set_digest":
                    value = fault.digest
                if lowered == "content-length":
                    length = value
                    continue
                self.send_header(name, value)
            if self.command == "HEAD":
                self.send_header("Content-Length", length or "0")
            else:
                self.send_header("Content-Length", str(len(upstream.body)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if fault is not None and fault.action == "truncate":
                self.wfile.write(upstream.body[: len(upstream.body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return self.reset_connection()
            self.wfile.write(upstream.body)

        def send_status(self, fault: Fault) -> None:
            payload = b'{"errors":[{"code":"UNAVAILABLE","message":"injected by test proxy"}]}'
            self.send_response(fault.status)
            if fault.retry_after is not None:
                self.send_header("Retry-After", fault.retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def reset_connection(self) -> None:
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            self.close_connection = True
            try:
                self.wfile.flush()
            except OSError:
                pass
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except (ConnectionError, BrokenPipeError, socket.timeout, OSError):
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass  # counts live in proxy.request_counts

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_any

    return ProxyHandler
