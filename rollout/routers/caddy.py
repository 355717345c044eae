"""Caddy 2 (Debian bookworm's 2.6) as a rollout router, through its admin API.

The route is found by its `@id` (`GET /id/<route>`): either a route whose handlers contain exactly
one `reverse_proxy` (inside `subroute` handlers too, as the Caddyfile adapter nests them), or the
`reverse_proxy` handler itself. A switch is ONE request, `PATCH /id/<route>/<path>/upstreams` with
`[{"dial": "HOST:PORT"}]`: Caddy builds the new config and, only if it provisions, swaps it in;
a new listener opens beside the old one (SO_REUSEPORT), the old one closes (connections queued on
it are reset unless the kernel migrates them: `reload_resets_queued_connections`) and the old
server shuts down gracefully, so requests in flight on the old upstream finish on it. A refused PATCH leaves the old config running
(Caddy rolls back), so a failed switch changes nothing. Other fields of the old upstream objects
(e.g. `max_requests`) are not carried over: rollout owns this route's upstream list.

Admin addresses: "http://HOST:PORT" and Caddy's own "unix//path/to/admin.sock" ("unix:///path"
too). Caddy refuses a Host it does not expect (DNS rebinding protection): over TCP we send
"HOST:PORT" as given and a matching Origin (for `enforce_origin`); over a unix socket Caddy 2.6
expects an empty Host, so that is what we send. Remote admin over TLS (`identity`/`remote`) is not
supported: use the unix socket or loopback.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote, urlsplit

from rollout.errors import ConfigError, RouterConfigError, RouterUnreachable, one_line
from rollout.routers import TIMEOUT, checked_upstream


log = logging.getLogger("rollout.routers.caddy")
_WARNED = False
MIGRATE_SETTING = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def reload_resets_queued_connections(setting: Path = MIGRATE_SETTING) -> bool:
    """Whether this Linux host would reset the connections waiting in the accept queue of Caddy's
    old listener at a config reload: Caddy 2.6 opens the new config's listener with SO_REUSEPORT and
    closes the old one, and only with net.ipv4.tcp_migrate_req = 1 (Linux >= 5.14,
    Documentation/networking/ip-sysctl.rst) does the kernel move them to the new listener. False
    when the setting is 1, or absent (not Linux, or a kernel that cannot migrate: nothing to advise)."""
    try:
        return setting.read_text().strip() == "0"
    except OSError:
        return False


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket (the stdlib has none)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        """Connect to the socket file instead of a TCP address."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class CaddyRouter:
    """The upstreams of one `@id`-named route of a running Caddy (see the module docstring).

    `admin` is "http://HOST:PORT" or "unix//PATH"; `route` the @id. Raises ConfigError (exit 2) for
    another admin form. Contacts nothing until a method is called.
    """

    def __init__(self, admin: str, route: str, timeout: float = TIMEOUT) -> None:
        self.admin, self.route, self.timeout = admin, route, timeout
        self._socket: str | None = None
        if admin.startswith("unix//") or admin.startswith("unix:///"):
            self._socket = admin[len("unix:/"):] if admin.startswith("unix:///") else admin[len("unix/"):]
            self._host = ""
        else:
            parts = urlsplit(admin)
            if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
                raise ConfigError(f"traffic.admin = {admin!r} is not a Caddy admin address: use"
                                  " http://127.0.0.1:2019 (Caddy's `admin` listen address) or unix//PATH")
            try:
                port = parts.port or 80
            except ValueError:
                raise ConfigError(f"traffic.admin = {admin!r} has a bad port") from None
            self._host = parts.netloc
            self._address = (parts.hostname, port)

    # -- the Router interface ------------------------------------------------------------------

    def check(self, upstreams: Sequence[str] = ()) -> None:
        """See rollout.routers.Router.check: the route exists and holds one switchable reverse_proxy
        (which can be given any upstream: `upstreams` are only checked for their form).
        Logs a warning (once per process) when this machine's kernel would reset connections queued
        at Caddy's reloads (see `reload_resets_queued_connections`)."""
        for to in upstreams:
            checked_upstream(to)
        self._locate()
        global _WARNED
        if not _WARNED and reload_resets_queued_connections():
            _WARNED = True
            log.warning("Caddy resets connections that are queued when a switch reloads its config unless"
                        " the kernel migrates them: run `sysctl -w net.ipv4.tcp_migrate_req=1` on this host"
                        " (and persist it in /etc/sysctl.d) for zero-downtime switches through Caddy")

    def upstreams(self) -> list[str]:
        """See rollout.routers.Router.upstreams: the `dial` of each upstream of the route's
        reverse_proxy, as Caddy has it (Caddy sends new requests to these, by its LB policy)."""
        _, handler = self._locate()
        return [str(u.get("dial", "")) for u in handler.get("upstreams") or [] if isinstance(u, dict)]

    def switch(self, to: str) -> None:
        """See rollout.routers.Router.switch: one PATCH of the handler's upstreams; Caddy applies it
        whole or not at all (a refused PATCH leaves the old config serving)."""
        checked_upstream(to)
        path, _ = self._locate()
        self._call("PATCH", f"{path}/upstreams", [{"dial": to}])

    # -- helpers -------------------------------------------------------------------------------

    def _id_path(self) -> str:
        return "/id/" + quote(self.route, safe="")

    def _locate(self) -> tuple[str, dict[str, Any]]:
        """(admin API path of the reverse_proxy handler, the handler) for the route's @id."""
        found = self._call("GET", self._id_path())
        handlers = list(_reverse_proxies(found, self._id_path()))
        where = f"Caddy at {self.admin}: the object with @id {self.route!r}"
        if not handlers:
            raise RouterConfigError(f"{where} has no reverse_proxy handler: put the @id on the route"
                                    " (or the reverse_proxy) that sends this app's traffic to its slot")
        if len(handlers) > 1:
            paths = ", ".join(p.split(self._id_path(), 1)[1].lstrip("/") or "." for p, _ in handlers)
            raise RouterConfigError(f"{where} holds {len(handlers)} reverse_proxy handlers ({paths}):"
                                    " put the @id on the one rollout should switch")
        path, handler = handlers[0]
        if handler.get("dynamic_upstreams"):
            raise RouterConfigError(f"{where} uses dynamic_upstreams: rollout sets static upstreams,"
                                    " remove dynamic_upstreams from that reverse_proxy")
        if not handler.get("upstreams"):
            raise RouterConfigError(f"{where} has a reverse_proxy without upstreams: give it the slot"
                                    " that serves now, e.g. \"upstreams\": [{\"dial\": \"127.0.0.1:18081\"}]")
        return path, handler

    def _connection(self) -> http.client.HTTPConnection:
        if self._socket is not None:
            return _UnixConnection(self._socket, self.timeout)
        return http.client.HTTPConnection(*self._address, timeout=self.timeout)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """One admin API request; the decoded JSON answer (None when empty). A 4xx is the proxy's
        config (RouterConfigError: no such @id, a refused change, a Host/Origin Caddy does not
        allow), and so is a 2xx-4xx answer that is not the admin API's (not JSON, or an error
        without Caddy's {"error": ...}: traffic.admin names a site, exit 2); no answer in time or
        a 5xx is RouterUnreachable."""
        conn = self._connection()
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", self._host)
            if self._socket is None:
                conn.putheader("Origin", f"http://{self._host}")
            data = b""
            if body is not None:
                data = json.dumps(body).encode()
                conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(data)))
            conn.endheaders(data)
            response = conn.getresponse()
            status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise RouterUnreachable(f"Caddy admin API at {self.admin} cannot be reached ({one_line(exc) or type(exc).__name__}):"
                                    " is caddy running with that admin address?") from None
        finally:
            conn.close()
        try:
            answer = json.loads(raw) if raw.strip() else None
        except ValueError:
            answer = None
        # Caddy's admin API answers JSON, and every error as {"error": "..."} (caddy admin.go,
        # APIError); anything else at that address is not it: most often a site Caddy serves
        # (the proxy's own listener) given as traffic.admin.
        # A 5xx stays "unreachable" (a proxy in front of the admin API, a Caddy in trouble).
        if status < 500 and (answer is None and raw.strip() or status >= 400 and not (isinstance(answer, dict)
                                                                                       and "error" in answer)):
            raise RouterConfigError(f"{self.admin} does not answer as Caddy's admin API ({method} {path}: HTTP"
                                    f" {status}, {one_line(raw.decode(errors='replace')) or 'empty'}): set"
                                    " traffic.admin to Caddy's `admin` address (default localhost:2019), not a"
                                    " site it serves")
        if 200 <= status < 300:
            return answer
        reason = answer.get("error") if isinstance(answer, dict) else raw.decode(errors="replace")
        reason = one_line(reason or f"HTTP {status}")
        if status == 404 and path == self._id_path():
            raise RouterConfigError(f"Caddy at {self.admin} has no object with @id {self.route!r}: add"
                                    f" \"@id\": \"{self.route}\" to the route in Caddy's JSON config"
                                    " (or fix traffic.route)")
        if status == 403:  # Host/Origin not allowed: the admin's `origins` setting, not a passing fault
            raise RouterConfigError(f"Caddy admin API at {self.admin} refused rollout ({reason}):"
                                    " add this address to the admin `origins` setting")
        if 400 <= status < 500:
            raise RouterConfigError(f"Caddy at {self.admin} refused {method} {path}: {reason}")
        raise RouterUnreachable(f"Caddy admin API at {self.admin} answered {method} {path} with {status}: {reason}")


def _reverse_proxies(node: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """(admin API path, handler) of each reverse_proxy at or under `node` (a route, a handler, or a
    subroute's routes), depth first in config order."""
    if not isinstance(node, dict):
        return []
    if node.get("handler") == "reverse_proxy":
        return [(path, node)]
    found: list[tuple[str, dict[str, Any]]] = []
    for i, handler in enumerate(node.get("handle") or []):
        found.extend(_reverse_proxies(handler, f"{path}/handle/{i}"))
    if node.get("handler") == "subroute":
        for i, route in enumerate(node.get("routes") or []):
            found.extend(_reverse_proxies(route, f"{path}/routes/{i}"))
    return found
