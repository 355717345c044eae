"""Shared fixtures: the real Docker engine, the test bed's registry, and a rollout
project (config + ledger) per test.

A test that needs the engine or the registry fails when CI=true and they are
missing (the test bed must have started them); elsewhere it is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from support.bed import need
from support.ports import free_port

REGISTRY = os.environ.get("ROLLOUT_TEST_REGISTRY", "127.0.0.1:5000")
APP_IMAGE = f"{REGISTRY}/rollout-test/app"
ROLLOUT = [str(Path(sys.executable).parent / "rollout")]


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    import docker

    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        need(False, f"the Docker engine ({exc.__class__.__name__})")
    return client


@pytest.fixture(scope="session")
def registry() -> str:
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/rollout-test/app/tags/list", timeout=5) as response:
            tags = response.read().decode()
    except OSError as exc:
        need(False, f"the test registry at {REGISTRY} ({exc})")
    need("good1" in tags and "crash" in tags, f"the test images in {REGISTRY} (.ci/testbed images)")
    return REGISTRY


def http_get(url: str, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode().strip()
    except OSError:
        return None


@dataclass
class Project:
    """A rollout.toml with one docker app on the real engine, its ledger, and helpers to drive the CLI."""

    root: Path
    container: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.root / "rollout.toml"

    @property
    def ledger(self) -> Path:
        return self.root / "state" / "ledger.db"

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ROLLOUT_CONFIG": str(self.config), **self.env}
        env.pop("ROLLOUT_LEDGER", None)
        return subprocess.run([*ROLLOUT, *args], capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=self.root, stdin=subprocess.DEVNULL)

    def version(self) -> str | None:
        """Which test build answers on the app's port (None when nothing does)."""
        return http_get(f"http://127.0.0.1:{self.port}/version")

    def version_once_listening(self, seconds: float = 15) -> str | None:
        """version() of a container just started again without a health check: give it time to listen."""
        deadline = time.monotonic() + seconds
        while (answer := self.version()) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return answer

    def history(self) -> list[dict]:
        import json

        result = self.run("history", "--json", "-n", "1000")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def write_config(project: Project, image: str = APP_IMAGE, *, timeout: float = 20, stable: float = 1.5,
                 extra: str = "") -> None:
    project.config.write_text(f"""
[apps.web]
image = "{image}"

[apps.web.health]
timeout = {timeout}
interval = 0.5
stable = {stable}
http = "http://127.0.0.1:{project.port}/health"

[[apps.web.targets]]
name = "local"
kind = "docker"
container = "{project.container}"
network = "host"
env = {{ PORT = "{project.port}" }}
{extra}
""")


@pytest.fixture
def project(tmp_path: Path, docker_client, registry: str) -> Iterator[Project]:  # type: ignore[no-untyped-def]
    bed = Project(root=tmp_path, container=f"rt-{uuid.uuid4().hex[:8]}", port=free_port())
    write_config(bed)
    yield bed
    for container in docker_client.containers.list(all=True, filters={"name": bed.container}):
        container.remove(force=True)
