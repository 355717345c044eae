"""Zero-downtime deploys on a docker host through a real reverse proxy (issue 14), end to end:
the real engine and registry, a real HAProxy or Caddy started per test (support.routers), a steady
client load through the proxy (support.load) while rollout deploys, fails and reverts.

The app is the test image on the host network; `slot_env = "PORT"` tells each release its slot.
No request may fail through either router (Caddy needs net.ipv4.tcp_migrate_req=1, which
.ci/testbed sets: see rollout.routers.caddy). The SIGKILL moments of a switch are in
tests/test_crash_safety.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from rollout.config import HealthPolicy
from rollout.health import verify
from rollout.ledger import open_ledger
from rollout.reference import parse
from rollout.targets import Observation
from rollout.targets.docker.traffic import SlotWatch
from rollout.orchestrator import Orchestrator
from support.bed import need
from support.fakes import (IMAGE, FakeClock, FakeResolver, FakeTarget, RecordingReporter, ScriptedWatch, app_config,
                           crashes, fake_digest, scripted_verifier)
from support.fleet import Engine, FleetUnavailable, start_fleet
from support.images import APP_IMAGE, digest_of
from support.load import Load
from support.ports import free_port
from support.project import Project
from support.routers import Proxy, proxy
from support.traffic import deploy, routed, through, write_traffic_config

ROUTERS = ["haproxy", "caddy"]
WAIT = 60.0  # seconds: a hang guard on what a test waits for, not a measurement


@pytest.fixture(params=ROUTERS)
def bed(request: pytest.FixtureRequest, project: Project, tmp_path: Path) -> Iterator[tuple[Project, Proxy, list[int]]]:
    """The project's app behind a fresh proxy with two slots, the traffic on the first (where nothing runs yet)."""
    slots = [free_port(), free_port()]
    proxy_dir = tmp_path / "proxy"
    proxy_dir.mkdir()
    with proxy(request.param, proxy_dir, [f"127.0.0.1:{s}" for s in slots]) as running:
        write_traffic_config(project, running, slots)
        yield project, running, slots


def failures(load: Load) -> list[str]:
    return [a.error or f"http {a.status}: {a.body[:60]}" for a in load.answers if not a.ok]


def served(load: Load) -> list[str]:
    """The versions that answered, in order of the requests' starts."""
    return [a.body.strip() for a in sorted(list(load.answers), key=lambda a: a.started) if a.ok]


def check_failures(running: Proxy, load: Load, record_property: Any) -> None:
    """0 failed requests through either router (the load opens a new connection per request; Caddy
    needs net.ipv4.tcp_migrate_req=1 for that: tests/test_routers.py says why)."""
    failed = failures(load)
    record_property(f"{running.kind}_failed_requests", f"{len(failed)} of {len(load.answers)}")
    if running.kind == "caddy":
        from rollout.routers.caddy import reload_resets_queued_connections

        need(not reload_resets_queued_connections(), "net.ipv4.tcp_migrate_req=1 (.ci/testbed proxies sets it)")
    assert failed == [], f"{len(failed)} of {len(load.answers)} requests failed: {failed[:5]}"
    assert len(load.answers) - len(failed) > 20, "the load hardly ran"


def test_healthy_upgrade_moves_traffic_without_dropping_requests(bed, docker_client, record_property) -> None:  # type: ignore[no-untyped-def]
    project, running, slots = bed
    first = deploy(project, "good1")
    assert first.returncode == 0, first.stderr
    # The first release went to the idle slot (the proxy pointed at slot 1, where nothing ran).
    assert routed(running) == [f"127.0.0.1:{slots[1]}"] and through(running) == "good1"
    old = docker_client.containers.get(project.container)
    with Load(running.url, workers=4, path="/version") as load:
        load.wait_after(time.monotonic(), 20)
        result = deploy(project, "good2")
        assert result.returncode == 0, result.stderr
        load.wait_after(time.monotonic(), 20)
    check_failures(running, load, record_property)
    bodies = served(load)
    assert bodies[0] == "good1" and bodies[-1] == "good2"
    assert routed(running) == [f"127.0.0.1:{slots[0]}"]
    new = docker_client.containers.get(project.container)
    assert new.labels["rollout.tag"] == "good2" and new.labels["rollout.slot"] == str(slots[0])
    old.reload()
    # Kept, stopped, under a retired name: what a later revert starts again.
    assert old.name.startswith(f"{project.container}.rollout-") and old.status == "exited"
    statuses = [(e["tag"], e["status"]) for e in project.history()]
    assert statuses == [("good2", "healthy"), ("good1", "healthy")]


