"""A rollout project on the real engine: one docker app, its rollout.toml, its ledger, and ways
to drive the CLI against it (the `project` fixture in conftest.py builds one per test)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cli import run_rollout, start_rollout
from .images import APP_IMAGE
from .ports import free_port

STEP_TIMEOUT = 60.0  # seconds a started rollout, or an entry it should reach, is waited for


def http_get(url: str, timeout: float = 2.0) -> str | None:
    """The body of a GET, stripped; None when nothing answers 2xx (timeout in seconds)."""
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
    env: dict[str, str] = field(default_factory=dict)  # extra variables for every rollout run

    @classmethod
    def create(cls, root: Path) -> "Project":
        """A project under root with a unique container name and a free port, its config written."""
        made = cls(root=root, container=f"rt-{uuid.uuid4().hex[:8]}", port=free_port())
        write_config(made)
        return made

    @property
    def config(self) -> Path:
        return self.root / "rollout.toml"

    @property
    def ledger(self) -> Path:
        return self.root / "state" / "ledger.db"

    def _env(self, kill_at: str | None = None) -> dict[str, str]:
        return {"ROLLOUT_CONFIG": str(self.config), **self.env, **({"ROLLOUT_TEST_KILL_AT": kill_at} if kill_at else {})}

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """`rollout ARGS...` with this project's config, to its end (timeout in seconds)."""
        return run_rollout(*args, env=self._env(), cwd=self.root, timeout=timeout)

    def start(self, *args: str, kill_at: str | None = None) -> subprocess.Popen[str]:
        """`rollout ARGS...` started, not waited for; kill_at: ROLLOUT_TEST_KILL_AT (rollout.faults)."""
        return start_rollout(*args, env=self._env(kill_at), cwd=self.root)

    def json(self, *args: str) -> Any:
        """The JSON a `--json` command prints; asserts it exited 0."""
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def history(self) -> list[dict]:
        return self.json("history", "--json", "-n", "1000")

    def version(self) -> str | None:
        """Which test build answers on the app's port (None when nothing does)."""
        return http_get(f"http://127.0.0.1:{self.port}/version")

    def version_once_listening(self, seconds: float = 15) -> str | None:
        """version() of a container just started again without a health check: give it time to listen."""
        deadline = time.monotonic() + seconds
        while (answer := self.version()) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return answer

    def ledger_rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a query on the ledger file, read-only (the ledger's own tests check its API)."""
        conn = sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def wait_for_entry(self, process: subprocess.Popen[str], after_id: int, kind: str, status: str) -> bool:
        """Wait (at most STEP_TIMEOUT s) while process runs until an entry of `kind` newer than
        after_id reaches `status`; False when the process ended or time ran out first."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if self.ledger_rows("SELECT 1 FROM entries WHERE id > ? AND kind = ? AND status = ?",
                                (after_id, kind, status)):
                return True
            time.sleep(0.02)
        return False

    def remove_containers(self, docker_client: Any) -> None:
        """Remove every container this project made (the app's and the retired ones)."""
        for container in docker_client.containers.list(all=True, filters={"name": self.container}):
            container.remove(force=True)


def write_config(project: Project, image: str = APP_IMAGE, *, timeout: float = 20, stable: float = 1.5,
                 extra: str = "") -> None:
    """The project's rollout.toml: app `web` from image, one docker target on the host network
    answering /health on the project's port; `extra` lands in the target's table."""
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


