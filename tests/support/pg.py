"""The test bed's PostgreSQL server (`.ci/testbed postgres`): a fresh database per test.

The superuser connects over the cluster's socket dir without a password (it creates and
drops databases); rollout connects as the `rollout` role over TCP with a password, as a team
would. Names match .ci/testbed; ROLLOUT_TEST_PG_PORT moves the server.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from support.bed import need

ROOT = Path(__file__).resolve().parents[2]
PORT = int(os.environ.get("ROLLOUT_TEST_PG_PORT", "55432"))
SOCKET_DIR = ROOT / ".testbed" / "pgsock"
USER, PASSWORD = "rollout", "rollout-test-password"
HOST = "127.0.0.1"


def url(database: str, *, password: bool = True) -> str:
    """A rollout ledger URL for `database` on the test server (with the role's password unless told not to)."""
    credentials = f"{USER}:{PASSWORD}" if password else USER
    return f"postgresql://{credentials}@{HOST}:{PORT}/{database}"


def admin():  # type: ignore[no-untyped-def]
    """A superuser connection (autocommit) over the socket dir; fails/skips via need() when the server is missing."""
    import psycopg

    try:
        return psycopg.connect(host=str(SOCKET_DIR), port=PORT, user="postgres", dbname="postgres",
                               autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        need(False, f"the test PostgreSQL server on {HOST}:{PORT} ({str(exc).strip().splitlines()[0]})")
        raise


def create_database() -> str:
    """A new empty database owned by the `rollout` role; returns its name."""
    name = "rollout_" + uuid.uuid4().hex[:16]
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" OWNER {USER}')
    return name


def drop_database(name: str) -> None:
    """Drop the database, closing any connection a test left open."""
    with admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new database for the block, as a ledger URL; dropped afterwards."""
    name = create_database()
    try:
        yield url(name)
    finally:
        drop_database(name)
