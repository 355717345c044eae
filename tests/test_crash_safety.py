"""SIGKILL `rollout deploy` at many distinct moments on the real engine, then check nothing is lost.

Moments are reproducible: the product's test hook (`ROLLOUT_TEST_KILL_AT="<step>#<n>"`,
rollout.faults.kill_point) makes the process kill itself right after the n-th such step;
moments between steps (waiting for health, an engine pull) are reached by killing at a
fixed delay after a step the test sees in the ledger.

It runs on both ledger backends (ledger_project). After every kill the ledger must be whole:
a SQLite file passes `PRAGMA integrity_check`, and on either backend every entry's events tell
one consistent story (`recorded` first, status moves only forward and matches the entry, a
finished entry has its finish time, each target row's outcome is its last target event): what
a transaction cut off by the kill may not break, whether SQLite's journal or PostgreSQL's
server rolls it back. Then the next `rollout status` (or `deploy`) must mark the interrupted
entry `interrupted`, get the app onto a healthy recorded digest (the recovery rule,
Orchestrator.recover), leave no entry unfinished, and the dead process's lease must block
nobody: the lock is taken at once (on PostgreSQL, no row lock of the killed session is left).
The test prints kills tried / recovered / lost per backend; lost must be 0.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from rollout import lock
from rollout.ledger import FINISHED, open_ledger
from support.cli import finish
from support.images import image_names
from support.ports import free_port
from support.project import STEP_TIMEOUT, Project, http_get, write_config
from support.proxy import Fault, RegistryProxy, start_proxy
from support.routers import Proxy, proxy
from support.traffic import deploy, routed, through, write_traffic_config

GOOD = ("good1", "good2", "good3")


@dataclass(frozen=True)
class Moment:
    name: str
    tag: str  # what the killed deploy deploys; "good" means a good build other than the one serving
    kill_at: str | None = None  # ROLLOUT_TEST_KILL_AT for the deploy
    after: tuple[str, str, float] | None = None  # kill when an entry of this kind reaches this status, + delay
    during_pull: bool = False  # kill while the engine pulls the image through a slow registry proxy
    recovery_kill_at: str | None = None  # also kill the first recovering `status` at this step
    recover_with: str = "status"  # or "deploy": the next deploy recovers first


MOMENTS = [
    # A good release, killed at every step of the way.
    Moment("after the pending entry is recorded", "good", kill_at="recorded#1"),
    Moment("after status applying (before the pull)", "good", kill_at="status:applying#1"),
    Moment("after the new container is created, the old one untouched", "good", kill_at="docker:created#1",
           recover_with="deploy"),
    Moment("after the old container is set aside, still running", "good", kill_at="docker:renamed#1"),
    Moment("after the new one took the name and the old one stopped, before start", "good",
           kill_at="docker:stopped#1"),
    Moment("after the new container started", "good", kill_at="docker:started#1"),
    Moment("after the target is recorded applied", "good", kill_at="target:applied#1"),
    Moment("after status verifying", "good", kill_at="status:verifying#1", recover_with="deploy"),
    Moment("after the target is recorded healthy", "good", kill_at="target:healthy#1"),
    Moment("after status healthy", "good", kill_at="status:healthy#1"),
    # A crashing release: killed around the failure and all through the automatic revert.
    Moment("after the failed verdict is recorded", "crash", kill_at="target:failed#1"),
    Moment("inside the failed+revert transaction", "crash", kill_at="status:failed#1"),
    Moment("revert: after status applying", "crash", kill_at="status:applying#2"),
    Moment("revert: after the crashed container is renamed", "crash", kill_at="docker:renamed#2"),
    Moment("revert: after the kept container is started", "crash", kill_at="docker:started#2", recover_with="deploy"),
    Moment("revert: after the target is recorded applied", "crash", kill_at="target:applied#2"),
    Moment("revert: after status verifying", "crash", kill_at="status:verifying#2"),
    Moment("revert: after the target is recorded healthy", "crash", kill_at="target:healthy#1"),
    Moment("revert: after status healthy", "crash", kill_at="status:healthy#1"),
    # Between steps, by time.
    Moment("0.5 s into waiting for a never-ready release", "never-ready", after=("deploy", "verifying", 0.5)),
    Moment("2 s into waiting for a never-ready release", "never-ready", after=("deploy", "verifying", 2.0)),
    Moment("0.5 s into a good release's stable window", "good", after=("deploy", "verifying", 0.5)),
    Moment("0.3 s into verifying the automatic revert", "crash", after=("revert", "verifying", 0.3)),
    Moment("while the engine pulls the new image", "good", during_pull=True),
    # The recovery itself killed, then recovered by the next command.
    Moment("recovery killed while marking entries interrupted", "good", kill_at="docker:started#1",
           recovery_kill_at="status:interrupted#1"),
    Moment("recovery killed after its revert is recorded", "good", kill_at="target:applied#1",
           recovery_kill_at="status:applying#1"),
    Moment("recovery killed after restarting the kept container", "good", kill_at="status:verifying#1",
           recovery_kill_at="docker:started#1"),
]


@pytest.fixture
def slow_pull_proxy(registry: str) -> Iterator[RegistryProxy]:
    with start_proxy(registry) as proxy:
        yield proxy


def other_good(project: Project) -> str:
    serving = project.version()
    return next(tag for tag in GOOD if tag != serving)


# Where an entry's status may be, in order: a status event never goes back (rollout.ledger).
RANK = {"pending": 0, "applying": 1, "verifying": 2, **{status: 3 for status in FINISHED}}


def ledger_problem(project: Project) -> str | None:
    """What is broken in the ledger, or None (see the module docstring): read through
    rollout's own ledger API, so both backends answer the same questions."""
    if not project.on_postgres:
        [(integrity,)] = project.ledger_rows("PRAGMA integrity_check")
        if integrity != "ok":
            return f"integrity_check: {integrity}"
    ledger = project.open_ledger()
    try:
        for entry in ledger.history():
            events = [e["event"] for e in ledger.events(entry.id)]
            moves = [e.removeprefix("status:") for e in events if e.startswith("status:")]
            if not events or events[0] != "recorded":
                return f"#{entry.id}'s events do not start with recorded: {events}"
            ranks = [RANK["pending"], *(RANK[status] for status in moves)]
            if any(later <= before for before, later in zip(ranks, ranks[1:])):
                return f"#{entry.id}'s status went back or repeated: {moves}"
            if (moves[-1] if moves else "pending") != entry.status:
                return f"#{entry.id} is {entry.status} but its last status event says {moves[-1:]}"
            if (entry.finished_at is not None) != (entry.status in FINISHED):
                return f"#{entry.id} is {entry.status} with finished_at {entry.finished_at}"
            last_event = {e["detail"]["target"]: e["event"] for e in ledger.events(entry.id)
                          if e["event"].startswith("target:")}
            outcomes = {row.target: f"target:{row.outcome}" for row in ledger.targets(entry.id)}
            if last_event != outcomes:
                return f"#{entry.id}'s target rows {outcomes} are not its last target events {last_event}"
        return None
    finally:
        ledger.close()


