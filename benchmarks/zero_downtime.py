"""B8 downtime and B9 revert latency: a steady load while rollout deploys, fails and reverts (issue 14).

Three sides, each with its own container name, ports and (for the routers) its own real proxy
process, taking turns case by case (who goes first rotates each run):

- stop-first: rollout with no traffic section (the old container stops, the new one starts on the
  same host port); the load hits that port directly. This is also what the manual
  `docker pull/stop/rm/run` script does, so it stands for it.
- HAProxy and Caddy: rollout with a traffic section (two slots, slot_env = "PORT"); the load goes
  through the proxy (tests/support/routers.py starts them, as the end-to-end tests do).

The app is the test image with a 2 s boot (the target's `command`: a shell that traps TERM, sleeps
2 s, then runs httpd), so a stop-first upgrade really has nothing listening for 2 s. The load is
LOAD_RATE requests/s of `GET /version`, each on a new connection, from threads of this process
(rollout runs as a separate process). Failed requests: any error or non-200. Longest gap: the
longest time between two consecutive successful answers (by their end) while the command ran.

B8 cases: a healthy upgrade, a release that crashes at start (the crash image), one that boots but
whose health probe fails (unhealthy-http: /health 404, so the verdict comes at health.timeout),
and a manual `rollout revert`.

B9: the release takes the traffic and then dies (the benchmark `docker kill`s it as soon as the load
sees its version): the engine's exit time (State.FinishedAt, same host clock) to the start of the
first request answered by the old release after which no other version answers (failed requests
are counted apart). This includes
rollout's detection of the exit (reported apart: exit -> ledger status:failed, which the ledger
records after the switch back, so the switch itself is within it). The ledger's verdict event cannot
be the start: rollout switches back before it records the verdict.

Figures are reported, never asserted on (benchmarks/__init__.py).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from benchmarks.common import (APP_IMAGE, REPO_ROOT, ROLLOUT, Comparison, ScenarioFailed, ScenarioResult, Settings,
                               docker, docker_time, http_get, iso_time, remove_containers, require_docker,
                               require_test_images, rollout_env, run, wait_for_version)

LOAD_RATE = 200  # requests per second, all workers together
LOAD_WORKERS = 4
REQUEST_TIMEOUT = 5.0  # seconds; a hung proxy shows up as a failed request, not a stuck benchmark
BOOT = 2  # seconds the app takes to listen after it starts
# Trap TERM at once (docker stop is instant), listen after BOOT s; the crash release exits at start.
APP_COMMAND = ("trap 'exit 0' TERM INT;"
               " if grep -q crash /www/version; then echo 'fatal: cannot read /etc/app.conf' >&2; exit 1; fi;"
               f" (sleep {BOOT}; exec httpd -f -p 127.0.0.1:$PORT -h /www) & wait")
SIDES = ("stop-first", "haproxy", "caddy")
ROUTERS = ("haproxy", "caddy")
LABELS = {"stop-first": "rollout stop-first", "haproxy": "rollout + HAProxy", "caddy": "rollout + Caddy"}
CASES = ("healthy upgrade", "crash at start", "fails its health probe", "manual rollout revert")


@dataclass(frozen=True)
class Answer:
    """One request: monotonic start and end (s), whether it got a 200, and the body (the version)."""

    started: float
    ended: float
    ok: bool
    body: str


class PacedLoad:
    """LOAD_WORKERS threads sending GET /version to url at LOAD_RATE/s in all, new connection each."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.answers: list[Answer] = []
        self.seen: set[str] = set()  # versions that answered so far
        self._stop = threading.Event()
        self._lock = threading.Condition()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(LOAD_WORKERS)]

    def __enter__(self) -> "PacedLoad":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT + 5)

    def _run(self, index: int) -> None:
        period = LOAD_WORKERS / LOAD_RATE
        due = time.monotonic() + index * period / LOAD_WORKERS
        while not self._stop.is_set():
            self._stop.wait(max(0.0, due - time.monotonic()))  # pacing: the load's rate, not a sync
            due = max(due + period, time.monotonic() - period)  # a slow answer does not cause a burst
            started = time.monotonic()
            ok, body = False, ""
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT)
                try:
                    conn.request("GET", "/version", headers={"Connection": "close"})
                    response = conn.getresponse()
                    body = response.read().decode(errors="replace").strip()
                    ok = response.status == 200 and bool(body)
                finally:
                    conn.close()
            except (OSError, http.client.HTTPException):
                pass
            with self._lock:
                self.answers.append(Answer(started, time.monotonic(), ok, body))
                if ok:
                    self.seen.add(body)
                self._lock.notify_all()

    def wait_answers(self, since: float, count: int, timeout: float = 30.0) -> None:
        """Until `count` successful answers that started at or after `since` arrived."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(1 for a in self.answers if a.ok and a.started >= since) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ScenarioFailed(f"the app answered fewer than {count} requests in {timeout:.0f} s")
                self._lock.wait(left)

    def wait_seen(self, version: str, timeout: float = 30.0) -> None:
        """Until `version` has answered a request."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while version not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ScenarioFailed(f"{version} never answered through the load in {timeout:.0f} s")
                self._lock.wait(left)


