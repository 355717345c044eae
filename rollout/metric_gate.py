"""Health from metrics: one Prometheus query per evaluation, judged against the gate's bounds.

`[apps.NAME.health.prometheus]` (rollout.config.MetricGate) asks Prometheus's HTTP API
(`GET /api/v1/query`, Prometheus docs "HTTP API": instant queries) for one number
about the release being verified, e.g. its error ratio. How each answer counts, so that a
deploy never passes because the gate could not look:

- one number within bounds: the gate holds for now;
- one number above `max` or below `min`: a breach, the release fails at once (and is
  reverted like any failure), the verdict naming the query and the value;
- no series, or NaN (nothing scraped yet, no traffic yet), or Prometheus unreachable or
  answering 5xx: not healthy *yet*: the stable count does not start (or starts again), and
  if that lasts until the health timeout the release fails naming why;
- several series, or a query Prometheus refuses (4xx: bad PromQL): the release fails at
  once, since waiting cannot fix a query that does not give one number.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from typing import Any

from rollout.config import HealthPolicy, MetricGate
from rollout.proxies import ProxyRoutedHandler

PLACEHOLDERS = ("{app}", "{digest}", "{entry}")

# Proxies as Docker picks them (rollout.proxies): a loopback Prometheus never goes through one.
_OPENER = urllib.request.build_opener(ProxyRoutedHandler())


@dataclass(frozen=True)
class Reading:
    """One evaluation of a gate: `ok` the value is within bounds; `fatal` the release fails now
    (a breach, several series, a refused query); neither: not healthy yet (no data, unreachable).
    `detail` is one line naming the query and the value or the problem."""

    ok: bool
    fatal: bool
    detail: str


def for_release(policy: HealthPolicy, app: str, entry_id: int, digest: str) -> HealthPolicy:
    """policy with its gate's query made about one release: "{app}", "{digest}" and "{entry}"
    replaced by the app's name, the digest ("sha256:HEX") and the entry id (plain replacement,
    so PromQL's own braces are left alone). A policy without a gate is returned as it is."""
    gate = policy.prometheus
    if gate is None:
        return policy
    query = gate.query.replace("{app}", app).replace("{digest}", digest).replace("{entry}", str(entry_id))
    return replace(policy, prometheus=replace(gate, query=query))


def evaluate(gate: MetricGate, timeout: float = 5.0) -> Reading:
    """Ask gate.url for gate.query now and judge the answer as the module docstring says.

    timeout: seconds the request may take. Never raises for what Prometheus or the network does.
    """
    url = f"{gate.url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': gate.query})}"
    name = f"prometheus {gate.query!r}"
    try:
        with _OPENER.open(url, timeout=timeout) as response:  # noqa: S310 - URL comes from the operator's config
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            return Reading(False, True, f"{name}: refused ({exc.code}: {_error_of(exc)})")
        return Reading(False, False, f"{name}: Prometheus answered {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        return Reading(False, False, f"{name}: Prometheus unreachable ({getattr(exc, 'reason', exc)})")
    except ValueError:
        return Reading(False, False, f"{name}: Prometheus sent no JSON")
    value, problem, fatal = _one_number(body)
    if value is None:
        return Reading(False, fatal, f"{name} {problem}")
    if gate.max is not None and value > gate.max:
        return Reading(False, True, f"{name} = {value:g}, above max {gate.max:g}")
    if gate.min is not None and value < gate.min:
        return Reading(False, True, f"{name} = {value:g}, below min {gate.min:g}")
    return Reading(True, False, f"{name} = {value:g}")


def _one_number(body: Any) -> tuple[float | None, str, bool]:
    """(value, "", False) for a scalar or a one-sample vector; else (None, why, whether waiting cannot help)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        return None, "answered without data", False
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        sample = result
    elif kind == "vector" and isinstance(result, list):
        if not result:
            return None, "returned no series (nothing scraped for this release yet?)", False
        if len(result) > 1:
            return None, f"returned {len(result)} series, not one number: aggregate it (e.g. sum(...))", True
        sample = result[0].get("value") if isinstance(result[0], dict) else None
    else:
        return None, f"returned a {kind}, not one number", True
    try:
        value = float(sample[1])  # Prometheus sends sample values as strings ("NaN", "+Inf" too)
    except (TypeError, ValueError, IndexError):
        return None, "returned an unreadable sample", False
    if math.isnan(value):
        return None, "returned NaN (no traffic yet?)", False
    return value, "", False


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(exc).get("error", ""))[:200] or exc.reason
    except (ValueError, AttributeError, OSError):
        return str(exc.reason)