def lock_is_free(project: Project) -> str | None:
    """None when the app's lock can be taken at once (a dead holder's lease taken over); else why not.
    On PostgreSQL a row lock left behind fails after lock_timeout instead of hanging the test."""
    location = project.ledger_location + ("?options=-c%20lock_timeout%3D10s" if project.on_postgres else "")
    ledger = open_ledger(location)
    try:
        lease = lock.try_acquire(ledger, "web")
        if lease is None:
            return f"the lock is still held: {[held.describe() for held in lock.read(ledger, 'web')]}"
        lock.release(ledger, lease)
        return None
    except ledger.database_errors as exc:
        return f"taking the lock failed: {exc}"
    finally:
        ledger.close()


class Harness:
    def __init__(self, project: Project, proxy: RegistryProxy, engine: Any) -> None:
        self.project = project
        self.proxy = proxy
        self.engine = engine
        self.tried = 0
        self.recovered = 0
        self.lost: list[str] = []

    def kill(self, moment: Moment) -> str | None:
        """Run the deploy and kill it at the moment; None when it died there, else why not."""
        project = self.project
        last_id = project.ledger_rows("SELECT coalesce(max(id), 0) FROM entries")[0][0]
        tag = other_good(project) if moment.tag == "good" else moment.tag
        if moment.during_pull:
            write_config(project, image=self.hold_the_pull(), timeout=4, stable=1)
        if moment.after is not None:
            # Windows wide enough that a busy machine's slow poll cannot see them close before the kill.
            write_config(project, timeout=10, stable=4)
        process = project.start("deploy", f"web:{tag}", kill_at=moment.kill_at)
        try:
            if moment.after is not None:
                kind, status, delay = moment.after
                if not project.wait_for_entry(process, last_id, kind, status):
                    return f"no {kind} entry reached {status}"
                time.sleep(delay)
                process.send_signal(signal.SIGKILL)
            elif moment.during_pull:
                deadline = time.monotonic() + STEP_TIMEOUT
                while not self.proxy.faults_applied["delay"] and process.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                if process.poll() is not None or not self.proxy.faults_applied["delay"]:
                    return self.no_pull(process)
                # The held request must be the engine's pull (prepare runs once the entry is
                # `applying`), not one of rollout's own registry requests.
                if not project.ledger_rows("SELECT 1 FROM entries WHERE id > ? AND kind = 'deploy' AND status = 'applying'",
                                   (last_id,)):
                    return "a registry request was held before the engine pulled (the entry is not applying)"
                time.sleep(0.5)
                process.send_signal(signal.SIGKILL)
            code, stderr = finish(process)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if moment.during_pull:
                self.proxy.clear_faults()
            if moment.during_pull or moment.after is not None:
                write_config(project, timeout=4, stable=1)
        if code != -signal.SIGKILL:
            return f"the deploy was not killed there: exit {code}: {stderr.strip()[-300:]}"
        return None

    def no_pull(self, process: Any) -> str:
        """Why the engine never asked the proxy for the manifest: what rollout said, what the proxy saw."""
        ended = "still running after %gs" % STEP_TIMEOUT
        if process.poll() is not None:
            code, stderr = finish(process)
            ended = f"rollout exited {code}: {stderr.strip()[-1500:]!r}"
        held = sorted(image_names(self.engine, f"{self.proxy.host}/"))
        return (f"the engine never started pulling ({ended}; proxy requests {dict(self.proxy.request_counts)};"
                f" engine names under the proxy {held})")

    def hold_the_pull(self) -> str:
        """Make the engine's next pull through the proxy hang (20 s) until the test kills the deploy;
        the image name (no tag) to deploy for it.

        Held: any request for a manifest by digest, HEAD or GET (rollout itself asks for the
        tag). Docker 20.10 GETs a manifest it has never pulled and only HEADs one its content
        store kept from an earlier pull: the test images are built and pushed, never pulled, so
        on a fresh machine the first pull is a GET, which a HEAD-only hold let through, and the
        deploy ran to its end ("the engine never started pulling"; a rerun passed).
        The name is one no engine pulled from (RegistryProxy.unseen_name): under the proxy's own name
        an earlier proxy on the same port may have left the manifest in Docker's content store, and the
        deploy ran to its end without a manifest request (the clean-clone CI at 3ea309f).
        """
        self.proxy.inject(Fault("delay", kind="manifest", method=None, path_contains="/manifests/sha256:",
                                delay=20.0, times=None))
        return self.proxy.unseen_name("rollout-test/app")

    def recover(self, moment: Moment, interrupted_ids: list[int]) -> str | None:
        """Run the next command and check the app is back on a healthy recorded digest; None when it is."""
        project = self.project
        if problem := ledger_problem(project):
            return problem
        if moment.recovery_kill_at:
            code, stderr = finish(project.start("status", "--json", kill_at=moment.recovery_kill_at))
            if code != -signal.SIGKILL:
                return f"the recovering status was not killed at {moment.recovery_kill_at}: exit {code}: {stderr[-300:]}"
            if problem := ledger_problem(project):
                return f"after the second kill: {problem}"
        deployed = None
        if moment.recover_with == "deploy":
            deployed = other_good(project)
            code, stderr = finish(project.start("deploy", f"web:{deployed}"))
            if code != 0:
                return f"the next deploy exited {code}: {stderr.strip()[-400:]}"
        result = project.run("status", "--json")
        if result.returncode != 0:
            return f"status exited {result.returncode}: {result.stderr.strip()[-400:]}"
        report = json.loads(result.stdout)
        current = report["current"]
        if current is None or not all(t["in_sync"] for t in report["targets"]):
            return f"not in sync after recovery: {report}"
        serving = project.version()
        if serving not in GOOD or serving != current["tag"]:
            return f"serves {serving!r}, the ledger's current entry is {current['tag']!r}"
        if deployed is not None and serving != deployed:
            return f"the next deploy of {deployed} left {serving!r} serving"
        statuses = dict(project.ledger_rows("SELECT id, status FROM entries"))
        unfinished = [i for i, s in statuses.items() if s in ("pending", "applying", "verifying")]
        if unfinished:
            return f"entries still unfinished: {unfinished}"
        wrong = {i: statuses[i] for i in interrupted_ids if statuses[i] != "interrupted"}
        if wrong:
            return f"interrupted entries not marked interrupted: {wrong}"
        locks = project.run("lock", "status", "--json")
        if locks.returncode != 0 or not all(lease["stale"] for lease in json.loads(locks.stdout)):
            return f"a live lock is left after recovery: {locks.stdout}{locks.stderr}"
        return ledger_problem(project) or lock_is_free(project)

    def run(self, moment: Moment) -> None:
        self.tried += 1
        problem = self.kill(moment)
        if problem is None:
            interrupted = [row[0] for row in self.project.ledger_rows(
                "SELECT id FROM entries WHERE status IN ('pending', 'applying', 'verifying')")]
            problem = self.recover(moment, interrupted)
        if problem is None:
            self.recovered += 1
        else:
            self.lost.append(f"{moment.name}: {problem}")