def force_redeploy_after_an_edit(project: Project, running: Proxy, tag: str, setting: str, code: int) -> Load:
    """Append `setting` (a TOML line) to the target's table, then `deploy web:TAG --force` (which
    must exit `code`) under a load through the proxy; returns the finished load."""
    project.config.write_text(project.config.read_text() + setting + "\n")
    with Load(running.url, workers=4, path="/version") as load:
        load.wait_after(time.monotonic(), 20)
        result = project.run("deploy", f"web:{tag}", "--force")
        assert result.returncode == code, result.stderr
        load.wait_after(time.monotonic(), 20)
    return load


def test_a_forced_deploy_after_editing_the_settings_starts_a_new_container_beside(  # type: ignore[no-untyped-def]
        bed, docker_client, record_property) -> None:
    """`deploy --force` of the digest that runs, after an edit of rollout.toml: the running
    container was created from the old settings, so a new one runs the edited ones on the idle
    slot and takes the traffic (README: Kept containers and edited settings)."""
    project, running, slots = bed
    assert deploy(project, "good1").returncode == 0
    old = docker_client.containers.get(project.container)
    load = force_redeploy_after_an_edit(project, running, "good1", 'labels = { edited = "yes" }', 0)
    check_failures(running, load, record_property)
    live = docker_client.containers.get(project.container)
    assert live.id != old.id and live.labels.get("edited") == "yes" and live.labels["rollout.tag"] == "good1"
    assert routed(running) == [f"127.0.0.1:{slots[0]}"] and through(running) == "good1"
    old.reload()
    assert old.status == "exited"  # retired after the drain, kept for a revert


def test_a_forced_redeploy_with_broken_settings_leaves_the_release_serving(  # type: ignore[no-untyped-def]
        bed, docker_client, record_property) -> None:
    """good2 serves; an edit breaks the command and `deploy web:good2 --force` crashes on the idle
    slot: the traffic never moves, and the failure goes back to good2 (the running container), not
    to good1: no request ever sees another version."""
    project, running, slots = bed
    assert deploy(project, "good1").returncode == 0
    assert deploy(project, "good2").returncode == 0
    live = docker_client.containers.get(project.container)
    upstreams = routed(running)
    load = force_redeploy_after_an_edit(project, running, "good2", 'command = ["sh", "-c", "echo broken; exit 1"]', 1)
    check_failures(running, load, record_property)
    assert set(served(load)) == {"good2"}
    assert routed(running) == upstreams and docker_client.containers.get(project.container).id == live.id
    revert, failed, current, _ = project.history()
    assert (failed["tag"], failed["status"]) == ("good2", "failed")
    assert (revert["tag"], revert["status"], revert["reverts_to"]) == ("good2", "healthy", current["id"])