def failed_and_gap(answers: list[Answer], since: float, until: float) -> tuple[int, float]:
    """(failed requests, longest time between consecutive successful answers' ends) for requests
    started in [since, until]."""
    window = [a for a in answers if since <= a.started <= until]
    ends = sorted(a.ended for a in window if a.ok)
    gap = max((b - a for a, b in zip(ends, ends[1:])), default=0.0)
    return sum(1 for a in window if not a.ok), gap


def all_on(answers: list[Answer], old: str) -> float | None:
    """Start (monotonic) of the first request the old version answered after which no other version
    answered (failed requests are counted apart, as failed requests)."""
    ordered = sorted(answers, key=lambda a: a.started)
    last_other = max((i for i, a in enumerate(ordered) if a.ok and a.body != old), default=-1)
    rest = [a for a in ordered[last_other + 1:] if a.ok]
    return rest[0].started if rest else None


@dataclass
class Side:
    """One side's app: its config, its container and where the load goes."""

    name: str
    config: Path
    container: str
    host: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    def rollout(self, *args: str, expect: tuple[int, ...] = (0,)) -> None:
        run([ROLLOUT, *args], env=self.env, timeout=120, expect=expect, what=f"{self.name}: rollout {' '.join(args)}")

    def version(self) -> str | None:
        return http_get(f"http://{self.host}:{self.port}/version")


def write_config(path: Path, container: str, *, timeout: float, stable: float, port: int | None = None,
                 proxy: object | None = None, slots: list[int] | None = None) -> Path:
    """rollout.toml for one side: stop-first on `port`, or behind `proxy` (support.routers.Proxy) on `slots`."""
    path.mkdir(parents=True, exist_ok=True)
    health_port = "{port}" if proxy is not None else str(port)
    text = (f'[apps.web]\nimage = "{APP_IMAGE}"\n\n[apps.web.health]\ntimeout = {timeout}\ninterval = 0.2\n'
            f'stable = {stable}\nhttp = "http://127.0.0.1:{health_port}/health"\n\n')
    if proxy is not None:
        text += (f'[apps.web.traffic]\nrouter = "{proxy.kind}"\nadmin = "{proxy.admin}"\n'  # type: ignore[attr-defined]
                 f'route = "{proxy.route}"\nslots = {slots}\nslot_env = "PORT"\ndrain = 0.3\n\n')  # type: ignore[attr-defined]
    text += (f'[[apps.web.targets]]\nname = "local"\nkind = "docker"\ncontainer = "{container}"\nnetwork = "host"\n'
             f'command = ["sh", "-c", {json.dumps(APP_COMMAND)}]\n')
    if proxy is None:
        text += f'env = {{ PORT = "{port}" }}\n'
    config = path / "rollout.toml"
    config.write_text(text)
    return config


