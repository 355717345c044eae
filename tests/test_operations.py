"""A second front end (a scheduler, a webhook receiver, this test) deploys and reverts through
rollout.operations alone, on the real engine and registry, and gets what the CLI gets: the
app's lock, recovery of a rollout that was killed, and registry credentials from rollout.toml.
Every test runs once on a SQLite ledger and once on a PostgreSQL one (ledger_project)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import docker.errors
import pytest

from rollout import config as configuration
from rollout import lock, operations
from rollout.errors import EXIT_LOCKED, EXIT_OK, EXIT_REVERTED, LockHeld
from rollout.faults import KILL_AT_ENV
from rollout.ledger import open_ledger
from support.fakes import RecordingReporter
from support.images import push_test_image
from support.project import Project, write_config
from support.registry_server import start_registry

# A front end that is not the CLI: a Python program calling rollout.operations.
FRONT_END = textwrap.dedent("""
    import sys

    from rollout import config, operations
    from rollout.output import Console

    outcome = operations.deploy(config.load(sys.argv[1]), sys.argv[2], reporter=Console(), reason="scheduler")
    sys.exit(outcome.exit_code)
""")


@pytest.fixture
def project(ledger_project: Project, monkeypatch: pytest.MonkeyPatch) -> Project:
    """ledger_project, with this process's environment naming its ledger as the CLI's runs get it
    ($ROLLOUT_LEDGER_URL for PostgreSQL, nothing for the file next to rollout.toml)."""
    for name in ("ROLLOUT_LEDGER", "ROLLOUT_LEDGER_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in ledger_project.env.items():
        monkeypatch.setenv(name, value)
    return ledger_project


@pytest.fixture
def loaded(project: Project) -> configuration.Config:
    """The project's rollout.toml as a front end loads it (the project's ledger)."""
    loaded = configuration.load(str(project.config))
    assert str(loaded.ledger_location) == project.ledger_location
    return loaded


def front_end(project: Project, release: str, kill_at: str) -> subprocess.CompletedProcess[str]:
    """Run FRONT_END in its own process (this process's environment: the project's ledger),
    SIGKILLed at the moment kill_at (rollout.faults)."""
    env = {**os.environ, KILL_AT_ENV: kill_at}
    return subprocess.run([sys.executable, "-c", FRONT_END, str(project.config), release], capture_output=True,
                          text=True, env=env, timeout=180, cwd=project.root, stdin=subprocess.DEVNULL)


def test_a_second_front_end_deploys_and_reverts_through_operations_alone(project: Project,
                                                                         loaded: configuration.Config) -> None:
    reporter = RecordingReporter()

    first = operations.deploy(loaded, "web:good1", reporter=reporter, reason="scheduler")
    assert (first.exit_code, first.entry.status, first.entry.reason) == (EXIT_OK, "healthy", "scheduler"), first.message
    assert project.version() == "good1"

    crashed = operations.deploy(loaded, "web:crash", reporter=reporter)
    assert crashed.exit_code == EXIT_REVERTED, crashed.message
    assert crashed.revert is not None
    assert (crashed.revert.status, crashed.revert.reverts_to) == ("healthy", first.entry.id)
    assert project.version() == "good1"

    upgraded = operations.deploy(loaded, "web:good2", reporter=reporter)
    assert upgraded.exit_code == EXIT_OK and project.version() == "good2"
    back = operations.revert(loaded, "web", reporter=reporter, to=f"#{first.entry.id}", reason="by hand")
    assert (back.exit_code, back.entry.kind, back.entry.reverts_to) == (EXIT_OK, "revert", first.entry.id)
    assert project.version() == "good1"

    history = operations.history(loaded, "web")
    assert [(e.kind, e.tag, e.status) for e in history] == [
        ("revert", "good1", "healthy"), ("deploy", "good2", "healthy"), ("revert", "good1", "healthy"),
        ("deploy", "crash", "failed"), ("deploy", "good1", "healthy")]
    status = operations.status(loaded, "web", reporter=reporter)
    assert status.exit_code == EXIT_OK
    assert status.apps[0].current is not None and status.apps[0].current.id == back.entry.id
    assert [t.in_sync for t in status.apps[0].targets] == [True]
    assert operations.lock_status(loaded) == []  # every operation let go of the lock
    # The CLI reads the same ledger and sees the same thing.
    assert json.loads(project.run("status", "--json").stdout) == status.to_json()


def test_an_operation_refuses_an_app_another_rollout_holds(project: Project, loaded: configuration.Config,
                                                           docker_client) -> None:  # type: ignore[no-untyped-def]
    ledger = open_ledger(loaded.ledger_location)
    try:
        with lock.held(ledger, "web"):
            with pytest.raises(LockHeld) as held:
                operations.deploy(loaded, "web:good1", reporter=RecordingReporter())
            assert held.value.exit_code == EXIT_LOCKED
            assert "web is locked by" in str(held.value)
            [state] = operations.lock_status(loaded, "web")
            assert (state.lease.pid, state.stale) == (os.getpid(), False)
    finally:
        ledger.close()
    # Nothing changed: no entry, no container.
    assert operations.history(loaded, "web") == []
    assert docker_client.containers.list(all=True, filters={"name": project.container}) == []
    assert operations.deploy(loaded, "web:good1", reporter=RecordingReporter()).exit_code == EXIT_OK


def test_a_front_end_killed_mid_deploy_is_recovered_by_the_next_operation(project: Project,
                                                                          loaded: configuration.Config) -> None:
    reporter = RecordingReporter()
    good = operations.deploy(loaded, "web:good1", reporter=reporter).entry

    killed = front_end(project, "web:good2", kill_at="docker:started#1")
    assert killed.returncode == -9, killed.stderr  # SIGKILL: good2 started, never verified, lock left behind
    [abandoned] = [e for e in operations.history(loaded, "web") if e.status not in ("healthy", "failed")]
    assert [s.stale for s in operations.lock_status(loaded, "web")] == [True]

    # status, like the CLI's, finishes the killed rollout: good1 back, verified, as a revert entry.
    status = operations.status(loaded, "web", reporter=reporter)
    assert status.apps[0].recovery is None
    current = status.apps[0].current
    assert current is not None and (current.kind, current.reverts_to, current.digest) == ("revert", good.id, good.digest)
    assert [t.in_sync for t in status.apps[0].targets] == [True]
    assert project.version() == "good1"
    assert any(f"#{abandoned.id}" in line and "interrupted" in line for line in reporter.said("warn"))
    assert operations.lock_status(loaded) == []

    # Killed again: the next deploy recovers first, then deploys.
    killed = front_end(project, "web:good3", kill_at="docker:started#1")
    assert killed.returncode == -9, killed.stderr
    deployed = operations.deploy(loaded, "web:good2", reporter=reporter)
    assert deployed.exit_code == EXIT_OK, deployed.message
    kinds = [(e.kind, e.tag, e.status) for e in operations.history(loaded, "web", 3)]
    assert kinds == [("deploy", "good2", "healthy"), ("revert", "good1", "healthy"), ("deploy", "good3", "interrupted")]
    assert project.version() == "good2"


def test_registry_credentials_from_rollout_toml_reach_the_engines_pull(
        project: Project, docker_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    user, password = "deployer", f"pw-{uuid.uuid4().hex}"
    with start_registry(tmp_path / "registry", auth="htpasswd", users={user: password}) as private:
        # A repository new to this engine: from a source it pulled before (an earlier registry on this
        # free port) Docker 20.10 may take the manifest from its content store and send no request.
        repository = f"{private.host}/team/app-{uuid.uuid4().hex[:8]}"
        push_test_image(docker_client, repository, ("good1",), {"username": user, "password": password})
        digest = next(d.split("@", 1)[1] for d in docker_client.images.get(f"{repository}:good1").attrs["RepoDigests"]
                      if d.startswith(repository + "@"))
        docker_client.images.remove(f"{repository}:good1")  # so the target must pull, with credentials
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(f"{repository}@{digest}")
        credentials = tmp_path / "docker-config"
        credentials.mkdir()
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
        (credentials / "config.json").write_text(json.dumps({"auths": {private.host: {"auth": encoded}}}))
        write_config(project, image=repository, extra=f'\n[registry]\ndocker_config = "{credentials}"\n')
        try:
            outcome = operations.deploy(configuration.load(str(project.config)), "web:good1",
                                        reporter=RecordingReporter())
            assert outcome.exit_code == EXIT_OK, outcome.message
            assert outcome.entry.digest == digest and project.version() == "good1"
            assert "DOCKER_CONFIG" not in os.environ  # the front end's environment is left as it was
        finally:
            project.remove_containers(docker_client)
            try:
                docker_client.images.remove(f"{repository}@{digest}")
            except docker.errors.ImageNotFound:
                pass