def test_crash_at_start_never_takes_traffic(bed, docker_client, record_property) -> None:  # type: ignore[no-untyped-def]
    project, running, slots = bed
    assert deploy(project, "good1").returncode == 0
    live = docker_client.containers.get(project.container)
    started_at = live.attrs["State"]["StartedAt"]
    with Load(running.url, workers=4, path="/version") as load:
        load.wait_after(time.monotonic(), 20)
        result = deploy(project, "crash")
        assert result.returncode == 1, result.stderr
        load.wait_after(time.monotonic(), 20)
    # The traffic never moved: no switch, so not even Caddy reloaded.
    assert failures(load) == [], failures(load)[:5]
    record_property(f"{running.kind}_failed_requests", f"0 of {len(load.answers)}")
    assert set(served(load)) == {"good1"}
    assert routed(running) == [f"127.0.0.1:{slots[1]}"]
    live.reload()
    assert live.name == project.container and live.status == "running"
    assert live.attrs["State"]["StartedAt"] == started_at  # never stopped or restarted
    assert "exited with code 1" in result.stderr and "Traceback" not in result.stderr
    revert, failed, good = project.history()
    assert failed["status"] == "failed" and revert["kind"] == "revert" and revert["status"] == "healthy"


def deploy_good2_and_break_it_once_it_serves(project: Project, running: Proxy, docker_client: Any,
                                             first: Callable[[Load], None] | None = None) -> tuple[Load, list[str]]:
    """`rollout deploy web:good2` (which must exit 1) under a load through the proxy; as soon as good2
    answers through it, run `first` (if any), then remove good2's /health (a release that fails
    after the switch). Returns the finished load and [good2's container id] (empty: it never served)."""
    broken: list[str] = []

    def break_it(load: Load) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and "good2" not in served(load):
            time.sleep(0.02)  # polling the load's answers, not waiting for time to pass
        if first is not None:
            first(load)
        [new] = [c for c in docker_client.containers.list(filters={"label": "rollout.tag=good2"})
                 if c.name.startswith(project.container)]
        new.exec_run(["rm", "/www/health"])
        broken.append(new.id)

    with Load(running.url, workers=4, path="/version") as load:
        load.wait_after(time.monotonic(), 20)
        breaker = threading.Thread(target=break_it, args=(load,), daemon=True)
        breaker.start()
        result = deploy(project, "good2")
        assert result.returncode == 1, result.stderr
        breaker.join(WAIT)
        load.wait_after(time.monotonic(), 20)
    return load, broken


def test_failing_health_after_the_switch_switches_back_to_the_running_old_release(bed, docker_client, record_property) -> None:  # type: ignore[no-untyped-def]
    project, running, slots = bed
    assert deploy(project, "good1").returncode == 0
    old = docker_client.containers.get(project.container)
    started_at = old.attrs["State"]["StartedAt"]
    write_traffic_config(project, running, slots, stable=10)  # a window long enough to break the release in
    load, broken = deploy_good2_and_break_it_once_it_serves(project, running, docker_client)
    assert broken, "good2 never took the traffic"
    check_failures(running, load, record_property)
    bodies = served(load)
    assert "good2" in bodies and bodies[-1] == "good1"
    assert routed(running) == [f"127.0.0.1:{slots[1]}"]
    old.reload()
    # The old release served throughout: the same container, never stopped, back under the name.
    assert old.name == project.container and old.status == "running"
    assert old.attrs["State"]["StartedAt"] == started_at
    assert docker_client.containers.get(broken[0]).status == "exited"
    revert, failed, good = project.history()
    assert (failed["tag"], failed["status"]) == ("good2", "failed") and "http 404" in failed["error"]
    # Failed at the first broken probe with the traffic on it, not at health.timeout (20 s).
    assert "after taking the traffic" in failed["error"] and "not healthy within" not in failed["error"]
    assert (revert["tag"], revert["kind"], revert["status"]) == ("good1", "revert", "healthy")