@contextlib.contextmanager
def sides(settings: Settings, key: str, *, timeout: float) -> Iterator[dict[str, Side]]:
    """The three sides, each seeded with good1 and answering; proxies and containers gone afterwards."""
    require_docker()
    for tool in ("caddy", "haproxy"):
        if shutil.which(tool) is None:
            raise ScenarioFailed(f"{tool} is not installed: run `.ci/testbed proxies`")
    require_test_images("good1", "good2", "good3", "crash", "unhealthy-http")
    for variant in ("good1", "good2", "good3", "crash", "unhealthy-http"):
        docker("pull", "-q", f"{APP_IMAGE}:{variant}")
    # tests/support/routers.py is written for pytest's import path (support.*): put tests/ on it.
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from support.ports import free_port
    from support.routers import proxy

    prefix = f"bench-{key}-"
    remove_containers(prefix)
    root = settings.workdir / key
    stable = 0.5 if settings.quick else 1.0
    made: dict[str, Side] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(remove_containers, prefix)
        port = free_port()
        config = write_config(root / "stop-first", f"{prefix}stop-first", timeout=timeout, stable=stable, port=port)
        made["stop-first"] = Side("stop-first", config, f"{prefix}stop-first", "127.0.0.1", port, rollout_env(config))
        for kind in ROUTERS:
            slots = [free_port(), free_port()]
            where = root / f"{kind}-proxy"
            where.mkdir(parents=True)
            running = stack.enter_context(proxy(kind, where, [f"127.0.0.1:{s}" for s in slots]))
            config = write_config(root / kind, f"{prefix}{kind}", timeout=timeout, stable=stable, proxy=running,
                                  slots=slots)
            listen = int(running.url.rsplit(":", 1)[1])
            made[kind] = Side(kind, config, f"{prefix}{kind}", "127.0.0.1", listen, rollout_env(config))
        for side in made.values():
            side.rollout("deploy", "web:good1")
            wait_for_version(side.port, "good1")
        yield made


def measure(side: Side, action: Callable[[Side, PacedLoad], None]) -> tuple[PacedLoad, float, float]:
    """Run action(side, load) under the load: (load, monotonic start, end of the action)."""
    with PacedLoad(side.host, side.port) as load:
        load.wait_answers(time.monotonic(), 20)
        started = time.monotonic()
        action(side, load)
        ended = time.monotonic()
        load.wait_answers(ended, 20)
    return load, started, ended


def other(version: str | None) -> str:
    return "good2" if version == "good1" else "good1"


def b8_actions() -> dict[str, Callable[[Side, PacedLoad], None]]:
    def healthy(side: Side, _load: PacedLoad) -> None:
        side.rollout("deploy", f"web:{other(side.version())}")

    def crash(side: Side, _load: PacedLoad) -> None:
        side.rollout("deploy", "web:crash", expect=(1,))

    def unhealthy(side: Side, _load: PacedLoad) -> None:
        side.rollout("deploy", "web:unhealthy-http", expect=(1,))

    def revert(side: Side, _load: PacedLoad) -> None:
        side.rollout("revert")

    return dict(zip(CASES, (healthy, crash, unhealthy, revert)))


def downtime(settings: Settings, result: ScenarioResult) -> None:
    """B8: failed requests and longest gap per case, rollout with HAProxy / Caddy vs stop-first."""
    timeout = 5.0 if settings.quick else 8.0
    figures: dict[tuple[str, str], dict[str, list[float]]] = {
        (case, side): {"failed": [], "gap": []} for case in CASES for side in SIDES}
    with sides(settings, "b8", timeout=timeout) as made:
        for index in range(settings.runs):
            order = SIDES[index % 3:] + SIDES[:index % 3]
            for case, action in b8_actions().items():
                for name in order:
                    load, started, ended = measure(made[name], action)
                    failed, gap = failed_and_gap(load.answers, started, ended)
                    figures[(case, name)]["failed"].append(failed)
                    figures[(case, name)]["gap"].append(gap)
    for case in CASES:
        for router in ROUTERS:
            mine, base = figures[(case, router)], figures[(case, "stop-first")]
            result.comparisons.append(Comparison(f"{case}: failed requests at {LOAD_RATE}/s", LABELS[router],
                                                 LABELS["stop-first"], rollout=mine["failed"], baseline=base["failed"],
                                                 unit="requests", target="0"))
            result.comparisons.append(Comparison(f"{case}: longest gap between answers", LABELS[router],
                                                 LABELS["stop-first"], rollout=mine["gap"], baseline=base["gap"]))
    result.metrics.update(load_rps=LOAD_RATE, boot_s=BOOT, health_timeout_s=timeout,
                          health_stable_s=0.5 if settings.quick else 1.0, drain_s=0.3)


