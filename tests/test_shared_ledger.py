"""Two runners, one PostgreSQL ledger (issue 13's acceptance): two config dirs (two
rollout.toml) deploy the same app through one fresh database on the test bed's server.

Each sees the other's history and reverts what the other deployed; the lease spans them (one
holding it blocks the other, which names it, and recovers it once it died); and rebuild's build
records are shared: a runner whose own engine could build nothing (DOCKER_HOST at a socket no
engine listens on) finds the other runner's build of the same inputs and does not rebuild.

The deploy target is the real engine, named in rollout.toml (`host`), as a production host is;
DOCKER_HOST is only the runner's own engine, the one `rebuild` builds with.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from rollout.errors import EXIT_LOCKED, EXIT_OK, EXIT_UNREACHABLE
from support import pg
from support.cli import finish
from support.images import APP_IMAGE, REGISTRY
from support.project import Project, http_get, write_config

# The engine every runner deploys to (the test bed's), named in each rollout.toml.
TARGET_ENGINE = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
BUSYBOX = f"{REGISTRY}/rollout-test/busybox:base"


def configure(project: Project, image: str = APP_IMAGE, *, build: bool = False, timeout: float = 20) -> None:
    """A runner's rollout.toml: the target on TARGET_ENGINE (health timeout in seconds), with a
    build context `ctx` next to it when build."""
    extra = f'host = "{TARGET_ENGINE}"\n' + ('\n[apps.web.build]\ncontext = "ctx"\n' if build else "")
    write_config(project, image, timeout=timeout, extra=extra)


@pytest.fixture
def runners(tmp_path: Path, docker_client, registry: str) -> Iterator[tuple[Project, Project]]:  # type: ignore[no-untyped-def]
    """Runners A and B: one app, two config dirs, one fresh PostgreSQL ledger."""
    with pg.fresh_database() as url:
        a = Project.create(tmp_path / "runner-a", url)
        configure(a)
        b = a.another_runner(tmp_path / "runner-b")
        try:
            yield a, b
        finally:
            a.close()
            b.close()
            a.remove_containers(docker_client)


def history(project: Project) -> list[dict[str, Any]]:
    """`history --json` as this runner prints it, oldest first."""
    return list(reversed(project.history()))


def test_two_runners_deploy_and_revert_in_turn_and_each_sees_the_others_history(
        runners: tuple[Project, Project]) -> None:
    a, b = runners
    assert a.run("deploy", "web:good1").returncode == EXIT_OK
    deployed = b.run("deploy", "web:good2")
    assert deployed.returncode == EXIT_OK, deployed.stderr
    assert a.version() == "good2"
    reverted = a.run("revert", "web")
    assert reverted.returncode == EXIT_OK, reverted.stderr
    assert a.version() == "good1"

    seen_by_a, seen_by_b = history(a), history(b)
    assert seen_by_a == seen_by_b
    first, second, revert = seen_by_a
    assert [(e["kind"], e["tag"], e["status"]) for e in seen_by_a] == [
        ("deploy", "good1", "healthy"), ("deploy", "good2", "healthy"), ("revert", "good1", "healthy")]
    # B's deploy knew A's was current; A's revert went back past B's to A's own.
    assert second["previous_id"] == first["id"]
    assert (revert["previous_id"], revert["reverts_to"]) == (second["id"], first["id"])
    assert a.json("status", "--json") == b.json("status", "--json")
    # Neither runner kept a ledger of its own.
    assert not a.ledger.exists() and not b.ledger.exists()


def test_the_lease_spans_runners(runners: tuple[Project, Project]) -> None:
    a, b = runners
    configure(a, timeout=60)  # long enough that B certainly tries while A still verifies
    assert a.run("deploy", "web:good1").returncode == EXIT_OK
    [first] = history(b)
    holding = a.start("deploy", "web:never-ready")
    try:
        assert a.wait_for_entry(holding, first["id"], "deploy", "verifying"), "A's deploy never got to verifying"
        blocked = b.run("deploy", "web:good2")
        [lease] = b.json("lock", "status", "--json")
        assert holding.poll() is None, "A's deploy ended before B tried: the test proved nothing"
    finally:
        holding.send_signal(signal.SIGKILL)
        code, _ = finish(holding)

    assert blocked.returncode == EXIT_LOCKED, blocked.stderr
    assert f"web is locked by {lease['holder']} (pid {holding.pid}," in blocked.stderr
    assert (lease["pid"], lease["stale"]) == (holding.pid, False)
    # PostgreSQL ids may skip the one a deploy reserves for its revert: count entries, not ids.
    entries = history(a)
    assert len(entries) == 2 and entries[0]["id"] == first["id"], "B recorded nothing"

    # A died holding the lease: B's next deploy takes it over, finishes A's rollout, then deploys.
    assert code == -signal.SIGKILL
    deployed = b.run("deploy", "web:good2")
    assert deployed.returncode == EXIT_OK, deployed.stderr
    assert b.version() == "good2"
    kinds = [(e["kind"], e["tag"], e["status"]) for e in history(a)]
    assert kinds[1] == ("deploy", "never-ready", "interrupted") and kinds[-1] == ("deploy", "good2", "healthy")
    assert history(a) == history(b)
    assert a.json("lock", "status", "--json") == []


# -- rebuild ---------------------------------------------------------------------------


def write_context(project: Project, marker: str) -> None:
    """The same build context in each runner's own checkout (written, not copied: its own file times)."""
    context = project.root / "ctx"
    (context / "www").mkdir(parents=True)
    (context / "www" / "health").write_text("ok\n")
    (context / "www" / "index.html").write_text(f"<h1>{marker}</h1>\n")
    (context / "Dockerfile").write_text(f'FROM {BUSYBOX}\nCOPY www/ /www/\nCMD httpd -f -p 127.0.0.1:$PORT -h /www\n')


