"""The test bed's PostgreSQL server (`.ci/testbed postgres`): a fresh database per test.

The superuser connects over the cluster's socket dir without a password (it creates and
drops databases); rollout connects as the `rollout` role over TCP with a password, as a team
would. Names match .ci/testbed; ROLLOUT_TEST_PG_PORT and ROLLOUT_TEST_PG_SOCKET_DIR move the server.
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
# Outside the checkout (.ci/testbed): every checkout on the machine shares the one test server.
SOCKET_DIR = Path(os.environ.get("ROLLOUT_TEST_PG_SOCKET_DIR", "/run/rollout-testbed-pg"))
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


PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15, as .ci/testbed uses


class PrivateCluster:
    """A PostgreSQL cluster of one test's own (initdb + pg_ctl as the `postgres` user), so the test
    may stop and start its server; the shared one on PORT is never touched.

    Same conventions as the test bed's: the superuser over the socket dir without a password
    (`admin`), rollout as the `rollout` role with a password over TCP on 127.0.0.1 (`url`), in a
    database `rollout` it owns. Stopping is `pg_ctl stop -m MODE` (fast: backends terminated,
    clean shutdown; immediate: as a crash).
    """

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.data, self.sock, self.log = root / "data", root / "sock", root / "server.log"

    def url(self, *, password: bool = True) -> str:
        """The ledger URL of the cluster's `rollout` database (with the role's password unless told not to)."""
        credentials = f"{USER}:{PASSWORD}" if password else USER
        return f"postgresql://{credentials}@{HOST}:{self.port}/rollout"

    def admin(self):  # type: ignore[no-untyped-def]
        """A superuser connection (autocommit) to the `rollout` database over the socket dir."""
        import psycopg

        return psycopg.connect(host=str(self.sock), port=self.port, user="postgres", dbname="rollout",
                               autocommit=True, connect_timeout=5)

    def start(self) -> None:
        """Start the server and wait (pg_ctl -w, at most 60 s) until it accepts connections."""
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log), "-o",
                     f"-c listen_addresses={HOST} -c port={self.port} -c unix_socket_directories={self.sock}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`pg_ctl stop -m MODE`) and wait until it is down."""
        self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def running(self) -> bool:
        """Whether the server is up (pg_ctl status)."""
        return self._pg_ctl("status", check=False).returncode == 0

    def _pg_ctl(self, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
        import subprocess

        return subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args],
                              capture_output=True, text=True, check=check, timeout=90)


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A new cluster in a temporary directory, started, with the `rollout` role and database;
    stopped (immediate) and removed afterwards. initdb takes 1-2 s. Needs Debian's postgresql-15
    and root (to run the server as `postgres`): fails under CI, skips elsewhere, without them."""
    import shutil
    import subprocess
    import tempfile

    from support.ports import free_port

    need((PG_BIN / "initdb").exists() and os.geteuid() == 0 and shutil.which("runuser") is not None,
         f"PostgreSQL 15 binaries in {PG_BIN} and root (to run a private cluster as `postgres`)")
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="rollout-pg-"))
    cluster = PrivateCluster(root, free_port())
    try:
        cluster.sock.mkdir()
        cluster.data.mkdir()
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(cluster.sock, "postgres", "postgres")
        shutil.chown(cluster.data, "postgres", "postgres")
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(cluster.data),
                        "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                        "--locale=C.UTF-8", "--no-sync"], capture_output=True, text=True, check=True, timeout=120)
        cluster.start()
        import psycopg

        with psycopg.connect(host=str(cluster.sock), port=cluster.port, user="postgres", dbname="postgres",
                             autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
            conn.execute(f"CREATE DATABASE rollout OWNER {USER}")
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            cluster._pg_ctl("stop", "-w", "-m", "immediate", check=False)
        shutil.rmtree(root, ignore_errors=True)
