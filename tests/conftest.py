"""Shared fixtures: the real Docker engine, the test bed's registry, and a rollout
project (config + ledger) per test. Fixtures only: helpers live in tests/support/.

A test that needs the engine or the registry fails when CI=true and they are
missing (the test bed must have started them); elsewhere it is skipped.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from support.bed import need
from support.images import REGISTRY
from support.project import Project


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


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a test's ledger lives, once per backend: a SQLite file, then a fresh PostgreSQL
    database on the test bed's server (as a postgresql:// URL). Open it with
    rollout.ledger.open_ledger; every ledger, lock, orchestrator, crash-safety and concurrency
    test takes this fixture so both backends keep the same guarantees (issue 13)."""
    if request.param == "sqlite":
        yield str(tmp_path / "state" / "ledger.db")
        return
    from support import pg

    with pg.fresh_database() as url:
        yield url


@pytest.fixture
def project(tmp_path: Path, docker_client, registry: str) -> Iterator[Project]:  # type: ignore[no-untyped-def]
    """A project on the real engine with a SQLite ledger (support.project.Project)."""
    bed = Project.create(tmp_path)
    yield bed
    bed.remove_containers(docker_client)


@pytest.fixture
def ledger_project(tmp_path: Path, docker_client, registry: str,  # type: ignore[no-untyped-def]
                   ledger_location: str) -> Iterator[Project]:
    """`project`, once per ledger backend (ledger_location): the orchestrator, crash-safety,
    concurrency and operations tests run every rollout against SQLite and PostgreSQL (issue 13)."""
    bed = Project.create(tmp_path, ledger_location)
    yield bed
    bed.close()
    bed.remove_containers(docker_client)
