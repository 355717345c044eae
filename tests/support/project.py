"""A rollout project on the real engine: one docker app, its rollout.toml, its ledger, and ways
to drive the CLI against it (the `project` fixture in conftest.py builds one per test on a
SQLite ledger; `ledger_project` builds one per ledger backend).

The ledger is a SQLite file under the project, or a PostgreSQL database named by URL: then
every rollout run gets it as $ROLLOUT_LEDGER_URL, as a CI runner sharing a team ledger would.
"""

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

from rollout.ledger import LedgerBackend, open_ledger
from rollout.ledger_url import is_url

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
    ledger_url: str | None = None  # a PostgreSQL ledger; None: the SQLite file `ledger`
    _pg: Any = field(default=None, repr=False)  # the read connection ledger_rows keeps to PostgreSQL

    @classmethod
    def create(cls, root: Path, ledger: str | None = None) -> "Project":
        """A project under root with a unique container name and a free port, its config written.
        ledger: a postgresql:// URL (set as $ROLLOUT_LEDGER_URL for every run), or the SQLite
        file under root (root/state/ledger.db, the default) given as None or as that path."""
        if ledger is not None and not is_url(ledger):
            assert Path(ledger) == root / "state" / "ledger.db", f"a SQLite ledger lives at {root}/state/ledger.db"
            ledger = None
        root.mkdir(parents=True, exist_ok=True)
        made = cls(root=root, container=f"rt-{uuid.uuid4().hex[:8]}", port=free_port(), ledger_url=ledger)
        if ledger is not None:
            made.env["ROLLOUT_LEDGER_URL"] = ledger
        write_config(made)
        return made

    def another_runner(self, root: Path) -> "Project":
        """The same app run from another config dir, as a second operator or CI runner would: a
        copy of this rollout.toml under root, the same container and port, the same ledger URL."""
        other = type(self)(root=root, container=self.container, port=self.port, env=dict(self.env),
                           ledger_url=self.ledger_url)
        root.mkdir(parents=True, exist_ok=True)
        other.config.write_text(self.config.read_text())
        return other

    @property
    def config(self) -> Path:
        return self.root / "rollout.toml"

    @property
    def ledger(self) -> Path:
        """The SQLite ledger file (the default location for a config in root)."""
        return self.root / "state" / "ledger.db"

    @property
    def on_postgres(self) -> bool:
        return self.ledger_url is not None

    @property
    def backend(self) -> str:
        """The ledger backend's name for reports: "PostgreSQL" or "SQLite"."""
        return "PostgreSQL" if self.on_postgres else "SQLite"

    @property
    def ledger_location(self) -> str:
        """What rollout.ledger.open_ledger takes: the PostgreSQL URL or the SQLite file's path."""
        return self.ledger_url or str(self.ledger)

    def open_ledger(self) -> LedgerBackend:
        """The project's ledger through rollout's own API (close it after use)."""
        return open_ledger(self.ledger_location)

    def close(self) -> None:
        """Close the connection ledger_rows keeps to PostgreSQL (before the database is dropped)."""
        if self._pg is not None:
            self._pg.close()
            self._pg = None

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
        """Rows of a read-only query on the ledger, as tuples (the ledger's own tests check its API).

        Written with SQLite's `?` placeholders; on PostgreSQL they become psycopg's `%s`, and
        each query runs in its own (autocommit) transaction, so it sees every commit before it.
        """
        if self.ledger_url is None:
            conn = sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True, timeout=30)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        if self._pg is None or self._pg.closed:
            import psycopg

            # One connection for the project's life: wait_for_entry polls every 20 ms.
            self._pg = psycopg.connect(self.ledger_url, autocommit=True,
                                       options="-c default_transaction_read_only=on")
        return self._pg.execute(sql.replace("?", "%s"), params).fetchall()

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


