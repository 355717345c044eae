"""The ledger: every deploy attempt as an immutable tag + digest, in SQLite.

Rows in `entries` are written once and only their outcome (status, finished_at,
error) moves forward; SQLite triggers refuse any change to what was deployed and
any deletion, even from raw SQL, so the history cannot be rewritten.
"""

from __future__ import annotations

import collections
import datetime as dt
import getpass
import json
import os
import signal
import socket
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    import sqlite_utils

from rollout.errors import LedgerBusy, LedgerError, one_line

SCHEMA_VERSION = 2

PENDING, APPLYING, VERIFYING = "pending", "applying", "verifying"
HEALTHY, FAILED, INTERRUPTED = "healthy", "failed", "interrupted"
IN_PROGRESS = (PENDING, APPLYING, VERIFYING)
FINISHED = (HEALTHY, FAILED, INTERRUPTED)

DEPLOY, REVERT, REBUILD = "deploy", "revert", "rebuild"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    repository TEXT NOT NULL,
    tag TEXT,
    digest TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('deploy', 'revert', 'rebuild')),
    status TEXT NOT NULL CHECK (status IN ('pending', 'applying', 'verifying', 'healthy', 'failed', 'interrupted')),
    previous_id INTEGER REFERENCES entries(id),
    reverts_to INTEGER REFERENCES entries(id),
    actor TEXT NOT NULL,
    reason TEXT,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    error TEXT,
    build_key TEXT,
    base_digests TEXT
);
CREATE INDEX IF NOT EXISTS entries_app_id ON entries (app, id);
CREATE INDEX IF NOT EXISTS entries_app_status ON entries (app, status, id);
CREATE TABLE IF NOT EXISTS targets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id INTEGER NOT NULL REFERENCES entries(id),
    target TEXT NOT NULL,
    image_before TEXT,
    image_after TEXT,
    outcome TEXT NOT NULL,
    detail TEXT,
    updated_at TEXT NOT NULL,
    UNIQUE (entry_id, target)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id INTEGER REFERENCES entries(id),
    at TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_entry ON events (entry_id);
