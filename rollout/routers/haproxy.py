"""HAProxy 2 (Debian bookworm's 2.6) as a rollout router, through its runtime API (the stats socket).

The operator writes one `server` line per slot in the named backend, e.g.

    backend web
        server s1 127.0.0.1:18081
        server s2 127.0.0.1:18082 disabled

and a `stats socket /run/haproxy/admin.sock level admin` (or `ipv4@127.0.0.1:9999`). A switch
to "127.0.0.1:18082" sends `set server web/s2 state ready` (then, if its health check still has
it DOWN, `set server web/s2 health up`: rollout has just verified that slot itself), and only once
s2 takes traffic, `set server web/s1 state drain` for every other server still taking traffic.

Why server states and not `set server addr` or weights (HAProxy 2.6 management guide, 9.3):
- drain is HAProxy's own "finish what you have": no new requests are balanced to the server,
  requests in flight and connections to it finish, its health checks go on; going back is
  `state ready`, as fast as going forward (the old release is still running for a revert);
- each slot stays a named server with its own stats and checks, so `show servers state` tells
  exactly which slot takes traffic; rewriting one server's address (`set server addr`) would
  leave the old slot's in-flight connections on a server that no longer names it (not tried here);
- the order (new ready before old drained) means there is never a moment without a server, so
  no 503; for that instant both take new requests, which is safe: both are verified releases.
Weights (`set server weight 0`) would do the same as drain with less meaning in the stats.

Drain keeps sending persistent (cookie/stick-table) sessions to the old server until it is
stopped; with persistence, use `option redispatch` so they move when it goes DOWN.

A failed switch never leaves the backend without a server taking traffic: if the new server cannot
be made ready, the old ones are not drained; if a drain command fails, both take traffic, and the
next switch completes it. Every answer is checked: HAProxy answers an empty line on success and a
text line otherwise ("No such server.", "Permission denied"), which becomes a one-line error.

Admin addresses: "unix:///path/to/admin.sock" and "tcp://HOST:PORT".
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from typing import Sequence
from urllib.parse import urlsplit

from rollout.errors import ConfigError, RouterConfigError, RouterUnreachable, one_line
from rollout.faults import kill_point
from rollout.routers import TIMEOUT, checked_upstream

# srv_op_state (HAProxy's include/haproxy/server-t.h): 1 starting (slowstart), 2 running.
_OP_UP = {1, 2}
# srv_admin_state bits: MAINT = FMAINT|IMAINT|RMAINT (0x23), DRAIN = FDRAIN|IDRAIN (0x18).
# CMAINT (0x04, "disabled" in the config) stays set after `state ready`: it is not a state.
_ADMIN_MAINT, _ADMIN_DRAIN = 0x23, 0x18


@dataclass(frozen=True)
class Server:
    """One server line of the backend, as `show servers state BACKEND` reports it."""

    name: str
    upstream: str  # "ADDR:PORT", the address HAProxy connects to
    fqdn: str | None  # the name in the server line when it was a host name, else None
    op_state: int  # 0 stopped (DOWN), 1 starting, 2 running, 3 stopping
    admin_state: int  # bit mask, see _ADMIN_MAINT and _ADMIN_DRAIN
    weight: int  # srv_uweight, the current user weight (0: no new requests)
    backup: bool = False  # a `backup` server line: used only when no active server is up (not a slot)

    @property
    def takes_traffic(self) -> bool:
        """Whether HAProxy balances new requests to it: an active (not backup) server, UP, neither
        in maintenance nor draining, weight > 0."""
        return (not self.backup and self.op_state in _OP_UP and not self.admin_state & (_ADMIN_MAINT | _ADMIN_DRAIN)
                and self.weight > 0)

    def state(self) -> str:
        """A word for messages: MAINT, DRAIN, DOWN, "weight 0" or UP."""
        if self.admin_state & _ADMIN_MAINT:
            return "MAINT"
        if self.admin_state & _ADMIN_DRAIN:
            return "DRAIN"
        if self.op_state not in _OP_UP:
            return "DOWN"
        return "weight 0" if self.weight <= 0 else "UP"


class HAProxyRouter:
    """The servers of one backend of a running HAProxy (see the module docstring).

    `admin` is "unix:///PATH" or "tcp://HOST:PORT"; `route` the backend's name. Raises ConfigError
    (exit 2) for another admin form. Contacts nothing until a method is called.
    """

    def __init__(self, admin: str, route: str, timeout: float = TIMEOUT) -> None:
        self.admin, self.route, self.timeout = admin, route, timeout
        parts = urlsplit(admin)
        if parts.scheme == "unix" and not parts.netloc and parts.path.startswith("/"):
            self._family, self._address = socket.AF_UNIX, parts.path
        elif parts.scheme == "tcp" and parts.hostname and parts.path in ("", "/"):
            try:
                port = parts.port
            except ValueError:
                port = None
            if port is None:
                raise ConfigError(f"traffic.admin = {admin!r} has no valid port: e.g. tcp://127.0.0.1:9999")
            self._family, self._address = socket.AF_INET6 if ":" in parts.hostname else socket.AF_INET, (parts.hostname, port)
        else:
            raise ConfigError(f"traffic.admin = {admin!r} is not an HAProxy runtime API address: use"
                              " unix:///path/to/admin.sock or tcp://127.0.0.1:9999 (a `stats socket ... level admin`)")
        if any(c.isspace() or c in ";/#" for c in route):
            # The runtime API splits commands on spaces and ';': such a name would be another command.
            raise ConfigError(f"traffic.route = {route!r} cannot be an HAProxy backend name: no spaces, ';', '/' or '#'")

    # -- the Router interface ------------------------------------------------------------------

    def check(self, upstreams: Sequence[str] = ()) -> None:
        """See rollout.routers.Router.check: the socket answers at level admin (needed for
        `set server`), the backend exists with at least one server, and one for each of `upstreams`."""
        level = self._command("show cli level")
        if level != "admin":
            raise RouterConfigError(f"HAProxy runtime API at {self.admin} gives level {level or '?'!r},"
                                    " rollout needs `level admin` on that stats socket")
        servers = self.servers()
        for to in upstreams:
            self._server_for(checked_upstream(to), servers)

    def upstreams(self) -> list[str]:
        """See rollout.routers.Router.upstreams: "ADDR:PORT" of each server taking new requests."""
        return [s.upstream for s in self.servers() if s.takes_traffic]

    def switch(self, to: str) -> None:
        """See rollout.routers.Router.switch and the module docstring: ready (+ health up) the
        server at `to`, then drain the others. Raises RouterConfigError when no server line of the
        backend has that address."""
        checked_upstream(to)
        servers = self.servers()
        target = self._server_for(to, servers)
        if target.backup:
            raise RouterConfigError(f"HAProxy backend {self.route!r}: server {target.name} ({to}) is a `backup` server;"
                                    " a slot needs an active server line (drop `backup` from it)")
        if not target.takes_traffic:
            self._set(target.name, "state ready")
            target = self._server(target.name)
            if target.op_state not in _OP_UP:
                # Its health check has not seen the new release yet; rollout verified it directly.
                self._set(target.name, "health up")
                target = self._server(target.name)
            if not target.takes_traffic:
                raise RouterConfigError(f"HAProxy backend {self.route!r}: server {target.name} ({to}) is"
                                        f" {target.state()} after `state ready`: give it a weight in its server"
                                        " line; the other servers were left as they were")
        kill_point("traffic:both-ready")  # crash-safety tests: killed mid-switch, both take traffic
        for other in servers:
            if other.name != target.name and other.takes_traffic:
                self._set(other.name, "state drain")

    # -- reading and commanding ----------------------------------------------------------------

    def _server_for(self, to: str, servers: list[Server]) -> Server:
        """The first of `servers` whose address (or FQDN) and port are `to`; RouterConfigError naming
        the server line to add when there is none."""
        matching = [s for s in servers if to in (s.upstream, f"{s.fqdn}:{s.upstream.rsplit(':', 1)[1]}")]
        if not matching:
            raise RouterConfigError(
                f"HAProxy backend {self.route!r} has no server at {to} (it has "
                + ", ".join(f"{s.name} {s.upstream}" for s in servers)
                + f"): add a line `server NAME {to}` for each slot to that backend")
        return matching[0]

    def servers(self) -> list[Server]:
        """The backend's servers in config order. Raises RouterConfigError for an unknown backend
        or one without servers, RouterUnreachable when the answer is not the state table."""
        answer = self._command(f"show servers state {self.route}")
        lines = [line for line in answer.splitlines() if line.strip()]
        if not lines or lines[0].strip() != "1":  # the table's format version
            if "backend" in answer.lower():
                raise RouterConfigError(f"HAProxy at {self.admin} has no backend {self.route!r}"
                                        f" ({one_line(answer)}): add it to haproxy.cfg or fix traffic.route")
            raise RouterUnreachable(f"HAProxy runtime API at {self.admin} answered `show servers state"
                                    f" {self.route}` with {one_line(answer)!r}")
        header = lines[1].lstrip("#").split() if len(lines) > 1 and lines[1].startswith("#") else []
        needed = ("srv_name", "srv_addr", "srv_port", "srv_op_state", "srv_admin_state", "srv_uweight", "srv_fqdn")
        if any(name not in header for name in needed):
            raise RouterUnreachable(f"HAProxy runtime API at {self.admin}: `show servers state` has no"
                                    f" {', '.join(n for n in needed if n not in header)} column")
        column = {name: header.index(name) for name in needed}
        servers = []
        for line in lines[2:]:
            fields = line.split()
            try:
                get = {name: fields[i] for name, i in column.items()}
                addr = f"[{get['srv_addr']}]" if ":" in get["srv_addr"] else get["srv_addr"]
                servers.append(Server(get["srv_name"], f"{addr}:{get['srv_port']}",
                                      None if get["srv_fqdn"] == "-" else get["srv_fqdn"],
                                      int(get["srv_op_state"]), int(get["srv_admin_state"]), int(get["srv_uweight"])))
            except (IndexError, ValueError):
                raise RouterUnreachable(f"HAProxy runtime API at {self.admin}: cannot read the server line"
                                        f" {line!r}") from None
        if not servers:
            raise RouterConfigError(f"HAProxy backend {self.route!r} has no servers: add one `server`"
                                    " line per slot, e.g. `server s1 127.0.0.1:18081`")
        backups = self._backups()
        return [replace(server, backup=True) if server.name in backups else server for server in servers]

    def _backups(self) -> set[str]:
        """Names of the backend's `backup` servers (an operator's sorry server, say): `show servers
        state` has no such column, `show stat` has (`bck`, management guide 9.1). They are never
        switched to, drained or counted as where the traffic goes."""
        answer = self._command(f"show stat {self.route} 4 -1")
        lines = [line for line in answer.splitlines() if line.strip()]
        if not lines or not lines[0].startswith("# "):
            raise RouterUnreachable(f"HAProxy runtime API at {self.admin} answered `show stat {self.route} 4 -1`"
                                    f" with {one_line(answer)!r}")
        header = lines[0][2:].split(",")
        if "svname" not in header or "bck" not in header:
            raise RouterUnreachable(f"HAProxy runtime API at {self.admin}: `show stat` has no svname/bck column")
        name, bck = header.index("svname"), header.index("bck")
        return {fields[name] for fields in (line.split(",") for line in lines[1:])
                if len(fields) > max(name, bck) and fields[bck] == "1"}

    def _server(self, name: str) -> Server:
        for server in self.servers():
            if server.name == name:
                return server
        raise RouterConfigError(f"HAProxy backend {self.route!r} lost server {name} during the switch")

    def _set(self, server: str, what: str) -> None:
        """`set server BACKEND/SERVER WHAT`; HAProxy answers nothing on success, a line otherwise."""
        command = f"set server {self.route}/{server} {what}"
        answer = self._command(command)
        if answer:
            error = RouterConfigError if answer.startswith(("No such", "Permission denied")) else RouterUnreachable
            hint = ": the stats socket needs `level admin`" if answer.startswith("Permission denied") else ""
            raise error(f"HAProxy at {self.admin} refused `{command}`: {one_line(answer)}{hint}")

    def _command(self, command: str) -> str:
        """Send one command on a new connection (HAProxy's non-interactive mode answers and closes);
        the answer, stripped. Raises RouterUnreachable when the socket cannot be used in time."""
        try:
            with socket.socket(self._family, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self._address)
                sock.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise RouterUnreachable(f"HAProxy runtime API at {self.admin} cannot be reached"
                                    f" ({one_line(exc) or type(exc).__name__}): is haproxy running with"
                                    " `stats socket ... level admin` at that address?") from None
        return b"".join(chunks).decode(errors="replace").strip()
