"""B12 metric verdict: from the moment an exporter starts reporting errors to rollout's failure verdict.

A real Prometheus (Debian's binary, tests/support/prometheus.py) scrapes an exporter served
here every SCRAPE seconds. rollout.health.verify judges a release whose target stays ready,
with a metric gate (`sum(errors{digest="{digest}"})`, max 0) asked every GATE_INTERVAL
seconds and a stable window long enough never to end first. At a random moment after the
gate has passed a few times, the exporter starts counting errors for the release's digest;
the figure is the time from that moment to verify's failed verdict.

Baseline: the scrape interval plus one evaluation interval of the gate, the longest a
polling gate can take by design (the errors wait at most one scrape to be stored, then at most
one interval to be asked). The query's own latency is reported as a metric.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from benchmarks.common import Comparison, ScenarioFailed, ScenarioResult, Settings, Skipped

SCRAPE = 1.0  # seconds between Prometheus scrapes
GATE_INTERVAL = 1.0  # seconds between evaluations of the gate
DIGEST = "sha256:" + "b12" * 21 + "0"


class AlwaysReady:
    """A Watch whose target stays ready: only the metric can fail the release."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def observe(self) -> Any:
        from rollout.targets import Observation

        return Observation(ready=True, detail="running")

    def wait(self, seconds: float) -> None:
        self._closed.wait(seconds)  # no engine events here: the full wait

    def close(self) -> None:
        self._closed.set()


def metric_verdict(settings: Settings, result: ScenarioResult) -> None:
    import shutil

    from rollout.config import HealthPolicy, MetricGate
    from rollout.health import verify
    from rollout.metric_gate import evaluate, for_release
    from tests.support.prometheus import exporter, prometheus

    if shutil.which("prometheus") is None:
        raise Skipped("prometheus is not installed (`.ci/testbed prometheus`)")
    root = settings.workdir / "b12"
    runs = max(settings.runs, 3)
    comparison = Comparison("errors reported -> failure verdict", "rollout metric gate",
                            f"scrape {SCRAPE:g}s + one gate interval {GATE_INTERVAL:g}s", unit="s", target="<= 1.5x")
    latencies: list[float] = []
    series = f'rollout_bench_errors_total{{digest="{DIGEST}"}}'
    with exporter() as served, prometheus(root, served.address, interval=SCRAPE) as url:
        gate = MetricGate(url=url, query='sum(rollout_bench_errors_total{digest="{digest}"})', max=0.0,
                          interval=GATE_INTERVAL)
        policy = for_release(HealthPolicy(timeout=600, interval=GATE_INTERVAL, stable=600, prometheus=gate),
                             "bench", 1, DIGEST)
        assert policy.prometheus is not None
        for _run in range(runs):
            served.set(series, 0)
            served.wait_scraped(times=2)
            started = time.perf_counter()
            reading = evaluate(policy.prometheus)
            latencies.append(time.perf_counter() - started)
            if not reading.ok:
                raise ScenarioFailed(f"the gate does not pass before the errors: {reading.detail}")
            verdict: list[Any] = []
            done = threading.Event()
            watch = AlwaysReady()

            def judge() -> None:
                verdict.append(verify(watch, policy))
                done.set()

            thread = threading.Thread(target=judge, daemon=True)
            thread.start()
            # A random phase against both the scrape and the gate's clock.
            if done.wait(2 * GATE_INTERVAL + random.uniform(0, SCRAPE + GATE_INTERVAL)):
                raise ScenarioFailed(f"verify ended before the errors: {verdict[0]}")
            errors_at = time.perf_counter()
            served.set(series, 3)
            if not done.wait(60):
                watch.close()
                raise ScenarioFailed("no failure verdict within 60 s of the errors")
            took = time.perf_counter() - errors_at
            if verdict[0].healthy or "above max 0" not in verdict[0].reason:
                raise ScenarioFailed(f"unexpected verdict: {verdict[0]}")
            comparison.rollout.append(took)
            comparison.baseline.append(SCRAPE + GATE_INTERVAL)
            watch.close()
    result.comparisons.append(comparison)
    result.metrics.update(scrape_interval_s=SCRAPE, gate_interval_s=GATE_INTERVAL,
                          worst_run_s=round(max(comparison.rollout), 3),
                          query_latency_median_s=round(sorted(latencies)[len(latencies) // 2], 4))
