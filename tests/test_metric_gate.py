"""Health from metrics (issue 17 point 7): `[apps.NAME.health.prometheus]`.

First health.verify with a metric gate on a fake clock (how each answer counts, when the
query is asked), and the config's checks; then against a real Prometheus (Debian's
`prometheus`, started per test on a free loopback port, scraping an exporter the test
serves on loopback every 200 ms): the query, its placeholders and the answers Prometheus
really gives (one series, none, several, bad PromQL), and a deploy on the real engine
whose release the exporter reports errors for, failed and reverted naming the query and value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rollout import config as configuration
from rollout.config import HealthPolicy, MetricGate
from rollout.errors import ConfigError
from rollout.health import verify
from rollout.metric_gate import Reading, evaluate, for_release
from support.fakes import READY, STARTING, FakeClock, ScriptedWatch
from support.prometheus import Exporter, exporter, prometheus

GATE = MetricGate(url="http://127.0.0.1:1", query='errors{app="{app}"}', max=0.05, interval=2.0)
POLICY = HealthPolicy(timeout=30, interval=1, stable=4, prometheus=GATE)


def scripted_gauge(clock: FakeClock, readings: list[tuple[float, Reading]]) -> tuple[list[float], object]:
    """A gauge answering, at each time since the start, the last reading scripted at or before it."""
    asked: list[float] = []
    start = clock()

    def gauge(_gate: MetricGate, _timeout: float) -> Reading:
        asked.append(clock() - start)
        return [reading for at, reading in readings if at <= clock() - start][-1]

    return asked, gauge


OK = Reading(True, False, "prometheus 'errors' = 0")
NO_DATA = Reading(False, False, "prometheus 'errors' returned no series")


def test_the_gate_is_asked_every_interval_once_ready_and_must_hold_for_the_stable_window() -> None:
    clock = FakeClock()
    asked, gauge = scripted_gauge(clock, [(0, OK)])
    watch = ScriptedWatch([(0, STARTING), (1, READY)], clock)
    verdict = verify(watch, POLICY, gauge=gauge, clock=clock)  # type: ignore[arg-type]
    assert verdict.healthy and verdict.elapsed == pytest.approx(5) and "= 0" in verdict.reason
    assert asked == pytest.approx([1, 3, 5]), "first when ready, then every 2 s"


def test_a_breach_fails_at_once_naming_the_query_and_value() -> None:
    clock = FakeClock()
    breach = Reading(False, True, "prometheus 'errors' = 0.3, above max 0.05")
    _asked, gauge = scripted_gauge(clock, [(0, OK), (2.5, breach)])
    verdict = verify(ScriptedWatch([(0, READY)], clock), POLICY, gauge=gauge, clock=clock)  # type: ignore[arg-type]
    assert (verdict.healthy, verdict.reason) == (False, "prometheus 'errors' = 0.3, above max 0.05")
    assert verdict.elapsed == pytest.approx(4), "seen at the first evaluation after it (every 2 s)"


def test_no_data_never_passes_a_release_it_times_out_naming_why() -> None:
    clock = FakeClock()
    _asked, gauge = scripted_gauge(clock, [(0, NO_DATA)])
    verdict = verify(ScriptedWatch([(0, READY)], clock), POLICY, gauge=gauge, clock=clock)  # type: ignore[arg-type]
    assert not verdict.healthy
    assert "not healthy within 30s" in verdict.reason and "returned no series" in verdict.reason


def test_data_arriving_late_starts_the_stable_count_then() -> None:
    clock = FakeClock()
    _asked, gauge = scripted_gauge(clock, [(0, NO_DATA), (3, OK)])
    verdict = verify(ScriptedWatch([(0, READY)], clock), POLICY, gauge=gauge, clock=clock)  # type: ignore[arg-type]
    assert verdict.healthy and verdict.elapsed == pytest.approx(8)  # asked at 0, 2, 4: ok from 4, +4 s


def test_the_window_keeps_judging_after_the_stable_window() -> None:
    clock = FakeClock()
    breach = Reading(False, True, "prometheus 'errors' = 1, above max 0.05")
    _asked, gauge = scripted_gauge(clock, [(0, OK), (5, breach)])
    policy = HealthPolicy(timeout=30, interval=1, stable=4, prometheus=replace(GATE, window=6))
    verdict = verify(ScriptedWatch([(0, READY)], clock), policy, gauge=gauge, clock=clock)  # type: ignore[arg-type]
    assert not verdict.healthy and verdict.elapsed == pytest.approx(6), "4 s stable, breach seen at 6 s of 4 + 6"


def test_the_gate_is_not_asked_before_the_release_is_ready() -> None:
    clock = FakeClock()
    asked, gauge = scripted_gauge(clock, [(0, OK)])
    verdict = verify(ScriptedWatch([(0, STARTING)], clock), HealthPolicy(timeout=3, interval=1, stable=1, prometheus=GATE),
                     gauge=gauge, clock=clock)  # type: ignore[arg-type]
    assert not verdict.healthy and asked == []


def test_placeholders_name_the_release_and_leave_promql_braces_alone() -> None:
    policy = HealthPolicy(prometheus=MetricGate(url="http://p", query='x{app="{app}",d="{digest}",e="{entry}"}', max=1))
    rendered = for_release(policy, "web", 12, "sha256:" + "a" * 64).prometheus
    assert rendered is not None and rendered.query == f'x{{app="web",d="sha256:{"a" * 64}",e="12"}}'
    assert for_release(HealthPolicy(), "web", 12, "sha256:x") == HealthPolicy()


@pytest.mark.parametrize(("table", "message"), [
    ('url = "http://p:9090"\nmax = 1\n', "apps.web.health.prometheus.query is missing"),
    ('query = "up"\nmax = 1\n', "apps.web.health.prometheus.url is missing"),
    ('url = "http://p:9090"\nquery = "up"\n', "apps.web.health.prometheus.max or min is missing"),
    ('url = "http://p:9090"\nquery = "up"\nmax = 1\nmin = 2\n', "min = 2 is above max = 1"),
    ('url = "http://p:9090"\nquery = "up"\nmax = "1"\n', "apps.web.health.prometheus.max = '1': must be a finite number"),
    ('url = "http://p:9090"\nquery = "up"\nmax = 1\ninterval = 0\n', "interval must be greater than 0"),
    ('url = "p:9090"\nquery = "up"\nmax = 1\n', "url = 'p:9090': must be an http:// or https:// URL"),
    ('url = "http://p:9090"\nquery = "up"\nmax = 1\nthreshold = 2\n', "unknown key apps.web.health.prometheus.threshold"),
])
def test_the_config_checks_the_gate_at_load(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "rollout.toml"
    path.write_text('[apps.web]\nimage = "127.0.0.1:5000/web"\n[[apps.web.targets]]\nname = "t"\ncontainer = "c"\n'
                    "[apps.web.health.prometheus]\n" + table)
    with pytest.raises(ConfigError) as caught:
        configuration.load(str(path))
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_a_loaded_gate_reaches_every_target(tmp_path: Path) -> None:
    path = tmp_path / "rollout.toml"
    path.write_text('[apps.web]\nimage = "127.0.0.1:5000/web"\n[[apps.web.targets]]\nname = "t"\ncontainer = "c"\n'
                    '[apps.web.health.prometheus]\nurl = "http://127.0.0.1:9090"\nquery = "up"\nmin = 1\nwindow = 30\n')
    [target] = configuration.load(str(path)).app("web").targets
    assert target.health.prometheus == MetricGate(url="http://127.0.0.1:9090", query="up", min=1.0, window=30.0)


# -- a real Prometheus -------------------------------------------------------------------------


@pytest.fixture()
def scraped(tmp_path: Path) -> Iterator[tuple[Exporter, str]]:
    """An exporter on loopback and a Prometheus scraping it every 200 ms; yields both (its URL)."""
    with exporter() as served, prometheus(tmp_path, served.address) as url:
        yield served, url


def settled(served: Exporter, url: str, query: str) -> Reading:
    """The gate's reading once Prometheus has scraped what the exporter serves now."""
    served.wait_scraped(times=2)
    return evaluate(MetricGate(url=url, query=query, max=0.0))