def revert_latency(settings: Settings, result: ScenarioResult) -> None:
    """B9: the release dies after taking the traffic; its exit -> all traffic on the old release."""
    timeouts = 5.0 if settings.quick else 8.0
    latency: dict[str, list[float]] = {name: [] for name in SIDES}
    failed: dict[str, list[int]] = {name: [] for name in SIDES}
    detection: dict[str, list[float]] = {name: [] for name in SIDES}
    with sides(settings, "b9", timeout=timeouts) as made:
        for index in range(settings.runs):
            order = SIDES[index % 3:] + SIDES[:index % 3]
            for name in order:
                side = made[name]
                old = side.version()
                if old is None:
                    raise ScenarioFailed(f"{name}: the app does not answer before the run")
                killed: list[str] = []

                def die_after_switch(side: Side, load: PacedLoad) -> None:
                    deploy = threading.Thread(target=lambda: killed.append(_deploy_good3(side)), daemon=True)
                    deploy.start()
                    load.wait_seen("good3", timeout=60)
                    ids = docker("ps", "-q", "--filter", f"name={side.container}", "--filter",
                                 "label=rollout.tag=good3").split()
                    if len(ids) != 1:
                        raise ScenarioFailed(f"{name}: expected one running good3 container, found {len(ids)}")
                    docker("kill", ids[0])
                    killed.insert(0, ids[0])
                    deploy.join(120)
                    if len(killed) != 2 or killed[1] != "exit 1":
                        raise ScenarioFailed(f"{name}: the deploy of good3 did not end in a revert: {killed[1:]}")

                load, started, ended = measure(side, die_after_switch)
                exited = docker_time(docker("inspect", "-f", "{{.State.FinishedAt}}", killed[0]))
                offset = time.time() - time.monotonic()
                back = all_on([a for a in load.answers if a.started >= started], old)
                if back is None:
                    raise ScenarioFailed(f"{name}: {old} never took all the traffic back")
                # 0, not below: with HAProxy's redispatch, requests that began on the dying release
                # before its exit were retried onto the old one (answered by it, started earlier).
                latency[name].append(max(0.0, back + offset - exited))
                failed[name].append(failed_and_gap(load.answers, started, ended)[0])
                detection[name].append(_failed_at(side) - exited)
    for router in ROUTERS:
        result.comparisons.append(Comparison(
            "release dies after the switch: its exit -> all traffic on the old release", LABELS[router],
            LABELS["stop-first"], rollout=latency[router], baseline=latency["stop-first"], target="<= 0.1 s"))
    for router in ROUTERS:
        result.comparisons.append(Comparison(
            f"same: failed requests at {LOAD_RATE}/s (a dead upstream until the switch back)", LABELS[router],
            LABELS["stop-first"], rollout=failed[router], baseline=failed["stop-first"], unit="requests"))
    result.metrics.update({f"{name}_exit_to_ledger_failed_s": round(sorted(v)[len(v) // 2], 4)
                           for name, v in detection.items()})
    result.metrics.update(load_rps=LOAD_RATE, boot_s=BOOT)


def _deploy_good3(side: Side) -> str:
    done = run([ROLLOUT, "deploy", "web:good3"], env=side.env, timeout=120, expect=(0, 1, 3, 4, 5),
               what=f"{side.name}: rollout deploy web:good3")
    return f"exit {done.returncode}"


def _failed_at(side: Side) -> float:
    """Wall-clock time of the newest deploy entry's status:failed event in the side's SQLite ledger."""
    ledger = side.config.parent / "state" / "ledger.db"
    conn = sqlite3.connect(ledger)
    try:
        row = conn.execute("SELECT ev.at FROM events ev JOIN entries en ON en.id = ev.entry_id"
                           " WHERE en.kind = 'deploy' AND ev.event = 'status:failed' ORDER BY ev.id DESC LIMIT 1"
                           ).fetchone()
    finally:
        conn.close()
    if row is None:
        raise ScenarioFailed(f"{side.name}: the ledger has no status:failed event")
    return iso_time(row[0])
