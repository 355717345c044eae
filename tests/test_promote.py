"""`rollout promote` (issue 17 point 6) on the real engine and registry.

Two apps in one config (`web-staging` and `web`, each a container of its own), and a
second config with its own ledger (a PostgreSQL one whose URL holds a password) for
`--from-config`. Promotion deploys the exact digest of the source's current healthy entry,
records where it came from (the entry's reason, a `promoted` event) and is refused, with
nothing recorded, when the source is not healthy or the digest is not in the destination's
repository (HEADs only, counted by the proxy in front of the registry). The promoted entry carries
the source's tag only where that tag means the same digest to the destination; `promote
--dry-run` plans it and changes nothing. A full reference to the repository both apps share is
refused (operations.parse_release), never deployed to the first app.
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


def rows(project: Project) -> list[list[tuple]]:
    """Every row a command could write: entries (with tags), events and locks."""
    return [project.ledger_rows(f"SELECT * FROM {table} ORDER BY 1") for table in ("entries", "events", "locks")]


def push_tag(docker_client, tag: str, image_of: str) -> str:  # type: ignore[no-untyped-def]
    """(Re-)push APP_IMAGE:tag as the test image `image_of` (a tag of a test of its own: uuid); its digest."""
    docker_client.images.get(f"{APP_IMAGE}:{image_of}").tag(APP_IMAGE, tag)
    for line in docker_client.images.push(APP_IMAGE, tag, stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(f"{APP_IMAGE}:{tag}")  # the name only: the image stays as image_of
    return digest_of(docker_client, image_of)


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
    assert one_line_error(project.run("promote", "web", "--from", "web-staging", "--dry-run"), 2) == error
    assert entries(project) == before and project.version() == "good1"


def test_a_digest_absent_from_the_destination_repository_is_refused_after_heads_only(  # type: ignore[no-untyped-def]
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
        # One HEAD for the source's tag in web's repository (may web's entry carry it?), one for the digest.
        assert proxy.count("HEAD", "manifest") == 2 and proxy.count("GET", "manifest") == 0
        planned = one_line_error(project.run("promote", "web", "--from", "web-staging", "--dry-run"), 2,
                                 after="progress")
        assert proxy.count("HEAD", "manifest") == 4 and proxy.count("GET", "manifest") == 0
    assert f"is not in {host}/rollout-test/nothing-here: copy that exact image there first" in error
    assert planned == error
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
    for dry_run in ((), ("--dry-run",)):
        assert "--from SOURCE_APP" in one_line_error(project.run("promote", "web", *dry_run), 2)
        assert "cannot be promoted from itself" in one_line_error(project.run("promote", "web", "--from", "web",
                                                                              *dry_run), 2)
        assert "unknown app 'nope'" in one_line_error(project.run("promote", "web", "--from", "nope", *dry_run), 2)
    project.config.write_text(project.config.read_text() + app_toml("web-staging", APP_IMAGE, "rt-unused", 9))
    error = one_line_error(project.run("promote", "web", "--from", "web-staging", "--dry-run"), 2)
    assert "web-staging has no entry to promote" in error
    assert not project.ledger.exists(), "a dry run creates no ledger"


def test_a_full_reference_to_a_repository_two_apps_share_is_refused(  # type: ignore[no-untyped-def]
        two_apps: tuple[Project, int], docker_client) -> None:
    """Issue: `rollout deploy REGISTRY/REPO:TAG` went to the first app of that repository (production)."""
    project, staging_port = two_apps
    assert project.run("deploy", "web:good1").returncode == 0
    before = rows(project)
    good2 = digest_of(docker_client, "good2")
    for release, named in ((f"{APP_IMAGE}:good2", "web:good2"), (f"{APP_IMAGE}@{good2}", f"web@{good2}"),
                           (f"{APP_IMAGE}:good2@{good2}", f"web:good2@{good2}"), (APP_IMAGE, "web:TAG")):
        for dry_run in ((), ("--dry-run",), ("--dry-run", "--json")):
            error = one_line_error(project.run("deploy", release, *dry_run), 2)
            assert f"{APP_IMAGE} is the repository of apps web and web-staging: name the app, APP:TAG" in error
            assert error.endswith(f"e.g. rollout deploy {named}"), error
    assert rows(project) == before and project.version() == "good1"
    assert http_get(f"http://127.0.0.1:{staging_port}/version") is None
    # A repository of one app only still names it.
    project.config.write_text(project.config.read_text().replace(
        f'[apps.web-staging]\nimage = "{APP_IMAGE}"', f'[apps.web-staging]\nimage = "{APP_IMAGE}-staging"'))
    planned = project.run("deploy", f"{APP_IMAGE}:good2", "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    assert (json.loads(planned.stdout)["app"], json.loads(planned.stdout)["digest"]) == ("web", good2)


def test_a_promoted_entry_carries_the_sources_tag(  # type: ignore[no-untyped-def]
        two_apps: tuple[Project, int], docker_client) -> None:
    project, _ = two_apps
    assert project.run("deploy", "web:good1").returncode == 0
    assert project.run("deploy", "web-staging:good3").returncode == 0
    result = project.run("promote", "web", "--from", "web-staging")
    assert result.returncode == 0, result.stderr
    promoted = project.json("history", "web", "--json")[0]
    assert (promoted["tag"], promoted["digest"]) == ("good3", digest_of(docker_client, "good3"))
    assert f"#{promoted['id']} deploy web good3" in result.stderr and "warning" not in result.stderr
    [row] = [line.split() for line in project.run("history", "web").stdout.splitlines()
             if line.startswith(f"#{promoted['id']} ")]
    assert row[:4] == [f"#{promoted['id']}", "web", "deploy", "good3"], row
    assert f"already running #{promoted['id']} good3" in project.run("promote", "web", "--from", "web-staging").stdout
    # The tag means that digest for web too: deploying it is no re-pushed tag, and revert --to finds it.
    assert f"already running #{promoted['id']} good3" in project.run("deploy", "web:good3").stdout
    assert project.run("deploy", "web:good1").returncode == 0
    back = project.run("revert", "web", "--to", "good3")
    assert back.returncode == 0, back.stderr
    assert f"#{promoted['id']}" in back.stderr and project.version() == "good3"


def test_a_promoted_entry_has_no_tag_where_the_tag_means_other_content_for_the_destination(  # type: ignore[no-untyped-def]
        two_apps: tuple[Project, int], docker_client) -> None:
    """The digest is what is promoted; a tag recorded for web must mean that digest to web too, or a
    later `deploy web:TAG` would be refused as re-pushed (or `revert --to TAG` restore other content)."""
    project, _ = two_apps
    moved, kept = f"promote-{uuid.uuid4().hex[:8]}", f"promote-{uuid.uuid4().hex[:8]}"
    # 1. Re-pushed since staging deployed it: TAG in web's repository now points at other content.
    good2 = push_tag(docker_client, moved, "good2")
    assert project.run("deploy", f"web-staging:{moved}").returncode == 0
    good3 = push_tag(docker_client, moved, "good3")
    result = project.run("promote", "web", "--from", "web-staging")
    assert result.returncode == 0, result.stderr
    assert f"recorded without tag {moved}: {APP_IMAGE}:{moved} points at {good3}" in result.stderr
    promoted = project.json("history", "web", "--json")[0]
    assert (promoted["tag"], promoted["digest"]) == (None, good2) and project.version() == "good2"
    deployed = project.run("deploy", f"web:{moved}")  # what the tag is now, not refused as a re-pushed tag
    assert deployed.returncode == 0, deployed.stderr
    assert project.version() == "good3"
    # 2. web recorded TAG with another digest earlier: recording it again would make it two digests.
    push_tag(docker_client, kept, "good1")
    assert project.run("deploy", f"web:{kept}").returncode == 0
    push_tag(docker_client, kept, "good3")
    assert project.run("deploy", f"web-staging:{kept}").returncode == 0
    result = project.run("promote", "web", "--from", "web-staging")
    assert result.returncode == 0, result.stderr  # not refused as a re-pushed tag: promoting is by digest
    assert f"recorded without tag {kept}: web recorded tag {kept} with another digest" in result.stderr
    assert [(e["tag"], e["digest"]) for e in project.json("history", "web", "--json")[:2]] == [
        (None, good3), (kept, digest_of(docker_client, "good1"))]
    assert project.version() == "good3"


def test_promote_dry_run_prints_the_plan_and_changes_nothing(  # type: ignore[no-untyped-def]
        two_apps: tuple[Project, int], docker_client) -> None:
    project, _ = two_apps
    assert project.run("deploy", "web:good1").returncode == 0
    assert project.run("deploy", "web-staging:good2").returncode == 0
    staged, current = project.json("history", "web-staging", "--json")[0], project.json("history", "web", "--json")[0]
    good2 = digest_of(docker_client, "good2")
    before = rows(project)
    containers = {c.id: c.attrs for c in docker_client.containers.list(all=True, filters={"name": project.container})}
    source = f"promoted from web-staging #{staged['id']} good2"

    human = project.run("promote", "web", "--from", "web-staging", "--dry-run")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"plan: deploy web good2 ({good2[7:19]}) {good2}\n"), human.stdout
    assert f"  note: {source}\n" in human.stdout and f"on failure: revert to #{current['id']} good1" in human.stdout
    planned = project.run("promote", "web", "--from", "web-staging", "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert (plan["dry_run"], plan["kind"], plan["app"], plan["tag"], plan["digest"]) == (
        True, "deploy", "web", "good2", good2)
    assert plan["notes"] == [source] and plan["targets"][0]["moves"] is True
    assert rows(project) == before and project.version() == "good1"
    assert {c.id: c.attrs for c in docker_client.containers.list(
        all=True, filters={"name": project.container})} == containers

    assert project.run("promote", "web", "--from", "web-staging").returncode == 0
    same = project.run("promote", "web", "--from", "web-staging", "--dry-run")
    assert same.returncode == 0 and "nothing to do: already running #" in same.stdout, same.stdout


def digest_of_tag(project: Project, tag: str) -> str:
    import docker

    return digest_of(docker.from_env(), tag)