def test_a_failure_after_the_old_container_died_keeps_the_traffic_until_the_revert_serves(  # type: ignore[no-untyped-def]
        bed, docker_client, record_property) -> None:
    """The old container is gone when the new release fails after the switch: switching back
    would send everyone to a dead slot. The traffic stays on the failed (still answering) release
    until the revert has started the old release again, verified it and switched: no failed request."""
    project, running, slots = bed
    assert deploy(project, "good1").returncode == 0
    old = docker_client.containers.get(project.container)
    write_traffic_config(project, running, slots, stable=10)

    def kill_the_old(load: Load) -> None:
        # Once the switch is complete and the requests the old release had taken were answered (a
        # request killed inside a process is lost whatever the router does): the old one dies idle.
        gone = f"127.0.0.1:{old.labels['rollout.slot']}"
        deadline = time.monotonic() + WAIT
        while gone in routed(running) or not routed(running):
            assert time.monotonic() < deadline, f"the traffic never left {gone}: {routed(running)}"
            time.sleep(0.02)  # polling the router's state
        load.wait_in_flight_before(time.monotonic())
        old.kill()
        old.wait(timeout=WAIT)

    load, broken = deploy_good2_and_break_it_once_it_serves(project, running, docker_client, first=kill_the_old)
    assert broken, "good2 never took the traffic"
    check_failures(running, load, record_property)
    assert served(load)[-1] == "good1" and through(running) == "good1"
    live = docker_client.containers.get(project.container)
    assert live.labels["rollout.tag"] == "good1" and live.status == "running"
    assert routed(running) == [f"127.0.0.1:{live.labels['rollout.slot']}"]
    assert docker_client.containers.get(broken[0]).status == "exited"  # stopped once the revert served
    revert, failed, _ = project.history()
    assert (failed["tag"], failed["status"]) == ("good2", "failed")
    assert (revert["tag"], revert["kind"], revert["status"]) == ("good1", "revert", "healthy")


def test_something_else_on_the_idle_slot_refuses_the_deploy_before_anything_changes(  # type: ignore[no-untyped-def]
        bed, docker_client) -> None:
    project, running, slots = bed
    assert deploy(project, "good1").returncode == 0
    live = docker_client.containers.get(project.container)
    [idle] = [s for s in slots if s != int(live.labels["rollout.slot"])]
    squatter = socket.socket()
    try:
        squatter.bind(("127.0.0.1", idle))
        squatter.listen()
        result = deploy(project, "good2")
    finally:
        squatter.close()
    assert result.returncode == 2, result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("rollout: error:")]
    assert f"slot {idle} is in use by something" in error and "Traceback" not in result.stderr, result.stderr
    live.reload()
    assert live.status == "running" and through(running) == "good1"
    assert [c.name for c in docker_client.containers.list(all=True, filters={"name": project.container})] == [live.name]


def test_manual_revert_is_a_switch_to_the_kept_release(bed, docker_client, record_property) -> None:  # type: ignore[no-untyped-def]
    project, running, slots = bed
    assert deploy(project, "good1").returncode == 0
    first_id = docker_client.containers.get(project.container).id
    assert deploy(project, "good2").returncode == 0
    with Load(running.url, workers=4, path="/version") as load:
        load.wait_after(time.monotonic(), 20)
        result = project.run("revert")
        assert result.returncode == 0, result.stderr
        load.wait_after(time.monotonic(), 20)
    check_failures(running, load, record_property)
    bodies = served(load)
    assert bodies[0] == "good2" and bodies[-1] == "good1"
    # The kept good1 container was started again on its own slot: no create.
    assert docker_client.containers.get(project.container).id == first_id
    assert routed(running) == [f"127.0.0.1:{slots[1]}"]
    newest = project.history()[0]
    assert (newest["kind"], newest["tag"], newest["status"]) == ("revert", "good1", "healthy")
    assert newest["digest"] == digest_of(docker_client, "good1")


def test_an_unreachable_router_refuses_the_deploy_before_anything_changes(bed, docker_client) -> None:  # type: ignore[no-untyped-def]
    project, running, slots = bed
    assert deploy(project, "good1").returncode == 0
    live = docker_client.containers.get(project.container)
    dead = "unix:///nonexistent/admin.sock" if running.kind == "haproxy" else f"http://127.0.0.1:{free_port()}"
    write_traffic_config(project, running, slots, admin=dead)
    result = deploy(project, "good2")
    assert result.returncode == 5, result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("rollout: error:")]
    assert "cannot be reached" in error and dead in error, result.stderr
    assert "Traceback" not in result.stderr
    live.reload()
    assert live.status == "running" and through(running) == "good1"
    assert [c.name for c in docker_client.containers.list(all=True, filters={"name": project.container})] == [live.name]
    # Refused while looking at the targets, before an entry is recorded.
    assert [(e["tag"], e["status"]) for e in project.history()] == [("good1", "healthy")]


