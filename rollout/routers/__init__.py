"""The one interface a reverse proxy implements so rollout can move traffic between slots (issue 14).

A slot is a host port a release's container listens on; an upstream is its address as the proxy
dials it, "HOST:PORT" (e.g. "127.0.0.1:18081"). The operator owns the proxy's config (listeners,
TLS, other routes); rollout changes only which upstream of one named route or backend takes new
requests. One module per proxy (rollout.routers.caddy, rollout.routers.haproxy), imported only
when an app uses it, chosen by `open_router`.

Errors, for every method: RouterUnreachable (exit 5) when the admin endpoint cannot be reached or
answers something unusable; RouterConfigError (exit 2) when the proxy lacks what rollout.toml
names (the route or backend, a server for the slot). Both are raised before anything changed,
except where `Router.switch` says otherwise.
"""

from __future__ import annotations

import importlib
import re
from typing import Protocol, Sequence

from rollout.errors import ConfigError

# kind -> (module, class): the proxies rollout can switch, each imported on first use.
KINDS: dict[str, tuple[str, str]] = {
    "caddy": ("rollout.routers.caddy", "CaddyRouter"),
    "haproxy": ("rollout.routers.haproxy", "HAProxyRouter"),
}

# Admin requests are local and small: a proxy that needs longer is hung, which is "unreachable".
TIMEOUT = 5.0  # seconds, per request (connect + answer)

_UPSTREAM = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")


class Router(Protocol):
    """One route (Caddy) or backend (HAProxy) of one running proxy, as rollout.toml's traffic
    section names it: `admin` (the proxy's admin endpoint) and `route` (the name)."""

    admin: str  # the admin address as configured, for messages
    route: str  # Caddy: the @id of the route (or of its reverse_proxy handler); HAProxy: the backend

    def check(self, upstreams: Sequence[str] = ()) -> None:
        """Return when the admin endpoint answers and the route or backend exists with something
        rollout can switch, to each of `upstreams` ("HOST:PORT", the slots) too; change nothing.
        Raises RouterUnreachable (exit 5) or RouterConfigError (exit 2: names what is missing and
        what to add to the proxy's config), so a deploy is refused before it changes anything."""

    def upstreams(self) -> list[str]:
        """The upstreams that take new requests now, "HOST:PORT" each, in the proxy's order; more
        than one after an interrupted switch (or as the operator wrote it), empty when none does.
        Raises RouterUnreachable or RouterConfigError; changes nothing."""

    def switch(self, to: str) -> None:
        """Make `to` ("HOST:PORT", a slot) the only upstream taking new requests. Requests in flight
        on the old upstream finish (drain); no request sees a refused connection or a 502 because
        of the switch. Idempotent: switching to the current upstream changes nothing visible.

        Raises ValueError for a `to` not of the form HOST:PORT (a caller's bug), RouterConfigError
        (exit 2) when the proxy has no way to reach `to` (e.g. no HAProxy server line for it), and
        RouterUnreachable (exit 5) when the proxy cannot be asked or refuses. Each implementation
        says what a failure can leave behind; none leaves a state where no upstream takes traffic.
        """


def checked_upstream(to: str) -> str:
    """`to` when it is "HOST:PORT" (a name, an IPv4 address or a bracketed IPv6 address, and a port
    1-65535); raises ValueError otherwise: slots come from a checked config, so a bad one is a bug."""
    if not isinstance(to, str) or not _UPSTREAM.match(to) or not 0 < int(to.rsplit(":", 1)[1]) < 65536:
        raise ValueError(f"an upstream is HOST:PORT (e.g. 127.0.0.1:18081), not {to!r}")
    return to


def open_router(kind: str, admin: str, route: str) -> Router:
    """The router of `kind` ("caddy" or "haproxy") for `route` on the proxy whose admin endpoint is
    `admin` (Caddy: "http://127.0.0.1:2019" or "unix//path/admin.sock"; HAProxy:
    "unix:///path/admin.sock" or "tcp://127.0.0.1:9999"). Contacts nothing: call `check()`.

    Raises ConfigError (exit 2) for an unknown kind, an admin address of the wrong form or an
    empty route, naming the traffic setting to fix.
    """
    if kind not in KINDS:
        raise ConfigError(f"traffic.router = {kind!r} is not a router rollout knows: use one of "
                          + ", ".join(repr(k) for k in KINDS))
    if not isinstance(route, str) or not route.strip():
        raise ConfigError("traffic.route is empty: name the Caddy route @id or the HAProxy backend")
    module, name = KINDS[kind]
    return getattr(importlib.import_module(module), name)(admin, route)
