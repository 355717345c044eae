"""`rollout init`: a commented rollout.toml from scratch, from a running container on the real engine,
or from a Deployment on the Kubernetes simulator; each one then drives a real deploy."""

from __future__ import annotations

import json
import subprocess
import tomllib
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from kube_sim.harness import RunningSimulator, running_simulator
from support.cli import run_rollout
from support.errors import one_line_error
from support.images import APP_IMAGE
from support.ports import free_port
from support.project import http_get


def rollout(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_rollout("-c", str(config), *args, env=env, cwd=config.parent, timeout=300)


@pytest.fixture
def running_container(docker_client: Any, registry: str) -> Iterator[tuple[str, int]]:
    """A container started by hand, the way it ran before rollout: the tag, host network, env, a restart policy."""
    name, port = f"rt-init-{uuid.uuid4().hex[:8]}", free_port()
    docker_client.containers.run(f"{APP_IMAGE}:good1", name=name, detach=True, network_mode="host",
                                 environment={"PORT": str(port), "API_TOKEN": "init-T0ken-not-copied"},
                                 restart_policy={"Name": "on-failure", "MaximumRetryCount": 2})
    yield name, port
    for container in docker_client.containers.list(all=True, filters={"name": name}):
        container.remove(force=True)


def test_init_from_a_running_container_then_deploy(running_container: tuple[str, int], tmp_path: Path,
                                                   docker_client: Any) -> None:
    name, port = running_container
    config = tmp_path / "rollout.toml"
    result = rollout(config, "init", "--from-container", name)
    assert result.returncode == 0, result.stderr
    text = config.read_text()
    settings = tomllib.loads(text)
    [target] = settings["apps"][name]["targets"]
    assert settings["apps"][name]["image"] == APP_IMAGE
    assert target == {"name": "local", "kind": "docker", "container": name, "network": "host",
                      "env": {"PORT": str(port)}, "restart": "on-failure:2"}
    # A secret-looking variable is named, never copied or printed.
    assert "API_TOKEN" in text and "API_TOKEN" in result.stderr
    assert "init-T0ken-not-copied" not in text + result.stdout + result.stderr
    assert f"rollout deploy {name}:TAG" in result.stdout

    result = rollout(config, "deploy", f"{name}:good2")
    assert result.returncode == 0, result.stderr
    assert http_get(f"http://127.0.0.1:{port}/version") == "good2"
    # The operator's settings (the secret too) went over to the new container.
    env = docker_client.containers.get(name).attrs["Config"]["Env"]
    assert "API_TOKEN=init-T0ken-not-copied" in env and f"PORT={port}" in env


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    config = tmp_path / "rollout.toml"
    config.write_text("# mine\n")
    result = rollout(config, "init")
    assert result.returncode == 2
    assert "already exists" in one_line_error(result, 2) and "--force" in result.stderr
    assert config.read_text() == "# mine\n"

    result = rollout(config, "init", "--force", "--app", "shop", "--image", "127.0.0.1:5000/team/shop")
    assert result.returncode == 0, result.stderr
    settings = tomllib.loads(config.read_text())
    assert settings["apps"]["shop"]["image"] == "127.0.0.1:5000/team/shop"
    # What init writes is a config rollout accepts as it is.
    listed = rollout(config, "history", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_init_errors_are_one_line_and_write_nothing(tmp_path: Path, docker_client: Any) -> None:
    config = tmp_path / "rollout.toml"
    result = rollout(config, "init", "--from-container", f"no-such-{uuid.uuid4().hex[:6]}")
    assert result.returncode == 2 and "no container" in one_line_error(result, 2)
    result = rollout(config, "init", "--from-container", "x", "--host", f"tcp://127.0.0.1:{free_port()}")
    assert result.returncode == 5 and "cannot reach the Docker engine" in one_line_error(result, 5)
    result = rollout(config, "init", "--from-container", "x", "--from-deployment", "y")
    assert result.returncode == 2 and "not both" in one_line_error(result, 2)
    assert not config.exists()


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSimulator]:
    with running_simulator(tmp_path_factory.mktemp("kube")) as sim:
        yield sim


def create_deployment(sim: RunningSimulator, root: Path, name: str, namespace: str = "default",
                      env: list[dict[str, Any]] | None = None) -> None:
    manifest = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                     {"name": "app", "image": f"{APP_IMAGE}:good1", **({"env": env} if env else {})},
                     {"name": "proxy", "image": "127.0.0.1:5000/rollout-test/sidecar:v1"}]}}},
    }
    path = root / f"{name}.json"
    path.write_text(json.dumps(manifest))
    created = sim.kubectl("create", "-f", str(path), "--validate=false")
    assert created.returncode == 0, created.stderr
    assert sim.kubectl("-n", namespace, "rollout", "status", f"deployment/{name}", "--timeout=60s").returncode == 0