def test_a_slot_without_an_haproxy_server_line_refuses_the_deploy_before_anything_changes(  # type: ignore[no-untyped-def]
        project, tmp_path, docker_client) -> None:
    slots = [free_port(), free_port()]
    with proxy("haproxy", tmp_path, [f"127.0.0.1:{s}" for s in slots]) as running:
        write_traffic_config(project, running, slots)
        assert deploy(project, "good1").returncode == 0
        live = docker_client.containers.get(project.container)
        unknown = free_port()  # the idle slot now has no `server` line in the backend
        write_traffic_config(project, running, [int(live.labels["rollout.slot"]), unknown])
        result = deploy(project, "good2")
        assert result.returncode == 2, result.stderr
        [error] = [line for line in result.stderr.splitlines() if line.startswith("rollout: error:")]
        assert f"no server at 127.0.0.1:{unknown}" in error and "Traceback" not in result.stderr, result.stderr
        live.reload()
        assert live.status == "running" and through(running) == "good1"
        assert [c.name for c in docker_client.containers.list(all=True, filters={"name": project.container})] == [live.name]
        # Refused by prepare, after the entry was recorded: it fails, nothing to revert (NotApplied).
        assert [(e["kind"], e["tag"], e["status"]) for e in project.history()] == [
            ("deploy", "good2", "failed"), ("deploy", "good1", "healthy")]


def test_status_shows_the_slot_taking_traffic_and_a_router_elsewhere_as_drift(bed, docker_client) -> None:  # type: ignore[no-untyped-def]
    project, running, slots = bed
    assert deploy(project, "good1").returncode == 0
    report = project.json("status", "--json")
    [target] = report["targets"]
    assert target["in_sync"] and target["traffic"] == {
        "router": running.kind, "route": running.route, "upstreams": [f"127.0.0.1:{slots[1]}"], "slot": slots[1],
        "routed": True}
    human = project.run("status")
    assert human.returncode == 0, human.stderr
    assert f"local: traffic: {running.kind} {running.route} -> 127.0.0.1:{slots[1]} (slot {slots[1]}" in human.stdout
    # An operator points the proxy at the other slot (where nothing of this release runs).
    from rollout.routers import open_router

    open_router(running.kind, running.admin, running.route).switch(f"127.0.0.1:{slots[0]}")
    report = project.json("status", "--json")
    [target] = report["targets"]
    assert not target["in_sync"] and target["running"] and target["error"] is None
    assert target["traffic"]["upstreams"] == [f"127.0.0.1:{slots[0]}"] and target["traffic"]["routed"] is False
    human = project.run("status")
    assert human.returncode == 0, human.stderr
    assert "DRIFT" in human.stdout.splitlines()[2], human.stdout  # the target's row, like any drift
    assert f"-> 127.0.0.1:{slots[0]}, not the running container (slot {slots[1]}): DRIFT" in human.stdout
    # `check` reports it as drift too (exit 10), and the next deploy puts the traffic on a release it verified.
    checked = project.run("check")
    assert checked.returncode == 10, checked.stderr
    assert (f"target local runs #1, but {running.kind} route {running.route} sends its traffic to"
            f" 127.0.0.1:{slots[0]}, not to its slot {slots[1]}: `rollout deploy web:good1` switches it back"
            ) in checked.stdout + checked.stderr
    assert deploy(project, "good2").returncode == 0
    assert project.json("status", "--json")["targets"][0]["in_sync"] and through(running) == "good2"