@pytest.fixture
def builders(runners: tuple[Project, Project], docker_client) -> Iterator[tuple[Project, Project, str]]:  # type: ignore[no-untyped-def]
    """Runners A and B configured to rebuild one app image (a repository of its own) from the same
    context in their own dirs; B's own engine is missing. Yields A, B and what the app's page says."""
    a, b = runners
    image = f"{REGISTRY}/rt-shared-{uuid.uuid4().hex[:10]}"
    configure(a, image, build=True)
    b.config.write_text(a.config.read_text())
    marker = uuid.uuid4().hex
    write_context(a, marker)
    write_context(b, marker)
    b.env["DOCKER_HOST"] = f"unix://{b.root}/no-engine.sock"
    yield a, b, marker
    for built in docker_client.images.list(filters={"reference": f"{image}:*"}):
        for tag in built.tags:
            docker_client.images.remove(tag, force=True)


def pushed_builds(project: Project) -> list[Any]:
    """The app's build records in the shared ledger, through rollout's ledger API."""
    ledger = project.open_ledger()
    try:
        return ledger.pushed_builds("web")
    finally:
        ledger.close()


def test_a_runner_does_not_rebuild_what_another_runner_built(builders: tuple[Project, Project, str]) -> None:
    a, b, marker = builders
    built = a.run("rebuild")
    assert built.returncode == EXIT_OK, built.stderr
    [build] = pushed_builds(a)
    [entry] = history(a)
    assert (entry["kind"], entry["status"], entry["tag"]) == ("rebuild", "healthy", build.tag)
    assert http_get(f"http://127.0.0.1:{a.port}/index.html") == f"<h1>{marker}</h1>"

    skipped = b.run("rebuild")
    assert skipped.returncode == EXIT_OK, skipped.stderr
    assert f"web: up to date: build {build.tag} (#{entry['id']}) has these inputs" in skipped.stdout
    assert pushed_builds(b) == [build] and history(b) == [entry]

    # The skip came from A's record, not from B's engine: B cannot build at all.
    forced = b.run("rebuild", "--force")
    assert forced.returncode == EXIT_UNREACHABLE, forced.stdout + forced.stderr
    assert "the Docker engine for builds is unreachable" in forced.stderr
    assert pushed_builds(b) == [build] and history(b) == [entry]


def test_a_runner_deploys_the_build_another_runner_pushed_without_building(
        builders: tuple[Project, Project, str]) -> None:
    a, b, marker = builders
    built = a.run("rebuild", "--no-deploy")
    assert built.returncode == EXIT_OK, built.stderr
    [build] = pushed_builds(a)
    assert history(a) == []

    deployed = b.run("rebuild")
    assert deployed.returncode == EXIT_OK, deployed.stdout + deployed.stderr
    [entry] = history(b)
    assert (entry["kind"], entry["status"], entry["tag"], entry["digest"]) == ("rebuild", "healthy", build.tag,
                                                                               build.digest)
    assert pushed_builds(b) == [build]
    assert http_get(f"http://127.0.0.1:{b.port}/index.html") == f"<h1>{marker}</h1>"
    assert a.json("status", "--json")["current"]["id"] == entry["id"]