def test_real_prometheus_one_series_within_and_above_the_bound(scraped: tuple[Exporter, str]) -> None:
    served, url = scraped
    served.set('rollout_test_errors_total{digest="sha256:good"}', 0)
    served.set('rollout_test_errors_total{digest="sha256:bad"}', 7)
    good = settled(served, url, 'sum(rollout_test_errors_total{digest="sha256:good"})')
    assert (good.ok, good.fatal) == (True, False) and good.detail.endswith("= 0")
    bad = evaluate(MetricGate(url=url, query='sum(rollout_test_errors_total{digest="sha256:bad"})', max=0.0))
    assert (bad.ok, bad.fatal) == (False, True)
    assert bad.detail == "prometheus 'sum(rollout_test_errors_total{digest=\"sha256:bad\"})' = 7, above max 0"


def test_real_prometheus_no_series_several_series_and_bad_promql(scraped: tuple[Exporter, str]) -> None:
    served, url = scraped
    served.set('rollout_test_errors_total{digest="a"}', 1)
    served.set('rollout_test_errors_total{digest="b"}', 1)
    none = settled(served, url, 'rollout_test_errors_total{digest="nothing-like-it"}')
    assert (none.ok, none.fatal) == (False, False) and "returned no series" in none.detail
    several = evaluate(MetricGate(url=url, query="rollout_test_errors_total", max=0.0))
    assert (several.ok, several.fatal) == (False, True) and "returned 2 series" in several.detail
    broken = evaluate(MetricGate(url=url, query="sum(", max=0.0))
    assert (broken.ok, broken.fatal) == (False, True) and "refused (400" in broken.detail


