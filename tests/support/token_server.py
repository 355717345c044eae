"""A real token service for distribution's `auth: token` mode, on 127.0.0.1.

distribution 2.8 (registry/auth/token/token.go) accepts a JWT whose header
carries either `x5c` (a certificate chain ending in a cert from the
`rootcertbundle`), a `jwk`, or a libtrust `kid`. We sign with RS256 and send
`x5c` holding our self-signed certificate, which is itself the root bundle, so
no libtrust key-id arithmetic is needed. Claims: iss, sub, aud (a plain string
in 2.8), exp, nbf, iat, jti and `access` [{type, name, actions}].
"""

from __future__ import annotations

import base64
import collections
import datetime
import ipaddress
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class KeyPair:
    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    cert_path: Path
    key_path: Path


def make_self_signed(directory: Path, common_name: str = "127.0.0.1", dns_names: tuple[str, ...] = ()) -> KeyPair:
    """An RSA key and a self-signed cert valid for 127.0.0.1, localhost and `dns_names`, written as PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names = x509.SubjectAlternativeName(
        [x509.DNSName(name) for name in ("localhost", *dns_names)]
        + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(alt_names, critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{common_name}.crt"
    key_path = directory / f"{common_name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return KeyPair(key, certificate, cert_path, key_path)


def parse_scope(scope: str) -> dict[str, object] | None:
    """'repository:team/web:pull,push' -> an `access` entry; None if malformed."""
    parts = scope.split(":")
    if len(parts) < 3:
        return None
    resource_type, actions = parts[0], parts[-1]
    name = ":".join(parts[1:-1])  # names may carry a registry port
    return {"type": resource_type, "name": name, "actions": [a for a in actions.split(",") if a]}


@dataclass
class TokenServer:
    """Issues registry tokens to users whose Basic credentials match `users`."""

    key_pair: KeyPair
    users: dict[str, str]
    service: str = "test-registry"
    issuer: str = "rollout-test-issuer"
    expires_in: int | None = 300  # None: leave it out, clients must assume 60 s
    token_field: str = "token"  # "token" or "access_token", both are valid per the spec
    allow_anonymous: bool = False
    denied_repositories: set[str] = field(default_factory=set)  # tokens for these carry no access
    requests_seen: collections.Counter = field(default_factory=collections.Counter)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        assert self._server is not None, "token server not started"
        return self._server.server_address[1]

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def root_cert_path(self) -> Path:
        return self.key_pair.cert_path

    @property
    def token_requests(self) -> int:
        with self._lock:
            return sum(self.requests_seen.values())

    def issue(self, subject: str, scopes: list[str]) -> str:
        now = int(time.time())
        access = [
            entry
            for entry in map(parse_scope, scopes)
            if entry is not None and entry["name"] not in self.denied_repositories
        ]
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "iat": now,
            "nbf": now - 5,
            "exp": now + (self.expires_in or 60),
            "jti": secrets.token_hex(8),
            "access": access,
        }
        chain = [base64.b64encode(self.key_pair.certificate.public_bytes(serialization.Encoding.DER)).decode()]
        return jwt.encode(claims, self.key_pair.private_key, algorithm="RS256", headers={"x5c": chain})

    def bearer_auth(self, repository: str, actions: str = "pull,push") -> "BearerAuth":
        """Auth for test set-up (e.g. pushing) that bypasses HTTP, so it is not counted."""
        return BearerAuth(self.issue("test-setup", [f"repository:{repository}:{actions}"]))

    def authenticate(self, authorization: str | None) -> str | None:
        """The user name if the Basic header matches; None otherwise."""
        if not authorization or not authorization.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        except ValueError:
            return None
        expected = self.users.get(user)
        if expected is not None and secrets.compare_digest(expected, password):
            return user
        return None

    def record(self, user: str | None, scopes: list[str]) -> None:
        with self._lock:
            for scope in scopes or [""]:
                self.requests_seen[(user, scope)] += 1

    def start(self) -> "TokenServer":
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="token-server", daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "TokenServer":
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(<hidden>)"


def _handler_for(service: TokenServer) -> type[BaseHTTPRequestHandler]:
    class TokenHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY, as a Go token service has by default (net.TCPConn.SetNoDelay): without it the
        # body, written after the headers, waits for the client's delayed ACK, ~40 ms per token on a
        # kept-alive connection, which only a client that reuses connections (rollout) paid (B4).
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            scopes = query.get("scope", [])
            user = service.authenticate(self.headers.get("Authorization"))
            service.record(user, scopes)
            if url.path != "/token":
                return self._reply(404, {"errors": [{"code": "NOT_FOUND"}]})
            if user is None and not (service.allow_anonymous and "Authorization" not in self.headers):
                return self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            token = service.issue(user or "", scopes)
            body: dict[str, object] = {service.token_field: token, "issued_at": _now_iso()}
            if service.expires_in is not None:
                body["expires_in"] = service.expires_in
            self._reply(200, body)

        def _reply(self, status: int, body: dict[str, object]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output quiet; counts are in service.requests_seen

    return TokenHandler


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def start_token_server(directory: Path, users: dict[str, str], **options: object) -> TokenServer:
    """A started token server whose signing cert lives in `directory`; close() it (or use `with`)."""
    key_pair = make_self_signed(Path(directory), common_name="token-signer")
    return TokenServer(key_pair=key_pair, users=users, **options).start()  # type: ignore[arg-type]
