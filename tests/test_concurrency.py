"""Concurrent `rollout deploy` runs on the real engine: one app's rollouts serialise through its
lease, different apps' rollouts run side by side; on a SQLite ledger and on a PostgreSQL one
(ledger_project), whose lease row and server clock must serialise them just the same.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Iterator

import pytest

from support.cli import finish
from support.images import APP_IMAGE
from support.ports import free_port
from support.project import Project, http_get, write_config

DEPLOYS = 10
STEPS = ["recorded", "status:applying", "target:applied", "status:verifying", "target:healthy", "status:healthy"]


def entries(project: Project) -> list[dict]:
    """Every entry, oldest first, as its JSON plus `steps` (its event names, in order) and
    `verifying_at` (when it started verifying); a SQLite ledger must pass integrity_check first."""
    if not project.on_postgres:
        assert project.ledger_rows("PRAGMA integrity_check") == [("ok",)]
    ledger = project.open_ledger()
    try:
        rows = []
        for entry in reversed(ledger.history()):
            events = ledger.events(entry.id)
            # Its lifecycle steps: events about something else (timings, log-tail) do not count.
            rows.append({**entry.to_json(), "steps": [e["event"] for e in events if e["event"] == "recorded"
                                                      or e["event"].startswith(("status:", "target:"))],
                         "verifying_at": next(e["at"] for e in events if e["event"] == "status:verifying")})
        return rows
    finally:
        ledger.close()


def test_ten_concurrent_deploys_of_one_app_serialise(ledger_project: Project,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    project = ledger_project
    write_config(project, timeout=20, stable=1)
    tags = list(itertools.islice(itertools.cycle(["good1", "good2", "good3"]), DEPLOYS))
    # --force: two deploys of one tag may come in a row, and the second would find it running (a no-op).
    processes = [project.start("deploy", f"web:{tag}", "--wait", "120", "--force") for tag in tags]
    # Waited for in start order, the first may be the last to get the lease: give it all ten deploys' time.
    results = [finish(process, timeout=300) for process in processes]

    assert [code for code, _ in results] == [0] * DEPLOYS, [stderr for _, stderr in results]
    rows = entries(project)
    assert len(rows) == DEPLOYS
    assert all(row["status"] == "healthy" and row["steps"] == STEPS for row in rows)
    # Serialised: each entry was recorded after the one before it had finished, and knows it as previous.
    for before, after in zip(rows, rows[1:]):
        assert after["created_at"] > before["finished_at"], (before, after)
        assert after["previous_id"] == before["id"]
    assert sorted(row["tag"] for row in rows) == sorted(tags)
    last = rows[-1]
    assert project.version() == last["tag"]
    status = json.loads(project.run("status", "--json").stdout)
    assert status["current"]["id"] == last["id"] and status["targets"][0]["digest"] == last["digest"]
    assert json.loads(project.run("lock", "status", "--json").stdout) == []
    with capsys.disabled():
        print(f"\nconcurrency ({project.backend}): {DEPLOYS} concurrent deploys of one app: {DEPLOYS} healthy,"
              " serialised, 0 overlapping entries")


@pytest.fixture
def second_app(ledger_project: Project, docker_client) -> Iterator[tuple[str, int]]:  # type: ignore[no-untyped-def]
    container, port = f"rt-{uuid.uuid4().hex[:8]}", free_port()
    yield container, port
    for leftover in docker_client.containers.list(all=True, filters={"name": container}):
        leftover.remove(force=True)


def test_deploys_of_two_apps_run_in_parallel(ledger_project: Project, second_app: tuple[str, int],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    project = ledger_project
    container, port = second_app
    # A stable window long enough that two serialised rollouts could not overlap by accident.
    write_config(project, timeout=30, stable=4, extra=f"""
[apps.api]
image = "{APP_IMAGE}"

[apps.api.health]
timeout = 30
interval = 0.5
stable = 4
http = "http://127.0.0.1:{port}/health"

[[apps.api.targets]]
name = "local"
kind = "docker"
container = "{container}"
network = "host"
env = {{ PORT = "{port}" }}
""")
    processes = [project.start("deploy", "web:good1"), project.start("deploy", "api:good2")]
    results = [finish(process) for process in processes]

    assert [code for code, _ in results] == [0, 0], results
    web, api = sorted(entries(project), key=lambda row: row["app"], reverse=True)
    assert (web["app"], web["status"], api["app"], api["status"]) == ("web", "healthy", "api", "healthy")
    # Both were being verified at the same time.
    overlap_start = max(web["verifying_at"], api["verifying_at"])
    overlap_end = min(web["finished_at"], api["finished_at"])
    assert overlap_start < overlap_end, (web, api)
    assert project.version() == "good1"
    assert http_get(f"http://127.0.0.1:{port}/version") == "good2"
    with capsys.disabled():
        print(f"\nconcurrency ({project.backend}): 2 apps deployed at once: verify windows overlapped"
              f" ({overlap_start[11:23]} to {overlap_end[11:23]} UTC)")