def test_status_reports_an_unreachable_router_on_its_target(bed, docker_client) -> None:  # type: ignore[no-untyped-def]
    project, running, slots = bed
    assert deploy(project, "good1").returncode == 0
    dead = "unix:///nonexistent/admin.sock" if running.kind == "haproxy" else f"http://127.0.0.1:{free_port()}"
    write_traffic_config(project, running, slots, admin=dead)
    result = project.run("status", "--json")
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr
    import json

    [target] = json.loads(result.stdout)["targets"]
    assert target["error"].startswith("target local: ") and "cannot be reached" in target["error"]
    assert dead in target["error"] and not target["in_sync"]
    human = project.run("status")
    assert human.returncode == 5 and "UNREACHABLE" in human.stdout and "Traceback" not in human.stderr


# -- a rolling fleet: host by host, each host with its own router ------------------------------
#
# Two real separate Docker engines (support.fleet), each host with its own router: h1 behind an
# HAProxy, h2 behind a Caddy, each with its own pair of slots (the engines share this machine's
# network, so the slots differ). Each target's traffic table names its own proxy, as each host's would.

BREAKS_ON_GOOD2 = ("trap 'exit 0' TERM INT;"
                   " if grep -q good2 /www/version; then echo 'fatal: good2 needs a newer kernel' >&2; exit 1; fi;"
                   " httpd -f -p 127.0.0.1:$PORT -h /www & wait")


def write_fleet_config(project: Project, engines: list[Engine], proxies: list[Proxy], slots: list[list[int]], *,
                       second_breaks_on_good2: bool = False) -> None:
    text = f"""
[apps.web]
image = "{APP_IMAGE}"

[apps.web.rollout]
strategy = "rolling"
batch_size = 1

[apps.web.health]
timeout = 20
interval = 0.3
stable = 1.5
http = "http://127.0.0.1:{{port}}/health"

[apps.web.traffic]
router = "haproxy"
admin = "{proxies[0].admin}"
route = "{proxies[0].route}"
slots = {slots[0]}
slot_env = "PORT"
drain = 0.5
"""
    for index, (running, pair) in enumerate(zip(proxies, slots), start=1):
        command = f'command = ["sh", "-c", {json.dumps(BREAKS_ON_GOOD2)}]' if index == 2 and second_breaks_on_good2 else ""
        text += f"""
[[apps.web.targets]]
name = "h{index}"
kind = "docker"
host = "{engines[index - 1].host}"
container = "{project.container}"
network = "host"
traffic = {{ router = "{running.kind}", admin = "{running.admin}", route = "{running.route}", slots = {pair} }}
{command}
"""
    project.config.write_text(text)


@pytest.fixture
def two_hosts(project: Project, tmp_path: Path, registry: str
              ) -> Iterator[tuple[Project, list[Engine], list[Proxy], list[list[int]]]]:
    """The project's app on two Docker engines (see above), h1 behind HAProxy, h2 behind Caddy,
    each with two slots."""
    try:
        fleet = start_fleet(engines=2, ssh=False, images=[f"{APP_IMAGE}:{tag}" for tag in ("good1", "good2", "good3")])
    except FleetUnavailable as exc:
        need(False, f"two Docker engines ({exc})")
    slots = [[free_port(), free_port()], [free_port(), free_port()]]
    with contextlib.ExitStack() as stack:
        stack.callback(fleet.close)
        proxies = []
        for index, (kind, pair) in enumerate(zip(("haproxy", "caddy"), slots)):
            where = tmp_path / f"proxy{index}"
            where.mkdir()
            proxies.append(stack.enter_context(proxy(kind, where, [f"127.0.0.1:{s}" for s in pair])))
        # h2 cannot run good2 (a fresh release there: never run before, so no kept container of it).
        write_fleet_config(project, fleet.engines, proxies, slots, second_breaks_on_good2=True)
        yield project, fleet.engines, proxies, slots