def test_sigkill_at_every_moment_loses_nothing(ledger_project: Project, slow_pull_proxy: RegistryProxy,
                                               docker_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    project = ledger_project
    assert len({(m.tag, m.kill_at, m.after, m.during_pull, m.recovery_kill_at) for m in MOMENTS}) == len(MOMENTS) >= 20
    write_config(project, timeout=4, stable=1)
    first = project.run("deploy", "web:good1")
    assert first.returncode == 0, first.stderr
    harness = Harness(project, slow_pull_proxy, docker_client)
    for moment in MOMENTS:
        harness.run(moment)
    with capsys.disabled():
        print(f"\ncrash safety ({project.backend}): kills tried {harness.tried} / recovered {harness.recovered} / lost {len(harness.lost)}")
        for line in harness.lost:
            print(f"  LOST {line}")
    assert harness.lost == []
    assert harness.recovered == harness.tried == len(MOMENTS)
    # However often it was killed, every entry of the history ended with an outcome.
    assert {e["status"] for e in project.history()} == {"healthy", "failed", "interrupted"}


# -- SIGKILL at each step of a zero-downtime switch (issue 14): a docker target with a traffic
# section, behind a real proxy started per test (support.routers), SQLite ledger (the switch's
# recovery does not depend on the backend; the moments above run on both).

WAIT = 60.0  # seconds: a hang guard on what a switch test waits for, not a measurement

SWITCH_KILLS = [  # (router, kill point, recovered by, the deployed release fails after the switch)
    pytest.param("haproxy", "docker:started#1", "status", False, id="haproxy-started-beside-before-the-switch"),
    # HAProxy's switch is two runtime API commands: killed between them, both servers take traffic.
    pytest.param("haproxy", "traffic:both-ready#1", "status", False, id="haproxy-during-the-switch"),
    pytest.param("haproxy", "traffic:switched#1", "status", False, id="haproxy-right-after-the-switch"),
    pytest.param("haproxy", "traffic:switched#1", "deploy", False, id="haproxy-right-after-the-switch-recovered-by-deploy"),
    pytest.param("haproxy", "traffic:switched-back#1", "status", True, id="haproxy-during-a-failure-switching-back"),
    # Caddy's switch is one admin API request: before and after it are the moments there are.
    pytest.param("caddy", "docker:started#1", "status", False, id="caddy-started-beside-before-the-switch"),
    pytest.param("caddy", "traffic:switched#1", "status", False, id="caddy-right-after-the-switch"),
    pytest.param("caddy", "traffic:switched-back#1", "status", True, id="caddy-during-a-failure-switching-back"),
]


@pytest.mark.parametrize("router,kill_at,recover_with,breaks", SWITCH_KILLS)
def test_sigkill_during_a_switch_leaves_the_router_on_a_healthy_recorded_release(  # type: ignore[no-untyped-def]
        project, tmp_path, docker_client, router, kill_at, recover_with, breaks) -> None:
    slots = [free_port(), free_port()]
    proxy_dir = tmp_path / "proxy"
    proxy_dir.mkdir()
    with proxy(router, proxy_dir, [f"127.0.0.1:{s}" for s in slots]) as running:
        write_traffic_config(project, running, slots)
        _kill_during_a_switch(project, running, slots, docker_client, kill_at, recover_with, breaks)


def _kill_during_a_switch(project: Project, running: Proxy, slots: list[int], docker_client: Any, kill_at: str,
                          recover_with: str, breaks: bool) -> None:
    assert deploy(project, "good1").returncode == 0
    if breaks:
        write_traffic_config(project, running, slots, stable=10)  # a window long enough to break the release in
    process = project.start("deploy", "web:good2", kill_at=kill_at)
    try:
        if breaks:
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline and process.poll() is None and through(running) != "good2":
                time.sleep(0.02)  # polling the proxy until good2 serves, not waiting for time to pass
            assert through(running) == "good2", "good2 never took the traffic"
            [new] = [c for c in docker_client.containers.list(filters={"label": "rollout.tag=good2"})
                     if c.name.startswith(project.container)]
            new.exec_run(["rm", "/www/health"])
        code, stderr = finish(process, timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == -9, f"the deploy was not killed at {kill_at}: exit {code}: {stderr[-400:]}"

    if recover_with == "status":
        recovery = project.run("status", "--json")
        assert recovery.returncode == 0, recovery.stderr
    else:
        recovery = project.run("deploy", "web:good3")
        assert recovery.returncode == 0, recovery.stderr
    assert "was interrupted" in recovery.stderr and "Traceback" not in recovery.stderr
    report = project.json("status", "--json")
    current, [target] = report["current"], report["targets"]
    expected = "good1" if recover_with == "status" else "good3"
    assert (current["tag"], current["status"]) == (expected, "healthy")
    # The router sends everything to the slot of the container under the name, which runs the
    # ledger's current entry and answers, directly and through the proxy.
    live = docker_client.containers.get(project.container)
    slot = int(live.labels["rollout.slot"])
    assert live.status == "running" and live.labels["rollout.tag"] == expected
    # Nothing unverified keeps running beside it (killed right after starting good2 beside good1,
    # recovery removes that container: Target.tidy).
    others = [c.name for c in docker_client.containers.list(filters={"name": project.container})
              if c.name.startswith(project.container) and c.id != live.id]
    assert others == [], f"running beside the live release after recovery: {others}"
    assert target["in_sync"] and target["digest"] == current["digest"] and target["traffic"]["routed"], target
    assert routed(running) == [f"127.0.0.1:{slot}"]
    assert http_get(f"http://127.0.0.1:{slot}/version") == expected and through(running) == expected
    statuses = {e["id"]: e["status"] for e in project.history()}
    assert "interrupted" in statuses.values() and "verifying" not in statuses.values()
    # And nothing is stuck: the next deploy moves the traffic again.
    after = "good3" if expected != "good3" else "good2"  # not the broken good2 (its kept container lacks /health)
    assert deploy(project, after).returncode == 0 and through(running) == after