def test_an_unreachable_prometheus_is_not_healthy_yet() -> None:
    from support.ports import free_port

    reading = evaluate(MetricGate(url=f"http://127.0.0.1:{free_port()}", query="up", max=0.0), timeout=2.0)
    assert (reading.ok, reading.fatal) == (False, False) and "Prometheus unreachable" in reading.detail


def test_a_deploy_whose_release_reports_errors_fails_and_is_reverted(  # type: ignore[no-untyped-def]
        tmp_path: Path, project, docker_client) -> None:
    """good1 reports no errors and stays; good2 runs fine but the exporter counts errors for its
    digest: the metric alone fails it, it is reverted to good1, the verdict names query and value."""
    from support.images import digest_of
    from support.project import write_config

    good, bad = digest_of(docker_client, "good1"), digest_of(docker_client, "good2")
    with exporter() as served, prometheus(tmp_path / "prom", served.address) as url:
        served.set(f'rollout_test_errors_total{{digest="{good}"}}', 0)
        served.set(f'rollout_test_errors_total{{digest="{bad}"}}', 5)
        served.wait_scraped(times=2)
        write_config(project, extra=f"""
[apps.web.health.prometheus]
url = "{url}"
query = 'sum(rollout_test_errors_total{{digest="{{digest}}"}})'
max = 0
interval = 0.5
""")
        first = project.run("deploy", "web:good1")
        assert first.returncode == 0, first.stderr
        failed = project.run("deploy", "web:good2")
        assert failed.returncode == 1, failed.stderr
        assert project.version() == "good1"
        query = f'sum(rollout_test_errors_total{{digest="{bad}"}})'
        assert f"prometheus {query!r} = 5, above max 0" in failed.stderr
        [revert, second, _first] = project.history()[:3]
        assert (second["tag"], second["status"]) == ("good2", "failed") and "= 5, above max 0" in second["error"]
        assert (revert["kind"], revert["status"], revert["tag"]) == ("revert", "healthy", "good1")


def test_an_app_scoped_breach_is_reverted_and_the_revert_is_not_gated(  # type: ignore[no-untyped-def]
        tmp_path: Path, project, docker_client) -> None:
    """A query about the app, not the digest, still reports the failed release's errors when the
    good release is back: the revert is verified without the gate, so the deploy ends reverted
    (exit 1, good1 healthy), not 'REVERT FAILED' (exit 3) (review of issue 17, P1-1)."""
    from support.project import write_config

    with exporter() as served, prometheus(tmp_path / "prom", served.address) as url:
        served.set('rollout_test_errors_total{app="web"}', 0)
        served.wait_scraped(times=2)
        write_config(project, extra=f"""
[apps.web.health.prometheus]
url = "{url}"
query = 'sum(rollout_test_errors_total{{app="{{app}}"}})'
max = 0
interval = 0.5
""")
        first = project.run("deploy", "web:good1")
        assert first.returncode == 0, first.stderr
        served.set('rollout_test_errors_total{app="web"}', 3)
        served.wait_scraped(times=2)
        failed = project.run("deploy", "web:good2")
        assert failed.returncode == 1, failed.stderr
        assert "= 3, above max 0" in failed.stderr and "REVERT FAILED" not in failed.stderr
        assert project.version() == "good1"
        [revert, second, _first] = project.history()[:3]
        assert (second["tag"], second["status"]) == ("good2", "failed")
        assert (revert["kind"], revert["status"], revert["tag"]) == ("revert", "healthy", "good1")
