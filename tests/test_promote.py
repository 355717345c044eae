"""`rollout promote` (issue 17 point 6) on the real engine and registry.

Two apps in one config (`web-staging` and `web`, each a container of its own), and a
second config with its own ledger (a PostgreSQL one whose URL holds a password) for
`--from-config`. Promotion deploys the exact digest of the source's current healthy entry,
records where it came from (the entry's reason, a `promoted` event) and is refused, with
nothing recorded, when the source is not healthy or the digest is not in the destination's
repository (one HEAD, counted by the proxy in front of the registry).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout.ledger import NewEntry, open_ledger
from support import pg
from support.errors import one_line_error
from support.images import APP_IMAGE, digest_of
from support.ports import free_port
from support.project import Project, http_get
from support.proxy import start_proxy


def app_toml(name: str, image: str, container: str, port: int) -> str:
    return f"""
[apps.{name}]
image = "{image}"
[apps.{name}.health]
timeout = 20
interval = 0.5
stable = 1
http = "http://127.0.0.1:{port}/health"
[[apps.{name}.targets]]
name = "local"
container = "{container}"
network = "host"
env = {{ PORT = "{port}" }}
"""


@pytest.fixture()
def two_apps(project: Project, docker_client) -> Iterator[tuple[Project, int]]:  # type: ignore[no-untyped-def]
    """project's config with a second app, web-staging (its own container and port) beside web."""
    staging_port = free_port()
    staging_container = f"rt-stg-{uuid.uuid4().hex[:8]}"
    project.config.write_text(project.config.read_text()
                              + app_toml("web-staging", APP_IMAGE, staging_container, staging_port))
    yield project, staging_port
    for container in docker_client.containers.list(all=True, filters={"name": staging_container}):
        container.remove(force=True)


def entries(project: Project) -> list[tuple]:
    return project.ledger_rows("SELECT id, app, status FROM entries ORDER BY id")


def test_promote_deploys_the_sources_exact_digest_and_records_where_it_came_from(  # type: ignore[no-untyped-def]
        two_apps: tuple[Project, int], docker_client) -> None:
    project, staging_port = two_apps
    assert project.run("deploy", "web:good1").returncode == 0
    assert project.run("deploy", "web-staging:good2").returncode == 0
    staged = project.json("history", "web-staging", "--json")[0]
    result = project.run("promote", "web", "--from", "web-staging", "--json")
    assert result.returncode == 0, result.stderr
    assert project.version() == "good2" and http_get(f"http://127.0.0.1:{staging_port}/version") == "good2"
    outcome = json.loads(result.stdout)
    newest = project.json("history", "web", "--json")[0]
    assert newest["digest"] == staged["digest"] == digest_of(docker_client, "good2")
    assert (newest["kind"], newest["status"]) == ("deploy", "healthy")
    assert newest["reason"] == f"promoted from web-staging #{staged['id']} good2"
    source = {"app": "web-staging", "entry": staged["id"], "tag": "good2", "digest": staged["digest"],
              "repository": APP_IMAGE, "ledger": None}
    assert (outcome["exit_code"], outcome["entry"], outcome["promoted_from"]) == (0, newest["id"], source)
    assert f"promoted from web-staging #{staged['id']} good2" in project.run("history", "web").stdout
    shown = project.json("show", str(newest["id"]), "--json")
    [event] = [e for e in shown["events"] if e["event"] == "promoted"]
    assert event["detail"] == source
    again = project.run("promote", "web", "--from", "web-staging")
    assert again.returncode == 0 and "already running" in again.stdout, "a second promote changes nothing"
    # --reason adds to the origin, never replaces it (review P3-2)
    forced = project.run("promote", "web", "--from", "web-staging", "--force", "--reason", "ticket 42")
    assert forced.returncode == 0, forced.stderr
    assert project.json("history", "web", "--json")[0]["reason"] == (
        f"promoted from web-staging #{staged['id']} good2: ticket 42")


def test_a_source_whose_current_entry_is_not_healthy_is_refused_and_nothing_changes(  # type: ignore[no-untyped-def]
        two_apps: tuple[Project, int]) -> None:
    project, _ = two_apps
    assert project.run("deploy", "web:good1").returncode == 0
    # Staging's first release crashes: failed, nothing healthy to go back to (exit 3).
    assert project.run("deploy", "web-staging:crash").returncode == 3
    before = entries(project)
    error = one_line_error(project.run("promote", "web", "--from", "web-staging"), 2)
    assert "web-staging's current entry #" in error and "not healthy" in error
    assert entries(project) == before and project.version() == "good1"


def test_a_digest_absent_from_the_destination_repository_is_refused_after_one_head(  # type: ignore[no-untyped-def]
        two_apps: tuple[Project, int], registry: str) -> None:
    project, _ = two_apps
    assert project.run("deploy", "web-staging:good1").returncode == 0
    with start_proxy(registry) as proxy:
        host = proxy.host
        config = project.config.read_text().replace(f'[apps.web]\nimage = "{APP_IMAGE}"',
                                                    f'[apps.web]\nimage = "{proxy.host}/rollout-test/nothing-here"')
        project.config.write_text(config)
        before = entries(project)
        proxy.reset_counts()
        error = one_line_error(project.run("promote", "web", "--from", "web-staging"), 2, after="progress")
        assert proxy.count("HEAD", "manifest") == 1 and proxy.count("GET", "manifest") == 0
    assert f"is not in {host}/rollout-test/nothing-here: copy that exact image there first" in error
    assert entries(project) == before


def test_promote_from_another_config_and_ledger_names_it_without_its_password(  # type: ignore[no-untyped-def]
        project: Project, tmp_path: Path) -> None:
    with pg.fresh_database() as url:
        other = tmp_path / "staging"
        other.mkdir()
        (other / "rollout.toml").write_text(f'[ledger]\nurl = "{url}"\n'
                                            + app_toml("web", APP_IMAGE, "rt-unused", 9))
        ledger = open_ledger(url)
        try:
            digest = digest_of_tag(project, "good2")
            entry = ledger.record(NewEntry(app="web", repository=APP_IMAGE, tag="good2", digest=digest))
            ledger.set_status(entry.id, "healthy")
        finally:
            ledger.close()
        result = project.run("promote", "web", "--from-config", str(other / "rollout.toml"))
        assert result.returncode == 0, result.stderr
        assert project.version() == "good2"
        newest = project.json("history", "--json")[0]
        shown_url = url.replace(pg.PASSWORD, "***")
        assert newest["reason"] == f"promoted from web #{entry.id} good2 in ledger {shown_url}"
        everything = result.stdout + result.stderr + project.run("history").stdout + json.dumps(
            project.json("show", str(newest["id"]), "--json"))
        assert pg.PASSWORD not in everything and shown_url in everything


def test_promote_needs_a_source_and_not_itself(project: Project) -> None:
    assert "--from SOURCE_APP" in one_line_error(project.run("promote", "web"), 2)
    assert "cannot be promoted from itself" in one_line_error(project.run("promote", "web", "--from", "web"), 2)
    assert "unknown app 'nope'" in one_line_error(project.run("promote", "web", "--from", "nope"), 2)


def digest_of_tag(project: Project, tag: str) -> str:
    import docker

    return digest_of(docker.from_env(), tag)
