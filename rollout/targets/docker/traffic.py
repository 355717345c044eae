"""Zero-downtime deploys of one docker target behind a reverse proxy (issue 14): the slot watch.

With a traffic section (rollout.config.Traffic) a release's container starts beside the live one on
the idle slot (a host port), is verified there directly, and only then takes the traffic: the
router (rollout.routers) switches the route's upstream to "127.0.0.1:SLOT" (SLOT_HOST). The rest of
the sequence lives in rollout.targets.docker.target (apply, settle, stop); this module holds what
verification adds: `SlotWatch` wraps the container's DockerWatch and makes the switch the moment
the release is first ready on its slot, so rollout.health.verify counts the stable window with
the traffic on the new release and the old one still running beside it.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import Callable
from urllib.parse import urlsplit

from rollout.errors import one_line
from rollout.config import PORT_PLACEHOLDER
from rollout.health import Probe, http_probe
from rollout.targets import Observation, Watch

SLOT_HOST = "127.0.0.1"  # the router dials a slot on its own host's loopback (one router per docker host)
LABEL_SLOT = "rollout.slot"  # the host port a container was created for (its slot_env value or `ports` mapping)
PROBE_TIMEOUT = 2.0  # seconds per HTTP probe of the slot before the switch (health.verify's bound too)


def upstream(slot: int) -> str:
    """The upstream "HOST:PORT" the router is given for `slot` (a host port)."""
    return f"{SLOT_HOST}:{slot}"


def port_of(address: str) -> int | None:
    """The port of an upstream "HOST:PORT" (None when it has none a slot could be)."""
    text = address.rsplit(":", 1)[-1]
    return int(text) if text.isdigit() else None


def slot_in_use(http: str | None, slot: int, timeout: float = PROBE_TIMEOUT) -> str | None:
    """What answers on `slot` before rollout started anything there: "HOST:PORT accepts
    connections" when a TCP connection to the slot is accepted, else None. HOST is health.http's
    (the address rollout probes the slot at), else SLOT_HOST. Never raises."""
    host = (urlsplit(http).hostname if http else None) or SLOT_HOST
    try:
        with socket.create_connection((host, slot), timeout=timeout):
            return f"{host}:{slot} accepts connections"
    except OSError:
        return None


def slot_url(url: str | None, slot: int) -> str | None:
    """health.http with "{port}" standing for `slot` (None stays None)."""
    return url.replace(PORT_PLACEHOLDER, str(slot)) if url else url


class SlotWatch:
    """A Watch of a release started on its own slot, which moves the traffic to it once it is ready.

    Before the switch, observe() reports "not ready yet" until the container is ready by its own
    measure (running, HEALTHCHECK healthy: the wrapped DockerWatch) and, when health.http is set,
    that URL with "{port}" = the slot answers 2xx; then it calls `switch` (the target's: the container
    name, then the router) and reports ready. From then on every Observation carries `slot`, so
    health.verify keeps probing the same URL through the stable window. A failure of the switch is
    a failure of the release (one line, reported by every later look). Switching traffic back after
    a failed verdict is not the watch's job: the target's settle(False) does it at once.
    """

    def __init__(self, inner: Watch, slot: int, http: str | None, switch: Callable[[], None],
                 probe: Probe = http_probe) -> None:
        self.inner, self.slot, self.switch_traffic, self.probe = inner, slot, switch, probe
        self.url = slot_url(http, slot)
        self.switched = False
        self.failure: str | None = None

    def observe(self) -> Observation:
        """One look (see the class docstring); moves the traffic the first time the release is ready."""
        if self.failure:
            return Observation(False, self.failure, slot=self.slot)
        seen = self.inner.observe()
        if seen.failed or self.switched:
            return replace(seen, slot=self.slot)
        if not seen.ready:
            return replace(seen, detail=f"{seen.detail or 'waiting'} on slot {self.slot}")
        detail = seen.detail
        if self.url:
            ok, answer = self.probe(self.url, PROBE_TIMEOUT)
            detail = f"{detail}, {answer}" if detail else answer
            if not ok:
                return Observation(False, detail=f"{detail} on slot {self.slot}, traffic not moved yet")
        try:
            self.switch_traffic()
        except Exception as exc:  # noqa: BLE001 - any failure to move the traffic fails this release
            self.failure = f"cannot switch traffic to slot {self.slot}: {one_line(exc)}"
            return Observation(False, self.failure, slot=self.slot)
        self.switched = True
        return Observation(True, detail=f"{detail}, traffic on slot {self.slot}", slot=self.slot)

    def wait(self, seconds: float) -> None:
        """The wrapped watch's wait: up to `seconds`, woken by an engine event."""
        self.inner.wait(seconds)

    def close(self) -> None:
        """Close the wrapped watch."""
        self.inner.close()
