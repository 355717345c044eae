"""The test bed's PostgreSQL server for the benchmarks: fresh databases and fast bulk loads.

Databases are made and dropped through tests/support/pg.py (the superuser over the
cluster's socket dir); rollout itself connects as the `rollout` role over TCP with a
password, as a team's runners would. Bulk loads go through COPY as the `rollout` role into
the real schema (created by PostgresLedger, triggers and foreign keys active), a chunk per
transaction, then the identity sequence is moved past the copied ids and the tables are
vacuumed and analysed, as autovacuum would have done on a ledger that grew over months.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

from benchmarks.common import REPO_ROOT, ScenarioFailed

# tests/support/pg.py imports its siblings as `support.*` (tests/ is pytest's rootdir on sys.path).
if str(REPO_ROOT / "tests") not in sys.path:
    sys.path.append(str(REPO_ROOT / "tests"))

from support import pg  # noqa: E402

ENTRY_COLUMNS = ("id", "app", "repository", "tag", "digest", "kind", "status", "previous_id", "actor",
                 "created_at", "finished_at", "error")
TARGET_COLUMNS = ("entry_id", "target", "image_before", "image_after", "outcome", "detail", "updated_at")
EVENT_COLUMNS = ("entry_id", "at", "event", "detail")


def require_server() -> None:
    """Raise ScenarioFailed unless the test bed's server accepts the `rollout` role (`.ci/testbed postgres`)."""
    import psycopg

    try:
        psycopg.connect(pg.url("postgres"), connect_timeout=5).close()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScenarioFailed(f"the test PostgreSQL server on {pg.HOST}:{pg.PORT} does not answer ({reason}):"
                             " run `.ci/testbed postgres`") from None


@contextmanager
def fresh_databases(count: int) -> Iterator[list[str]]:
    """`count` new empty databases as ledger URLs (with the role's password), dropped afterwards."""
    require_server()
    names: list[str] = []
    try:
        for _ in range(count):
            names.append(pg.create_database())
        yield [pg.url(name) for name in names]
    finally:
        for name in names:
            try:
                pg.drop_database(name)
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the measurement's own error
                print(f"[bench] could not drop database {name}: {exc}", file=sys.stderr)


def copy_deploys(url: str, chunks: Iterable[tuple[list[Sequence[Any]], list[Sequence[Any]], list[Sequence[Any]]]],
                 ) -> None:
    """COPY (entries, targets, events) chunks into the ledger at `url`, one transaction per chunk.

    Entries carry their own ids (ENTRY_COLUMNS order), so the entries' identity sequence is
    set past the largest afterwards: the next `record()` must not collide with a copied id.
    The load runs as the superuser with `session_replication_role = replica`, which skips
    the foreign-key checks (as pg_restore --disable-triggers does): checking 8 references
    per entry one row at a time is most of the load's time, and these rows are the very
    rows the SQLite ledger takes with its foreign keys on. Ends with VACUUM ANALYZE. The
    schema must exist (open a PostgresLedger first).
    """
    import psycopg

    database = pg_conninfo_dbname(url)
    with psycopg.connect(host=str(pg.SOCKET_DIR), port=pg.PORT, user="postgres", dbname=database) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.commit()
        for entries, targets, events in chunks:
            with conn.transaction(), conn.cursor() as cursor:
                for table, columns, rows in (("entries", ENTRY_COLUMNS, entries),
                                             ("targets", TARGET_COLUMNS, targets),
                                             ("events", EVENT_COLUMNS, events)):
                    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
        conn.execute("SELECT setval(pg_get_serial_sequence('entries', 'id'), (SELECT max(id) FROM entries))")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")


def pg_conninfo_dbname(url: str) -> str:
    """The database name in a ledger URL."""
    from psycopg import conninfo

    return conninfo.conninfo_to_dict(url)["dbname"]


def query(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of one read-only statement on the ledger at `url` (as the `rollout` role)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, list(params)).fetchall()


def size_bytes(url: str) -> int:
    """The database's size on disk (tables, indexes, TOAST), bytes."""
    return int(query(url, "SELECT pg_database_size(current_database())")[0][0])


def explain(url: str, sql: str, params: Sequence[Any]) -> tuple[float, str]:
    """(execution time in ms, plan's first line) of EXPLAIN ANALYZE for one statement."""
    lines = [row[0] for row in query(url, "EXPLAIN (ANALYZE, BUFFERS) " + sql, params)]
    ms = next((float(line.split(":")[1].split()[0]) for line in lines if line.startswith("Execution Time")), -1.0)
    return ms, lines[0].strip()


def server_settings(url: str, names: Sequence[str] = ("server_version", "fsync", "synchronous_commit",
                                                      "shared_buffers")) -> dict[str, str]:
    """The server's settings that decide write latency and cache hits, for the report."""
    return {name: str(query(url, f"SHOW {name}")[0][0]) for name in names}