def test_init_from_a_deployment_then_deploy(kube: RunningSimulator, tmp_path: Path, registry: str) -> None:
    name = f"shop-{uuid.uuid4().hex[:6]}"
    create_deployment(kube, tmp_path, name)
    config = tmp_path / "rollout.toml"

    # Two containers: which one is the app's must be said.
    result = rollout(config, "init", "--from-deployment", name, "--kubeconfig", str(kube.kubeconfig))
    assert result.returncode == 2
    assert "app, proxy" in one_line_error(result, 2) and "--container" in result.stderr
    assert not config.exists()

    result = rollout(config, "init", "--from-deployment", name, "--kubeconfig", str(kube.kubeconfig),
                     "--container", "app")
    assert result.returncode == 0, result.stderr
    settings = tomllib.loads(config.read_text())
    assert settings["apps"][name]["image"] == APP_IMAGE
    [target] = settings["apps"][name]["targets"]
    assert target == {"name": "cluster", "kind": "kubernetes", "kubeconfig": str(kube.kubeconfig),
                      "namespace": "default", "deployment": name, "container": "app"}

    result = rollout(config, "deploy", f"{name}:good2")
    assert result.returncode == 0, result.stderr
    deployment = json.loads(kube.kubectl("get", "deployment", name, "-o", "json").stdout)
    images = {c["name"]: c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert images["app"].startswith(f"{APP_IMAGE}@sha256:")
    assert images["proxy"] == "127.0.0.1:5000/rollout-test/sidecar:v1"


def test_init_from_a_missing_deployment_is_one_line(kube: RunningSimulator, tmp_path: Path) -> None:
    config = tmp_path / "rollout.toml"
    result = rollout(config, "init", "--from-deployment", "nope", "--kubeconfig", str(kube.kubeconfig),
                     "--namespace", "elsewhere")
    assert result.returncode == 2
    assert "no deployment 'nope' in namespace elsewhere" in one_line_error(result, 2)
    assert not config.exists()


# -- secrets: rollout.toml is the file teams commit ---------------------------------------------

SECRET_VALUES = ("s3cr3t", "abc123", "tok-9f8e7d6c", "hunter2")
# The app's own command, with credentials a real one would take as arguments (sh -c ignores them).
SERVE = "trap 'exit 0' TERM INT; httpd -f -p 127.0.0.1:$PORT -h /www & wait"
COMMAND = ["sh", "-c", SERVE, "app", "--password=hunter2", "--db", "postgres://u:s3cr3t@db/app"]


def test_init_writes_no_secret_from_a_container_and_the_deploy_keeps_them(tmp_path: Path, docker_client: Any,
                                                                         registry: str) -> None:
    name, port = f"rt-init-{uuid.uuid4().hex[:8]}", free_port()
    docker_client.containers.run(
        f"{APP_IMAGE}:good1", COMMAND, name=name, detach=True, network_mode="host",
        environment={"PORT": str(port), "DATABASE_URL": "postgres://u:s3cr3t@db/app", "API_KEY": "abc123",
                     "LOG_LEVEL": "debug"},
        labels={"com.example.webhook-token": "tok-9f8e7d6c"})
    try:
        before = docker_client.containers.get(name).attrs
        config = tmp_path / "rollout.toml"
        result = rollout(config, "init", "--from-container", name)
        assert result.returncode == 0, result.stderr
        text = config.read_text()
        for secret in SECRET_VALUES:
            assert secret not in text + result.stdout + result.stderr, secret
        # What was left out is named (names only), in the file and on the terminal.
        assert "DATABASE_URL" in text and "API_KEY" in text and "DATABASE_URL" in result.stderr
        assert "command not copied" in text
        [target] = tomllib.loads(text)["apps"][name]["targets"]
        assert target["env"] == {"PORT": str(port), "LOG_LEVEL": "debug"}  # values no credential can be
        assert "command" not in target and "labels" not in target

        listed = rollout(config, "history", "--json")  # rollout loads the file as written
        assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
        deployed = rollout(config, "deploy", f"{name}:good2")
        assert deployed.returncode == 0, deployed.stderr
        assert http_get(f"http://127.0.0.1:{port}/version") == "good2"
        # The oracle is the engine: the new container has the old one's env, command and labels.
        after = docker_client.containers.get(name).attrs
        assert after["Id"] != before["Id"]
        assert sorted(after["Config"]["Env"]) == sorted(before["Config"]["Env"])
        assert after["Config"]["Cmd"] == before["Config"]["Cmd"] == COMMAND
        labels = {k: v for k, v in after["Config"]["Labels"].items() if not k.startswith("rollout.")}
        assert labels == before["Config"]["Labels"]
    finally:
        for container in docker_client.containers.list(all=True, filters={"name": name}):
            container.remove(force=True)


@pytest.mark.parametrize(("name", "value", "written"), [
    ("PORT", "18604", True), ("LOG_LEVEL", "debug", True), ("DATA_DIR", "/var/lib/app", True),
    ("DB_ADDR", "db:5432", True), ("DEBUG", "", True), ("MODE", "prod", True), ("ENV", "uat", True),
    ("DATABASE_URL", "postgres://u:s3cr3t@db/app", False), ("API_KEY", "abc123", False),
    ("SLACK_HOOK", "https://hooks.slack.com/services/T0/B0/XXXX", False), ("MODE", "hunter2", False),
    ("DB_PASSWORD", "1234", False), ("ACCOUNT", "12345678901234", False),
])
def test_only_env_values_that_cannot_be_a_credential_are_written(name: str, value: str, written: bool) -> None:
    from rollout.scaffold import harmless_value

    assert harmless_value(name, value) is written


def test_init_from_a_deployment_writes_no_env(kube: RunningSimulator, tmp_path: Path, registry: str) -> None:
    name = f"shop-{uuid.uuid4().hex[:6]}"
    create_deployment(kube, tmp_path, name, env=[{"name": "DATABASE_URL", "value": "postgres://u:s3cr3t@db/app"},
                                                 {"name": "API_KEY", "value": "abc123"}])
    try:
        config = tmp_path / "rollout.toml"
        result = rollout(config, "init", "--from-deployment", name, "--kubeconfig", str(kube.kubeconfig),
                         "--container", "app")
        assert result.returncode == 0, result.stderr
        text = config.read_text()
        for secret in SECRET_VALUES:
            assert secret not in text + result.stdout + result.stderr, secret
        [target] = tomllib.loads(text)["apps"][name]["targets"]
        assert set(target) == {"name", "kind", "kubeconfig", "namespace", "deployment", "container"}
    finally:
        kube.kubectl("delete", "deployment", name, "--wait=false")


# -- commands are never written; names read back are checked; the cluster is reached as kubectl does -----

# Credentials in forms no pattern can tell from other arguments: MySQL's -pPASSWORD, curl's
# -u user:password, a Vault token, psql/app flags whose value is a secret.
SECRET_COMMAND = ["sh", "-c", SERVE, "app", "mysqld", "-phunter2", "curl", "-u", "admin:s3cr3t", "vault", "login",
                  "s.AbCdEf0123456789", "psql", "-W", "hunter2", "app", "-k", "k3y-0f-the-app"]


def test_init_never_writes_a_command_and_the_deploy_keeps_it(tmp_path: Path, docker_client: Any, registry: str) -> None:
    name, port = f"rt-init-{uuid.uuid4().hex[:8]}", free_port()
    docker_client.containers.run(f"{APP_IMAGE}:good1", SECRET_COMMAND, name=name, detach=True, network_mode="host",
                                 environment={"PORT": str(port)})
    try:
        config = tmp_path / "rollout.toml"
        result = rollout(config, "init", "--from-container", name)
        assert result.returncode == 0, result.stderr
        text = config.read_text()
        for secret in ("hunter2", "s3cr3t", "s.AbCdEf0123456789", "k3y-0f-the-app"):
            assert secret not in text + result.stdout + result.stderr, secret
        [target] = tomllib.loads(text)["apps"][name]["targets"]
        assert "command" not in target and "entrypoint" not in target
        assert "command not copied" in text and "command not copied" in result.stderr  # named, not written

        deployed = rollout(config, "deploy", f"{name}:good2")
        assert deployed.returncode == 0, deployed.stderr
        assert http_get(f"http://127.0.0.1:{port}/version") == "good2"
        assert docker_client.containers.get(name).attrs["Config"]["Cmd"] == SECRET_COMMAND  # carried over
    finally:
        for container in docker_client.containers.list(all=True, filters={"name": name}):
            container.remove(force=True)


def test_an_app_name_init_cannot_write_is_refused_in_one_line(tmp_path: Path, docker_client: Any, registry: str) -> None:
    """The rollout.app label is anyone's text; --app is the user's: either must be a name
    `rollout deploy APP:TAG` can name, or nothing is written (exit 2)."""
    name = f"rt-init-{uuid.uuid4().hex[:8]}"
    docker_client.containers.run(f"{APP_IMAGE}:good1", name=name, detach=True, network_mode="host",
                                 environment={"PORT": str(free_port())},
                                 labels={"rollout.app": "web\x1b[2J\nrollout: ok"})
    try:
        config = tmp_path / "rollout.toml"
        result = rollout(config, "init", "--from-container", name)
        assert result.returncode == 2, result.stderr
        error = one_line_error(result, 2)
        assert "rollout.app" in error and "not an app name" in error and "\x1b" not in result.stderr
        assert not config.exists()
        for args in (["--from-container", name, "--app", "web shop"], ["--app", "web.shop"]):
            result = rollout(config, "init", *args)
            assert result.returncode == 2 and "--app" in one_line_error(result, 2), result.stderr
            assert not config.exists()
        written = rollout(config, "init", "--from-container", name, "--app", "shop")  # --app chooses
        assert written.returncode == 0, written.stderr
        assert list(tomllib.loads(config.read_text())["apps"]) == ["shop"]
    finally:
        for container in docker_client.containers.list(all=True, filters={"name": name}):
            container.remove(force=True)


def test_init_from_a_deployment_on_loopback_never_goes_through_a_proxy(kube: RunningSimulator, tmp_path: Path,
                                                                       registry: str) -> None:
    """kubectl never proxies loopback; neither does `rollout deploy`, and init uses the same client."""
    name = f"shop-{uuid.uuid4().hex[:6]}"
    create_deployment(kube, tmp_path, name)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proxied = {"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead}
    try:
        config = tmp_path / "rollout.toml"
        result = rollout(config, "init", "--from-deployment", name, "--kubeconfig", str(kube.kubeconfig),
                         "--container", "app", env=proxied)
        assert result.returncode == 0, result.stderr
        [target] = tomllib.loads(config.read_text())["apps"][name]["targets"]
        assert target["deployment"] == name
    finally:
        kube.kubectl("delete", "deployment", name, "--wait=false")