def test_a_rolling_fleet_switches_host_by_host_and_a_failing_host_switches_every_moved_host_back(  # type: ignore[no-untyped-def]
        two_hosts, record_property) -> None:
    project, engines, proxies, slots = two_hosts
    first = deploy(project, "good1")
    assert first.returncode == 0, first.stderr
    assert [through(p) for p in proxies] == ["good1", "good1"]
    assert [routed(p) for p in proxies] == [[f"127.0.0.1:{pair[1]}"] for pair in slots]
    # A healthy rolling upgrade: host 1 switches, then host 2, no request lost on either.
    with Load(proxies[0].url, workers=2, path="/version") as load1, Load(proxies[1].url, workers=2, path="/version") as load2:
        load1.wait_after(time.monotonic(), 20)
        load2.wait_after(time.monotonic(), 20)
        result = deploy(project, "good3")
        assert result.returncode == 0, result.stderr
        load1.wait_after(time.monotonic(), 20)
        load2.wait_after(time.monotonic(), 20)
    for running, load in zip(proxies, (load1, load2)):
        check_failures(running, load, record_property)
    assert result.stderr.index("batch 1/2: h1") < result.stderr.index("batch 2/2: h2"), result.stderr
    assert [through(p) for p in proxies] == ["good3", "good3"]
    # Host by host: h1 served good3 (its switch) while h2 still served good1.
    first_good3 = [min(a.started for a in load.answers if a.ok and a.body.strip() == "good3") for load in (load1, load2)]
    last_good1_h2 = max(a.started for a in load2.answers if a.ok and a.body.strip() == "good1")
    # (h2's last good1 may start a moment after its first good3: a kept-alive connection drains.)
    assert first_good3[0] < first_good3[1] and first_good3[0] < last_good1_h2

    # A release the second host cannot run: h1 moves and switches, h2 fails, and h1 switches
    # back, with no request lost on h1.
    h1_before = engines[0].client.containers.get(project.container)  # good3 on h1
    h2_before = engines[1].client.containers.get(project.container)
    with Load(proxies[0].url, workers=4, path="/version") as load:
        load.wait_after(time.monotonic(), 20)
        result = deploy(project, "good2")
        assert result.returncode == 1, result.stderr
        load.wait_after(time.monotonic(), 20)
    check_failures(proxies[0], load, record_property)
    bodies = served(load)
    assert "good2" in bodies and bodies[-1] == "good3"  # h1 had switched, and was switched back
    assert [through(p) for p in proxies] == ["good3", "good3"]
    for engine, running in zip(engines, proxies):
        live = engine.client.containers.get(project.container)
        assert live.labels["rollout.tag"] == "good3" and live.status == "running"
        assert routed(running) == [f"127.0.0.1:{live.labels['rollout.slot']}"]
    h2_before.reload()
    assert h2_before.status == "running" and h2_before.name == project.container  # never stopped
    # h1 went back by a switch to its good3 container, which ran throughout (not a cold start:
    # a moved host's old release is stopped only once the whole entry is healthy).
    h1_after = engines[0].client.containers.get(project.container)
    assert (h1_after.id, h1_after.attrs["State"]["StartedAt"]) == (h1_before.id, h1_before.attrs["State"]["StartedAt"])
    assert "fatal: good2 needs a newer kernel" in result.stderr and "Traceback" not in result.stderr
    revert, failed = project.history()[:2]
    assert (failed["tag"], failed["status"]) == ("good2", "failed")
    assert (revert["kind"], revert["tag"], revert["status"]) == ("revert", "good3", "healthy")
    status = project.json("status", "--json")
    assert [(t["name"], t["in_sync"], t["traffic"]["routed"]) for t in status["targets"]] == [
        ("h1", True, True), ("h2", True, True)]


# -- the pieces, without an engine or a proxy ----------------------------------------------------


class SettlingTarget(FakeTarget):
    """A FakeTarget with the optional settle(healthy): records each call and the newest entry's
    ledger status at that moment."""

    def __init__(self, name: str, ledger: Any, fail_settle: bool = False) -> None:
        super().__init__(name)
        self.ledger, self.fail_settle = ledger, fail_settle
        self.settled: list[tuple[str | None, bool, str]] = []

    def settle(self, healthy: bool) -> None:
        newest = max(self.ledger.history("web"), key=lambda e: e.id)
        self.settled.append((self.digest, healthy, newest.status))
        if self.fail_settle:
            raise RuntimeError("the old container would not stop")