CREATE TABLE IF NOT EXISTS locks (
    app TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at REAL NOT NULL,
    heartbeat_at TEXT
);
CREATE TRIGGER IF NOT EXISTS entries_identity_immutable
BEFORE UPDATE OF id, app, repository, tag, digest, kind, previous_id, reverts_to, actor, reason, created_at, build_key, base_digests ON entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable: what was deployed cannot be changed'); END;
CREATE TRIGGER IF NOT EXISTS entries_outcome_final
BEFORE UPDATE OF status, finished_at, error ON entries
WHEN OLD.status IN ('healthy', 'failed', 'interrupted')
BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable: a finished entry keeps its outcome'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_replace
BEFORE INSERT ON entries WHEN EXISTS (SELECT 1 FROM entries WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable: an entry cannot be replaced'); END;
CREATE TRIGGER IF NOT EXISTS events_no_replace
BEFORE INSERT ON events WHEN EXISTS (SELECT 1 FROM events WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'ledger events are append-only: an event cannot be replaced'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete
BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'ledger entries cannot be deleted'); END;
CREATE TRIGGER IF NOT EXISTS targets_no_delete
BEFORE DELETE ON targets
BEGIN SELECT RAISE(ABORT, 'ledger target rows cannot be deleted'); END;
CREATE TRIGGER IF NOT EXISTS events_no_update
BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'ledger events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete
BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'ledger events are append-only'); END;
"""


# Each step takes a ledger from version N-1 to N; all pending steps run in one transaction.
# Schema changes from version N-1 to N, run inside one transaction of ours, so a step must not
# commit (sqlite-utils' transform() does, in 3.x: keep to add_column-style calls). Written with
# sqlite-utils, imported only when a ledger is created or migrated (its import costs ~45 ms).
MIGRATIONS: dict[int, Callable[["sqlite_utils.Database"], object]] = {
    2: lambda db: db["locks"].add_column("heartbeat_at", str),
}


# Test hook (tests/test_crash_safety.py): with ROLLOUT_TEST_KILL_AT="<step>#<n>" the process
# SIGKILLs itself right after the n-th such step is written, so a crash lands on an exact,
# reproducible moment. Steps: the ledger's event names (recorded, status:applying, target:applied...),
# the docker target's (docker:renamed, docker:stopped, docker:created, docker:started) and rebuild's
# docker:pushed (pushed, `build:pushed` not yet written). Unset: no effect.
_steps_seen: collections.Counter[str] = collections.Counter()


def kill_point(step: str) -> None:
    wanted = os.environ.get("ROLLOUT_TEST_KILL_AT")
    if wanted:
        _steps_seen[step] += 1
        if wanted == f"{step}#{_steps_seen[step]}":
            os.kill(os.getpid(), signal.SIGKILL)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Entry:
    id: int
    app: str
    repository: str
    tag: str | None
    digest: str
    kind: str
    status: str
    previous_id: int | None
    reverts_to: int | None
    actor: str
    reason: str | None
    created_at: str
    finished_at: str | None
    error: str | None
    build_key: str | None = None
    base_digests: dict[str, str] | None = None

    @property
    def image(self) -> str:
        """The exact image this entry deploys: repository@digest."""
        return f"{self.repository}@{self.digest}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Entry":
        values = dict(row)
        if values.get("base_digests"):
            values["base_digests"] = json.loads(values["base_digests"])
        return cls(**values)


@dataclass(frozen=True)
class TargetRow:
    entry_id: int
    target: str
    image_before: str | None
    image_after: str | None
    outcome: str
    detail: str | None
    updated_at: str


@dataclass
class NewEntry:
    app: str
    repository: str
    tag: str | None
    digest: str
    kind: str = DEPLOY
    previous_id: int | None = None
    reverts_to: int | None = None
    reason: str | None = None
    actor: str = field(default_factory=default_actor)
    build_key: str | None = None
    base_digests: dict[str, str] | None = None


class Ledger:
    """One SQLite file; every method is a short transaction so concurrent rollouts interleave safely."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.db = _connect(self.path)
        _ensure_schema(self.db, self.path)
        # Run inside every write transaction, under SQLite's write lock: lock.held installs
        # one that refuses the write once another rollout has taken the app's lease.
        self.guard: Callable[[sqlite3.Connection], None] | None = None

    def close(self) -> None:
        self.db.close()

    # -- writing -------------------------------------------------------------

    def record(self, new: NewEntry) -> Entry:
        values = asdict(new)
        if values["base_digests"] is not None:
            values["base_digests"] = json.dumps(values["base_digests"], sort_keys=True)
        values.update(status=PENDING, created_at=now_iso())
        with self.transaction():
            cursor = self.db.execute(
                f"INSERT INTO entries ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                list(values.values()),
            )
            entry_id = cursor.lastrowid
            self._event(entry_id, "recorded", {"kind": new.kind, "tag": new.tag, "digest": new.digest})
        kill_point("recorded")
        return self.get(entry_id)

    def set_status(self, entry_id: int, status: str, error: str | None = None) -> None:
        finished_at = now_iso() if status in FINISHED else None
        with self.transaction():
            self.db.execute(
                "UPDATE entries SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                [status, finished_at, error, entry_id],
            )
            self._event(entry_id, f"status:{status}", {"error": error} if error else {})
        kill_point(f"status:{status}")

    def set_target(self, entry_id: int, target: str, *, outcome: str, image_before: str | None = None,
                   image_after: str | None = None, detail: str | None = None) -> None:
        with self.transaction():
            existing = self.db.execute(
                "SELECT image_before, image_after FROM targets WHERE entry_id = ? AND target = ?", [entry_id, target]
            ).fetchone()
            if existing:
                self.db.execute(
                    "UPDATE targets SET outcome = ?, detail = ?, updated_at = ?,"
                    " image_before = COALESCE(?, image_before), image_after = COALESCE(?, image_after)"
                    " WHERE entry_id = ? AND target = ?",
                    [outcome, detail, now_iso(), image_before, image_after, entry_id, target],
                )
            else:
                self.db.execute(
                    "INSERT INTO targets (entry_id, target, image_before, image_after, outcome, detail, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [entry_id, target, image_before, image_after, outcome, detail, now_iso()],
                )
            self._event(entry_id, f"target:{outcome}", {"target": target, "detail": detail})
        kill_point(f"target:{outcome}")

    def event(self, entry_id: int | None, event: str, detail: dict[str, Any] | None = None) -> None:
        with self.transaction():
            self._event(entry_id, event, detail or {})
        kill_point(event)

    def _event(self, entry_id: int | None, event: str, detail: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO events (entry_id, at, event, detail) VALUES (?, ?, ?, ?)",
            [entry_id, now_iso(), event, json.dumps(detail, sort_keys=True, default=str)],
        )

    def abandon_open_transaction(self) -> None:
        """Roll back a transaction a signal left open between BEGIN and the `with` block."""
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def transaction(self) -> "_Transaction":
        return _Transaction(self.db, self.guard)

    def check_guard(self) -> None:
        """Raise what the next write would (LeaseLost once the app's lock is lost), writing nothing."""
        with self.transaction():
            pass

    # -- reading -------------------------------------------------------------

    def get(self, entry_id: int) -> Entry:
        row = self._one("SELECT * FROM entries WHERE id = ?", [entry_id])
        if row is None:
            raise LedgerError(f"no ledger entry #{entry_id}: see `rollout history` for the ids")
        return Entry.from_row(row)

    def find(self, entry_id: int) -> Entry | None:
        row = self._one("SELECT * FROM entries WHERE id = ?", [entry_id])
        return Entry.from_row(row) if row else None

    def history(self, app: str | None = None, limit: int | None = None) -> list[Entry]:
        sql = "SELECT * FROM entries"
        params: list[Any] = []
        if app is not None:
            sql += " WHERE app = ?"
            params.append(app)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [Entry.from_row(row) for row in self._rows(sql, params)]

    def current(self, app: str) -> Entry | None:
        """The app's newest healthy entry: what should be running now."""
        row = self._one("SELECT * FROM entries WHERE app = ? AND status = 'healthy' ORDER BY id DESC LIMIT 1", [app])
        return Entry.from_row(row) if row else None

    def last_healthy(self, app: str, *, not_digest: str | None = None, before_id: int | None = None) -> Entry | None:
        sql = "SELECT * FROM entries WHERE app = ? AND status = 'healthy'"
        params: list[Any] = [app]
        if not_digest is not None:
            sql += " AND digest != ?"
            params.append(not_digest)
        if before_id is not None:
            sql += " AND id < ?"
            params.append(before_id)
        row = self._one(sql + " ORDER BY id DESC LIMIT 1", params)
        return Entry.from_row(row) if row else None

    def healthy_with_tag(self, app: str, tag: str) -> Entry | None:
        row = self._one(
            "SELECT * FROM entries WHERE app = ? AND tag = ? AND status = 'healthy' ORDER BY id DESC LIMIT 1", [app, tag]
        )
        return Entry.from_row(row) if row else None

    def digests_for_tag(self, app: str, tag: str) -> set[str]:
        return {row["digest"] for row in self._rows("SELECT DISTINCT digest FROM entries WHERE app = ? AND tag = ?", [app, tag])}

    def unfinished(self, app: str | None = None) -> list[Entry]:
        sql = "SELECT * FROM entries WHERE status IN ('pending', 'applying', 'verifying')"
        params: list[Any] = []
        if app is not None:
            sql += " AND app = ?"
            params.append(app)
        return [Entry.from_row(row) for row in self._rows(sql + " ORDER BY id", params)]

    def counts(self, app: str) -> dict[tuple[str, str], int]:
        """How many entries the app has, by (kind, status)."""
        rows = self.db.execute("SELECT kind, status, COUNT(*) FROM entries WHERE app = ? GROUP BY kind, status", [app])
        return {(kind, status): count for kind, status, count in rows.fetchall()}

    def targets(self, entry_id: int) -> list[TargetRow]:
        rows = self._rows(
            "SELECT entry_id, target, image_before, image_after, outcome, detail, updated_at FROM targets"
            " WHERE entry_id = ? ORDER BY id",
            [entry_id],
        )
        return [TargetRow(**row) for row in rows]

    def events(self, entry_id: int) -> list[dict[str, Any]]:
        rows = self._rows("SELECT at, event, detail FROM events WHERE entry_id = ? ORDER BY id", [entry_id])
        return [{**row, "detail": json.loads(row["detail"])} for row in rows]

    def _rows(self, sql: str, params: list[Any]) -> Iterator[dict[str, Any]]:
        cursor = self.db.execute(sql, params)
        columns = [c[0] for c in cursor.description]
        for values in cursor.fetchall():
            yield dict(zip(columns, values))

    def _one(self, sql: str, params: list[Any]) -> dict[str, Any] | None:
        return next(iter(self._rows(sql, params)), None)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so readers never see half an update."""

    def __init__(self, conn: sqlite3.Connection, guard: Callable[[sqlite3.Connection], None] | None = None) -> None:
        self.conn = conn
        self.guard = guard
        self.outermost = not conn.in_transaction

    def __enter__(self) -> sqlite3.Connection:
        if self.outermost:
            self.conn.execute("BEGIN IMMEDIATE")
            if self.guard is not None:
                try:
                    self.guard(self.conn)
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self.outermost:
            return
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


_BUSY_TIMEOUT = 30.0
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    # The extended code (BUSY_RECOVERY, BUSY_SNAPSHOT, ...) carries the primary one in its low byte.
    return (exc.sqlite_errorcode & 0xFF) in _BUSY


def _connect(path: Path) -> sqlite3.Connection:
    try:
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        if not path.exists():
            # Created 0600 before SQLite opens it; SQLite gives -wal/-shm the same mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn
    except FileExistsError:
        return _connect(path)
    except (OSError, sqlite3.Error) as exc:
        raise LedgerError(f"cannot open ledger {path}: {one_line(exc)}: check the path and its permissions") from exc


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    try:
        version = _schema_version(conn)
        if version is not None and version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {path} has schema version {version}, newer than this rollout understands"
                f" ({SCHEMA_VERSION}): upgrade rollout"
            )
        if version != SCHEMA_VERSION:
            import sqlite_utils

            # The connection stays as every other command sees it: no pragmas, no plugins.
            db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
            with _Transaction(conn):
                # Read again under the write lock: another rollout may have just created or migrated it.
                version = _schema_version(conn)
                if version is None and db.table_names():
                    raise LedgerError(f"{path} is an SQLite database but not a rollout ledger (it has no schema"
                                      " version): point [ledger] path at a new file")
                for step in range(version + 1, SCHEMA_VERSION + 1) if version is not None else ():
                    MIGRATIONS[step](db)
                # Idempotent (IF NOT EXISTS): creates a new ledger, adds any new trigger to a migrated one.
                for statement in _statements(_SCHEMA):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [str(SCHEMA_VERSION)],
                )
        # Only now: switching to WAL rewrites the file header, which a ledger we refuse must not get.
        _switch_to_wal(conn)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            raise LedgerBusy(f"ledger {path} is busy ({one_line(exc)}): another process has held its write lock"
                             f" for over {_BUSY_TIMEOUT:.0f} s; find it with `fuser {path}` and retry") from exc
        raise LedgerError(f"ledger {path} is not a readable SQLite database ({one_line(exc)}): restore it from a backup") from exc


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    # A ledger not yet in WAL (one another rollout has just created) is switched by everyone who
    # opens it, and the switch needs SQLite's exclusive lock. While another connection holds the
    # write lock, SQLite answers BUSY at once instead of waiting out the busy timeout (waiting could
    # deadlock), so ten rollouts starting together on a new ledger would fail one of them.
    deadline = time.monotonic() + _BUSY_TIMEOUT
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _schema_version(conn: sqlite3.Connection) -> int | None:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        return None
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise sqlite3.DatabaseError(f"its schema version {row[0]!r} is not a number") from None


def _statements(script: str) -> list[str]:
    """Split the schema script into statements (triggers contain ';' inside BEGIN...END)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]