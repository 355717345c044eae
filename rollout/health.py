"""Deciding whether a new release is healthy.

Healthy means: the target reports ready (running, and its own health check
passing where it has one), the optional HTTP probe answers 2xx, the optional
metric gate's query is within bounds (rollout.metric_gate), and all hold for
`stable` seconds (plus the gate's `window`). Failure is event-driven: a target's Watch wakes the wait
as soon as the engine reports a crash, so a broken release is caught in the
time it takes to crash, not at the next poll or the timeout.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable

from rollout.config import HealthPolicy, MetricGate
from rollout.metric_gate import Reading, evaluate
from rollout.proxies import ProxyRoutedHandler
from rollout.targets import Watch


@dataclass(frozen=True)
class Verdict:
    """How a release fared on one target: healthy or not, why (a one-line reason such as
    "running, http 200" or "container exited with code 1"), and `elapsed`: seconds from the start of
    verify() to the verdict, on the clock verify() was given (monotonic by default)."""

    healthy: bool
    reason: str
    elapsed: float


# Proxies as Docker picks them (rollout.proxies): a loopback probe never goes through one.
_OPENER = urllib.request.build_opener(ProxyRoutedHandler())


def http_probe(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    """One GET of url: (healthy, detail). Healthy is a 2xx answer within timeout seconds;
    detail is "http 200", "http 503" or "http: <why it failed>". Redirects are followed.
    Never raises for what the server or the network does."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:  # noqa: S310 - URL comes from the operator's config
            return 200 <= response.status < 300, f"http {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"http {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"http: {reason}"
    except (http.client.HTTPException, ValueError) as exc:  # a garbled answer is "not healthy yet"
        return False, f"http: {type(exc).__name__}"


Probe = Callable[[str, float], tuple[bool, str]]
Progress = Callable[[str], None]


Gauge = Callable[[MetricGate, float], Reading]


def verify(watch: Watch, policy: HealthPolicy, *, probe: Probe = http_probe, gauge: Gauge = evaluate,
           clock: Callable[[], float] = time.monotonic, on_progress: Progress | None = None) -> Verdict:
    """Wait until the release on one target is healthy, fails, or runs out of time.

    Healthy: `watch` reports ready (a container running and passing its image's HEALTHCHECK
    if it has one; a Deployment's updated replicas all available, as `kubectl rollout status`
    judges), `policy.http`, when set, answers 2xx ("{port}" in it: the slot the observation
    names, Observation.slot), and both hold without a break for
    `policy.stable` seconds (a break restarts the count; once the release has taken the traffic,
    i.e. its observations name a slot, a break of the watch or the probe fails it at once). Failed:
    the watch reports a failure
    (a crash, restart, OOM kill, failing HEALTHCHECK, crash loop or pull error: the target
    decides, see rollout.targets) at the first look after it, or `policy.timeout` seconds pass
    without a healthy verdict. Between looks it sleeps in `watch.wait`, at most
    `policy.interval` seconds, so an engine event ends the wait early.

    A metric gate (`policy.prometheus`, its query already about this release:
    rollout.metric_gate.for_release) is asked through `gauge` once the rest is ready and then
    every `gate.interval` seconds; the release must then hold for `stable + gate.window`
    seconds. A breach (or a query that cannot give one number) fails it at once; no data or an
    unreachable Prometheus counts as not ready (rollout.metric_gate says why).

    All times are seconds on `clock` (time.monotonic unless a test passes another: a
    wall-clock step must not stretch or cut the timeout). Each HTTP probe may take
    min(2, max(interval, 0.5)) seconds. `on_progress` gets a one-line status after each look.
    Returns a Verdict; raises only what `watch` raises (the orchestrator turns that into an
    unhealthy verdict, "cannot verify: ..."), never for what the app or its probe does.
    """
    start = clock()
    deadline = start + policy.timeout
    healthy_since: float | None = None
    gate = policy.prometheus
    # With a metric gate the release must hold for its window after the stable window too.
    hold = policy.stable + (gate.window if gate else 0.0)
    gate_due, reading = start, None
    while True:
        observation = watch.observe()
        now = clock()
        if observation.failed:
            return Verdict(False, observation.failed, now - start)
        ready, detail = observation.ready, observation.detail
        if ready and policy.http:
            # "{port}" in the URL stands for the slot a release is verified on (a traffic section).
            url = policy.http if observation.slot is None else policy.http.replace("{port}", str(observation.slot))
            ready, probe_detail = probe(url, min(2.0, max(policy.interval, 0.5)))
            detail = f"{detail}, {probe_detail}" if detail else probe_detail
        if not ready and observation.slot is not None:
            # The release took the traffic on its slot (rollout.targets.docker.traffic): users are
            # on it now, so a break is a failure at once (the old release still runs: a switch back),
            # not "not healthy yet" until the timeout.
            return Verdict(False, f"{detail or 'not ready'} after taking the traffic", now - start)
        if ready and gate is not None:
            if reading is None or now >= gate_due:
                reading, gate_due = gauge(gate, min(5.0, max(gate.interval, 1.0))), now + gate.interval
            if reading.fatal:
                return Verdict(False, reading.detail, clock() - start)
            ready = reading.ok
            detail = f"{detail}, {reading.detail}" if detail else reading.detail
        if ready:
            healthy_since = now if healthy_since is None else healthy_since
            held = now - healthy_since
            if held >= hold:
                return Verdict(True, detail or "healthy", now - start)
            detail = f"{detail}, stable {held:.1f}/{hold:g}s"
        else:
            healthy_since = None
        if now >= deadline:
            return Verdict(False, f"not healthy within {policy.timeout:g}s ({detail or 'not ready'})", now - start)
        if on_progress:
            on_progress(f"{detail or 'waiting'} ({now - start:.1f}s)")
        wake = min(policy.interval, deadline - now)
        if healthy_since is not None:
            wake = min(wake, healthy_since + hold - now)
        if gate is not None and reading is not None:
            wake = min(wake, gate_due - now)
        watch.wait(max(wake, 0.01))
