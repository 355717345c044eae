"""health.verify on a fake clock with scripted watches, and the HTTP probe against a real server."""

from __future__ import annotations

import http.server
import threading
from typing import Iterator

import pytest

from rollout.config import HealthPolicy
from rollout.health import http_probe, verify
from rollout.targets import Observation
from support.fakes import READY, STARTING, FakeClock, ScriptedWatch, crashing_timeline

POLICY = HealthPolicy(timeout=30, interval=1, stable=5)


def test_healthy_only_after_stable_seconds_of_readiness() -> None:
    watch = ScriptedWatch([(0, STARTING), (2, READY)])
    progress: list[str] = []
    verdict = verify(watch, POLICY, clock=watch.clock, on_progress=progress.append)
    assert verdict.healthy
    # Ready at 2 s, then held for the full 5 s.
    assert verdict.elapsed == pytest.approx(7)
    assert any("stable" in line for line in progress)


def test_lost_readiness_restarts_the_stable_timer() -> None:
    watch = ScriptedWatch([(0, READY), (3, Observation(ready=False, detail="restarting")), (4, READY)])
    verdict = verify(watch, POLICY, clock=watch.clock)
    assert verdict.healthy
    assert verdict.elapsed == pytest.approx(9)  # ready again at 4 s, plus 5 s stable


def test_failure_ends_verification_at_once_with_its_reason() -> None:
    watch = ScriptedWatch(crashing_timeline("container exited with code 3", after=1.5))
    verdict = verify(watch, POLICY, clock=watch.clock)
    assert not verdict.healthy
    assert verdict.reason == "container exited with code 3"
    assert verdict.elapsed == pytest.approx(1.5)


def test_failure_while_stable_wins() -> None:
    watch = ScriptedWatch([(0, READY), (2, Observation(ready=True, failed="restarted 3 times"))])
    verdict = verify(watch, POLICY, clock=watch.clock)
    assert (verdict.healthy, verdict.reason) == (False, "restarted 3 times")


def test_wait_wakes_early_on_an_event() -> None:
    """A crash between polls is seen when it happens, not at the next interval."""
    watch = ScriptedWatch(crashing_timeline("oom killed", after=0.3))
    verdict = verify(watch, HealthPolicy(timeout=60, interval=10, stable=5), clock=watch.clock)
    assert not verdict.healthy and verdict.elapsed == pytest.approx(0.3)
    assert watch.observations == 2


def test_timeout_says_how_long_it_waited() -> None:
    watch = ScriptedWatch([(0, STARTING)])
    verdict = verify(watch, HealthPolicy(timeout=12, interval=1, stable=2), clock=watch.clock)
    assert not verdict.healthy
    assert "not healthy within 12s" in verdict.reason and "starting" in verdict.reason
    assert verdict.elapsed == pytest.approx(12)


def test_timeout_before_stable_is_not_healthy() -> None:
    watch = ScriptedWatch([(0, STARTING), (8, READY)])
    verdict = verify(watch, HealthPolicy(timeout=10, interval=1, stable=5), clock=watch.clock)
    assert not verdict.healthy and "not healthy within 10s" in verdict.reason


def test_waits_never_exceed_the_interval() -> None:
    watch = ScriptedWatch([(0, STARTING), (7.3, READY)])
    policy = HealthPolicy(timeout=30, interval=2, stable=3)
    assert verify(watch, policy, clock=watch.clock).healthy
    assert watch.waits and max(watch.waits) <= policy.interval
    assert min(watch.waits) > 0


def test_stable_wait_ends_exactly_when_stable() -> None:
    watch = ScriptedWatch([(0, READY)])
    verdict = verify(watch, HealthPolicy(timeout=30, interval=2, stable=3), clock=watch.clock)
    assert verdict.healthy and verdict.elapsed == pytest.approx(3)


def test_probe_must_pass_as_well_as_readiness() -> None:
    clock = FakeClock()
    answers = iter([(False, "http 503")] * 3 + [(True, "http 200")] * 100)
    asked: list[tuple[str, float]] = []

    def probe(url: str, timeout: float) -> tuple[bool, str]:
        asked.append((url, timeout))
        return next(answers)

    watch = ScriptedWatch([(0, READY)], clock)
    policy = HealthPolicy(timeout=30, interval=1, stable=2, http="http://127.0.0.1:1/health")
    verdict = verify(watch, policy, probe=probe, clock=clock)
    assert verdict.healthy and "http 200" in verdict.reason
    assert verdict.elapsed == pytest.approx(5)  # 3 failed probes a second apart, then 2 s stable
    assert asked[0] == ("http://127.0.0.1:1/health", 1.0)


def test_probe_is_not_asked_while_not_ready() -> None:
    asked: list[str] = []
    watch = ScriptedWatch([(0, STARTING)])
    verdict = verify(watch, HealthPolicy(timeout=3, interval=1, stable=1, http="http://127.0.0.1:1/"),
                     probe=lambda url, timeout: (asked.append(url), (True, "http 200"))[1], clock=watch.clock)
    assert not verdict.healthy and asked == []


class Scripted(http.server.BaseHTTPRequestHandler):
    statuses: list[int] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        status = self.statuses.pop(0) if self.statuses else 500
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[int]]]:
    statuses: list[int] = []
    handler = type("Handler", (Scripted,), {"statuses": statuses})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/health", statuses
    httpd.shutdown()
    httpd.server_close()


def test_http_probe_against_a_real_server(server: tuple[str, list[int]]) -> None:
    url, statuses = server
    statuses.extend([200, 204, 500, 404])
    assert http_probe(url) == (True, "http 200")
    assert http_probe(url) == (True, "http 204")
    assert http_probe(url) == (False, "http 500")
    assert http_probe(url) == (False, "http 404")


def test_http_probe_on_a_closed_port() -> None:
    ok, detail = http_probe("http://127.0.0.1:1/health", timeout=1)
    assert not ok and "refused" in detail.lower()


def test_verify_with_the_real_probe_needs_2xx(server: tuple[str, list[int]]) -> None:
    url, statuses = server
    statuses.extend([500, 500, 200, 200, 200])
    watch = ScriptedWatch([(0, READY)])
    verdict = verify(watch, HealthPolicy(timeout=30, interval=1, stable=2, http=url), clock=watch.clock)
    assert verdict.healthy and verdict.elapsed == pytest.approx(4)
    assert statuses == []

    statuses.extend([200] + [500] * 50)
    watch = ScriptedWatch([(0, READY)])
    verdict = verify(watch, HealthPolicy(timeout=5, interval=1, stable=2, http=url), clock=watch.clock)
    assert not verdict.healthy and "http 500" in verdict.reason and "5s" in verdict.reason
