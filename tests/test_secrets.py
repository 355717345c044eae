"""Registry passwords and tokens never reach the ledger, its events, or anything rollout prints;
on both ledger backends, and the PostgreSQL ledger's own password neither."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

from support import pg
from support.images import push_test_image
from support.project import Project, write_config
from support.registry_server import start_registry

USER = "deployer"
PASSWORD = "s3cret-Pa55word-for-tests"


def all_text(project: Project, *outputs: str) -> str:
    """Every row of the ledger (through its own dump, either backend), the bytes of every file
    rollout keeps in state/ (a SQLite ledger, a spool), and the outputs."""
    ledger = project.open_ledger()
    try:
        rows = json.dumps(list(ledger.dump()), default=str)
    finally:
        ledger.close()
    state = b"".join(p.read_bytes() for p in project.ledger.parent.glob("*") if p.is_file())
    return rows + state.decode("latin-1") + "".join(outputs)


def test_no_password_in_ledger_events_or_output(ledger_project: Project, docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = ledger_project
    with start_registry(tmp_path / "registry", auth="htpasswd", users={USER: PASSWORD}) as private:
        auth = {"username": USER, "password": PASSWORD}
        repository = f"{private.host}/team/app"
        push_test_image(docker_client, repository, ("good1", "crash"), auth)
        docker_config = tmp_path / "docker-config"
        docker_config.mkdir()
        encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (docker_config / "config.json").write_text(json.dumps({"auths": {private.host: {"auth": encoded}}}))
        project.env["DOCKER_CONFIG"] = str(docker_config)
        write_config(project, image=repository)

        outputs = []
        for args, code in ((("deploy", "web:good1"), 0), (("deploy", "web:crash"), 1), (("history", "--json"), 0),
                           (("status", "--json"), 0), (("history",), 0)):
            result = project.run(*args)
            assert result.returncode == code, (args, result.stderr)
            outputs += [result.stdout, result.stderr]
        assert project.version() == "good1"  # the failed release was reverted through the private registry

        # A wrong password is reported without echoing what was tried.
        wrong = base64.b64encode(f"{USER}:wrong-{PASSWORD}".encode()).decode()
        (docker_config / "config.json").write_text(json.dumps({"auths": {private.host: {"auth": wrong}}}))
        result = project.run("deploy", "web:good1")
        assert result.returncode == 5, result.stderr
        assert USER in result.stderr and private.host in result.stderr
        outputs += [result.stdout, result.stderr]

    text = all_text(project, *outputs)
    for secret in (PASSWORD, encoded, wrong, f"wrong-{PASSWORD}", pg.PASSWORD):
        assert secret not in text
    history = json.loads(outputs[4])
    assert [e["status"] for e in history] == ["healthy", "failed", "healthy"]


def test_a_username_password_entry_in_config_json_pulls_too(project: Project, docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """config.json `auths` with `username`/`password` (the docker CLI reads them, types.AuthConfig):
    rollout's HEAD used them, so the engine's pull must too. The Docker SDK's own lookup ignores
    such entries, so the pull used to fail with "unauthorized" after a successful resolve."""
    with start_registry(tmp_path / "registry", auth="htpasswd", users={USER: PASSWORD}) as private:
        # New to this engine, or it may pull from its content store without asking (see test_operations).
        repository = f"{private.host}/team/app-{uuid.uuid4().hex[:8]}"
        push_test_image(docker_client, repository, ("good1",), {"username": USER, "password": PASSWORD})
        docker_client.images.remove(f"{repository}:good1")  # the deploy must pull it
        docker_config = tmp_path / "docker-config"
        docker_config.mkdir()
        (docker_config / "config.json").write_text(json.dumps({"auths": {private.host: {"username": USER, "password": PASSWORD}}}))
        project.env["DOCKER_CONFIG"] = str(docker_config)
        write_config(project, image=repository)
        result = project.run("deploy", "web:good1")
        assert result.returncode == 0, result.stderr
        assert project.version() == "good1"
        assert docker_client.containers.get(project.container).attrs["Config"]["Image"].startswith(f"{repository}@sha256:")
    assert PASSWORD not in all_text(project, result.stdout, result.stderr)