def test_settle_false_comes_before_the_failure_is_recorded_and_settle_true_after_healthy(tmp_path: Path) -> None:
    ledger = open_ledger(str(tmp_path / "ledger.db"))
    try:
        target = SettlingTarget("local", ledger)
        resolver = FakeResolver({"good": fake_digest("good"), "bad": fake_digest("bad")})
        target.behaviours[fake_digest("bad")] = crashes()
        run = Orchestrator(app_config(), ledger, resolver, [target], scripted_verifier, RecordingReporter())
        assert run.deploy(parse(f"{IMAGE}:good")).exit_code == 0
        assert run.deploy(parse(f"{IMAGE}:bad")).exit_code == 1
        # good: settled once its entry is recorded healthy (a signal during the drain cannot revert
        # it); bad failed, told while its entry was still verifying (the switch back comes first);
        # then the automatic revert to good, recorded healthy and then settled like any release.
        assert target.settled == [(fake_digest("good"), True, "healthy"), (fake_digest("bad"), False, "verifying"),
                                  (fake_digest("good"), True, "healthy")]
    finally:
        ledger.close()


def test_a_failing_settle_is_a_warning_and_the_verdict_stands(tmp_path: Path) -> None:
    ledger = open_ledger(str(tmp_path / "ledger.db"))
    try:
        target = SettlingTarget("local", ledger, fail_settle=True)
        reporter = RecordingReporter()
        run = Orchestrator(app_config(), ledger, FakeResolver({"good": fake_digest("good")}), [target],
                           scripted_verifier, reporter)
        outcome = run.deploy(parse(f"{IMAGE}:good"))
        assert outcome.exit_code == 0 and outcome.entry.status == "healthy"
        assert reporter.said("warn") == ["target local: the old container would not stop"]
    finally:
        ledger.close()


def test_slot_watch_switches_once_the_release_answers_on_its_slot() -> None:
    clock = FakeClock()
    inner = ScriptedWatch([(0, Observation(False, detail="running, HEALTHCHECK starting")),
                           (1, Observation(True, detail="running"))], clock)
    probed: list[str] = []
    answers = iter([(False, "http 503"), (True, "http 200")])
    switched: list[float] = []

    def probe(url: str, timeout: float) -> tuple[bool, str]:
        probed.append(url)
        return next(answers, (True, "http 200"))

    watch = SlotWatch(inner, 18082, "http://127.0.0.1:{port}/health", lambda: switched.append(clock()))
    watch.probe = probe
    policy = HealthPolicy(timeout=30, interval=0.5, stable=2, http="http://127.0.0.1:{port}/health")
    verdict = verify(watch, policy, probe=probe, clock=clock)
    assert verdict.healthy, verdict
    # Not probed before the container was ready; not switched before the slot answered 2xx;
    # switched once, and the whole stable window counted after the switch (traffic on it);
    # every probe, before and after the switch, on the slot.
    assert len(switched) == 1 and switched[0] >= 1.5 + 1000 and clock.now - switched[0] >= policy.stable
    assert set(probed) == {"http://127.0.0.1:18082/health"} and len(probed) >= 3


def test_slot_watch_fails_the_release_when_the_switch_fails() -> None:
    clock = FakeClock()
    inner = ScriptedWatch([(0, Observation(True, detail="running"))], clock)

    def refuse() -> None:
        raise RuntimeError("HAProxy runtime API cannot be reached")

    watch = SlotWatch(inner, 18081, None, refuse)
    verdict = verify(watch, HealthPolicy(timeout=30, interval=0.5, stable=1), clock=clock)
    assert not verdict.healthy
    assert verdict.reason == "cannot switch traffic to slot 18081: HAProxy runtime API cannot be reached"
