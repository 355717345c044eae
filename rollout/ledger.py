"""The ledger: every deploy attempt as an immutable tag + digest, in SQLite.

Rows in `entries` are written once and only their outcome (status, finished_at,
error) moves forward; SQLite triggers refuse any change to what was deployed and
any deletion, even from raw SQL, so the history cannot be rewritten.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Generator, Iterable, Iterator, Protocol

if TYPE_CHECKING:
    import sqlite_utils

from rollout import faults
from rollout.errors import LeaseLost, LedgerBusy, LedgerError, one_line
from rollout.ledger_url import is_url

SCHEMA_VERSION = 3

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
    heartbeat_at TEXT,
    token TEXT
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
    # A lease is told apart by a token of its own, not by (host, pid): containers sharing a host
    # name (host networking) reuse pids, pid 1 above all.
    3: lambda db: db["locks"].add_column("token", str),
}


def now_iso() -> str:
    """The current wall-clock time as ISO 8601 in UTC with microseconds, the ledger's timestamp form."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def default_actor() -> str:
    """Who is acting, as `user@host` (the login name, or the uid when it has none)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Entry:
    """One recorded deploy, revert or rebuild: what was deployed (immutable) and its outcome.

    Timestamps are ISO 8601 strings in UTC (`now_iso`); `base_digests` maps each base image
    reference of a rebuild to its digest; `previous_id` is the entry that was current when
    this one started, `reverts_to` the entry a revert restores.
    """

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
        """Every field, as the `--json` outputs show an entry."""
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Entry":
        """An entry from a stored row (column name -> value; `base_digests` as JSON text)."""
        values = dict(row)
        if values.get("base_digests"):
            values["base_digests"] = json.loads(values["base_digests"])
        return cls(**values)


@dataclass(frozen=True)
class TargetRow:
    """What one target of an entry did: its images before/after and its latest outcome
    (`applied`, `healthy`, `failed`, `refused`, ...); `updated_at` is ISO 8601 UTC."""

    entry_id: int
    target: str
    image_before: str | None
    image_after: str | None
    outcome: str
    detail: str | None
    updated_at: str


@dataclass
class NewEntry:
    """What `LedgerBackend.record` needs to start an entry; its status starts as `pending`."""

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


@dataclass(frozen=True)
class Lease:
    """An app's lock as stored in the ledger: who holds it and until when.

    `expires_at` is **wall-clock** Unix time in seconds (`time.time()`), because holders on
    other processes and machines must compare it; the heartbeat that renews it and every
    other wait in rollout use monotonic time, which is only meaningful inside one process.
    `acquired_at` and `heartbeat_at` are ISO 8601 UTC strings, for people.
    """

    app: str
    holder: str
    host: str
    pid: int
    acquired_at: str
    expires_at: float
    heartbeat_at: str | None = None
    # `machine_identity():random`: which lease this is (guard, renew and release match on it) and
    # on which machine its holder runs. None on a lease an older rollout took (matched by host and pid).
    token: str | None = None

    def describe(self) -> str:
        """`user@host (pid N, since TIME)`, for error messages."""
        return f"{self.holder} (pid {self.pid}, since {self.acquired_at})"

    def is_stale(self, now: float) -> bool:
        """True when another rollout may take this lease over: it expired (now: wall-clock
        seconds by the ledger's clock), or its holder ran on this machine (same boot and pid
        namespace, `machine_identity`) and that pid is gone: a SIGKILLed rollout blocks nobody
        on its own machine. Another container with the same host name is not this machine."""
        if self.expires_at <= now:
            return True
        if self.token is not None:
            same_machine = self.token.startswith(machine_identity() + ":")
        else:
            same_machine = self.host == socket.gethostname()
        return same_machine and not _pid_alive(self.pid)

    def matches(self) -> tuple[str, list[Any]]:
        """The SQL condition (`?` placeholders) and parameters that find this lease's row and no other."""
        if self.token is not None:
            return "app = ? AND token = ?", [self.app, self.token]
        return "app = ? AND pid = ? AND host = ? AND token IS NULL", [self.app, self.pid, self.host]


def machine_identity() -> str:
    """This process's machine as far as pids go: the kernel's boot id and the pid namespace's
    inode (two containers on one host share the boot id, not the namespace). Falls back to the
    host name where /proc does not say."""
    global _MACHINE
    if _MACHINE is None:
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            _MACHINE = f"{boot}-{os.stat('/proc/self/ns/pid').st_ino}"
        except OSError:
            _MACHINE = socket.gethostname()
    return _MACHINE


_MACHINE: str | None = None


def new_lease_token() -> str:
    """A token for a lease this process takes: `machine_identity():random hex`."""
    return f"{machine_identity()}:{uuid.uuid4().hex}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


BUILD_PUSHED = "build:pushed"


@dataclass(frozen=True)
class PushedBuild:
    """One image `rollout rebuild` built and pushed, recorded as a `build:pushed` ledger event.

    `build_key` is the hash of the build's inputs (rollout.build.build_key); `base_digests`
    maps each base image reference to its digest; `at` is when it was recorded (ISO 8601
    UTC, empty before it is); `deploy` says whether the rebuild went on to deploy it.
    """

    app: str
    repository: str
    tag: str
    digest: str
    build_key: str
    base_digests: dict[str, str]
    at: str
    deploy: bool

    @property
    def image(self) -> str:
        """repository:tag@digest."""
        return f"{self.repository}:{self.tag}@{self.digest}"


class LedgerBackend(Protocol):
    """What every caller may ask of a ledger; the only way into one (no SQL outside it).

    Implemented by `SqliteLedger` (the embedded default, this module) and meant to be
    implemented the same way by other backends (PostgreSQL, issue 13). Guarantees every
    backend keeps: entries and events are immutable once written (only an unfinished
    entry's status/finished_at/error move forward); ids grow in recording order; each
    public write is one transaction, several of them can be grouped with `transaction()`;
    while a write guard is set (`guard_writes`), every write first checks, inside its own
    transaction, that the lease is still held and raises `LeaseLost` if not.

    Errors: `LedgerError` (exit 2) for an unknown entry, an unreadable, foreign or newer
    ledger; `LedgerBusy` (exit 4) when another process keeps the database locked past
    the busy timeout; `LeaseLost` (exit 4) from any write once the guarded lease is gone;
    the backend's own database errors (`database_errors`) for anything else, including a
    write the immutability rules refuse.
    """

    #: Exception classes the backend's driver raises (a full disk, a refused write):
    #: what a caller that must keep going (the lease heartbeat) catches.
    database_errors: tuple[type[BaseException], ...]

    def now(self) -> float:
        """Wall-clock Unix time in seconds by the ledger's clock (the database server's for
        PostgreSQL): what `Lease.expires_at` is compared with."""
        ...

    def reopen(self) -> "LedgerBackend":
        """Another handle on the same ledger with its own connection, for another thread.

        Raises LedgerError / LedgerBusy like opening the ledger.
        """
        ...

    def close(self) -> None:
        """Close the connection; the object is unusable afterwards."""
        ...

    # -- entries -------------------------------------------------------------------

    def record(self, new: NewEntry) -> Entry:
        """Record a new `pending` entry (and its `recorded` event); return it with its id."""
        ...

    def set_status(self, entry_id: int, status: str, error: str | None = None) -> None:
        """Move an unfinished entry to `status` (one of IN_PROGRESS or FINISHED, see top of
        module); a finished status also sets finished_at. A finished entry is refused by
        the backend (a database error): its outcome is final."""
        ...

    def set_target(self, entry_id: int, target: str, *, outcome: str, image_before: str | None = None,
                   image_after: str | None = None, detail: str | None = None) -> None:
        """Record (or update) one target's outcome for an entry; an image left None keeps
        the one recorded before, so a later `healthy` keeps what `applied` recorded."""
        ...

    def get(self, entry_id: int) -> Entry:
        """The entry with that id; LedgerError naming `rollout history` when there is none."""
        ...

    def find(self, entry_id: int) -> Entry | None:
        """The entry with that id, or None."""
        ...

    def history(self, app: str | None = None, limit: int | None = None) -> list[Entry]:
        """Entries newest first, of one app or of all, at most `limit` of them."""
        ...

    def current(self, app: str) -> Entry | None:
        """The app's newest healthy entry: what should be running now (None: never deployed)."""
        ...

    def last_healthy(self, app: str, *, not_digest: str | None = None, before_id: int | None = None) -> Entry | None:
        """The app's newest healthy entry whose digest is not `not_digest` and whose id is
        below `before_id` (either filter optional): what a revert goes back to."""
        ...

    def with_tag(self, app: str, tag: str) -> list[Entry]:
        """Every entry of the app recorded with that tag, whatever its kind and status, newest first."""
        ...

    def healthy_ids(self, app: str, digest: str) -> frozenset[int]:
        """The ids of the app's healthy entries with that digest (rollout.targets.Release.trusted)."""
        ...

    def digests_for_tag(self, app: str, tag: str) -> set[str]:
        """Every digest ever recorded for app:tag, whatever the outcome (a retag is refused)."""
        ...

    def unfinished(self, app: str | None = None) -> list[Entry]:
        """Entries still pending, applying or verifying, oldest first: what recovery interrupts."""
        ...

    def counts(self, app: str) -> dict[tuple[str, str], int]:
        """How many entries the app has, by (kind, status), for the metrics."""
        ...

    def targets(self, entry_id: int) -> list[TargetRow]:
        """The entry's target rows in the order they were first recorded."""
        ...

    # -- events --------------------------------------------------------------------

    def event(self, entry_id: int | None, event: str, detail: dict[str, Any] | None = None) -> None:
        """Append an event (entry_id None: about the ledger or an app, not an entry); the
        detail is stored as JSON (values that are not JSON are stored as their str())."""
        ...

    def events(self, entry_id: int) -> list[dict[str, Any]]:
        """The entry's events in order, each {"at": ISO 8601 UTC, "event": name, "detail": dict}."""
        ...

    # -- transactions and the write guard ------------------------------------------

    def transaction(self) -> ContextManager[object]:
        """Group the writes of the block into one commit (nested blocks join the outermost).

        Takes the write lock up front; the guard, if set, runs first and may raise LeaseLost.
        """
        ...

    def check_guard(self) -> None:
        """Raise what the next write would (LeaseLost once the guarded lease is lost), writing nothing."""
        ...

    def abandon_open_transaction(self) -> None:
        """Roll back a transaction a signal left open between its start and its `with` block."""
        ...

    def guard_writes(self, lease: Lease | None) -> None:
        """From now on every write of this handle first checks that `lease` is still held
        (same app, host and pid), raising LeaseLost if another rollout took it; None stops
        checking. Used by rollout.lock.held for the block it guards."""
        ...

    # -- the point of no return (issue 13, point 6) ----------------------------------

    def tolerate_outage(self) -> None:
        """Say that a target is about to change: from now on this handle's writes must reach the
        ledger even if its database server goes away (PostgreSQL: retried, reconnecting, for about
        30 s in all, then spooled to a local file that the next command replays, rollout.ledger_spool),
        and `get`/`find` of the entries it wrote answer from what it knows. Before this call a lost
        server raises LedgerUnreachable (exit 5): nothing has changed yet. Idempotent. SQLite: nothing
        to do, a local file is never unreachable."""
        ...

    def writes_waiting(self) -> bool:
        """True while writes made after tolerate_outage wait for (or were spooled away from) a server
        that is not answering: the orchestrator moves no further batch then. SQLite: always False."""
        ...

    def outage_report(self) -> str | None:
        """One line for the user when writes made after tolerate_outage had to be spooled (or
        could not be): how many, to which file, and that the next command replays them; else None."""
        ...

    # -- leases (rollout.lock holds the policy: waiting, heartbeat) -----------------

    def leases(self, app: str | None = None) -> list[Lease]:
        """The leases held now, of one app or all, ordered by app."""
        ...

    def take_lease(self, app: str, lease_seconds: float) -> Lease | None:
        """Take the app's lease for this process (`default_actor()`, this host, this pid) for
        `lease_seconds` (wall-clock), if it is free or stale (`Lease.is_stale`); None when a
        live holder has it. Taking over a stale lease records a `lock:taken-over` event."""
        ...

    def renew_lease(self, lease: Lease, lease_seconds: float) -> bool:
        """Push our lease's expiry to now + lease_seconds; False when it is no longer ours."""
        ...

    def release_lease(self, lease: Lease) -> None:
        """Drop our lease; a lease another rollout has taken since is left alone."""
        ...

    def force_release(self, app: str) -> Lease | None:
        """Drop the app's lease whoever holds it (`rollout lock release`), recording
        `lock:released-by-hand`; return the lease dropped, None when there was none."""
        ...

    # -- build records (rollout.rebuild) ---------------------------------------------

    def record_build(self, build: PushedBuild) -> None:
        """Record a pushed build (a `build:pushed` event; its `at` is the event's time)."""
        ...

    def pushed_builds(self, app: str) -> list[PushedBuild]:
        """The app's pushed builds, oldest first."""
        ...

    def rebuilds(self, app: str, build_key: str | None = None, limit: int | None = None) -> list[Entry]:
        """The app's `rebuild` entries, newest first, only those with `build_key` when given."""
        ...

    def build_key_count(self, app: str) -> int:
        """How many distinct build keys the app's rebuild entries have (the tag's `{n}` counter)."""
        ...

    # -- the whole ledger, for `rollout ledger copy` (rollout.ledger_copy) ---------------

    def dump(self) -> Generator[tuple[str, dict[str, Any]], None, None]:
        """Every row of the history, as (table, {column: value}): the tables of COPIED_TABLES in
        that order, each ordered by id, every column as stored (ids, original timestamps, JSON
        text). Leases are not history and are left out. Read in one snapshot, so a rollout writing
        meanwhile cannot make entries and their events disagree; close the generator (or exhaust
        it) to end that read. Inside a `transaction()` of this handle it reads that transaction,
        its own writes included."""
        ...

    def load(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Insert another ledger's `dump()` rows as they are (same ids, same timestamps), in one
        transaction that first locks out other writers; then new ids continue after the largest
        copied one. The immutability triggers stay on (they refuse changes, not inserts).

        Raises LedgerError (exit 2), writing nothing, when this ledger already holds entries,
        target rows, events or leases, or when a row's table or columns are not this ledger's
        (see load_batches); the backend's database error when a row breaks a constraint.
        """
        ...


# What `dump()` yields and `load()` takes, in this order: referenced rows before referring ones.
COPIED_TABLES = ("entries", "targets", "events")
_LOAD_BATCH = 1000  # rows per executemany: bounded memory for a 1,000,000-entry ledger


def load_batches(rows: Iterable[tuple[str, dict[str, Any]]], columns: dict[str, list[str]],
                 size: int = _LOAD_BATCH) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """`dump()` rows grouped for executemany: (table, [values in `columns[table]` order]), at most
    `size` rows a batch, never mixing tables, in the order given.

    `columns` maps each table this ledger loads to its column names (read from the database).
    Raises LedgerError naming the table and columns when a row's table is not one of them or its
    columns differ (a ledger of another rollout version): nothing of such a row is written.
    """
    table, batch = None, []
    for name, row in rows:
        if name not in columns:
            raise LedgerError(f"cannot load rows of table {name!r}: a ledger copy holds only"
                              f" {', '.join(COPIED_TABLES)}")
        if set(row) != set(columns[name]):
            raise LedgerError(f"a {name} row has columns {sorted(row)}, this ledger's are {sorted(columns[name])}:"
                              " copy between ledgers of the same rollout version")
        if batch and (name != table or len(batch) >= size):
            yield table, batch  # type: ignore[misc]
            batch = []
        table = name
        batch.append(tuple(row[column] for column in columns[name]))
    if batch:
        yield table, batch  # type: ignore[misc]


class SqlReads(LedgerBackend):
    """The read queries both SQL backends share (LedgerBackend's contracts), written once with
    `?` placeholders: SqliteLedger runs them as they are, PostgresLedger turns `?` into `%s`
    (no query here holds a literal `?` or `%`). A backend provides `find`, `_rows` (dict rows)
    and `_one` (a dict row or None).
    """

    def get(self, entry_id: int) -> Entry:
        entry = self.find(entry_id)  # type: ignore[attr-defined]
        if entry is None:
            raise LedgerError(f"no ledger entry #{entry_id}: see `rollout history` for the ids")
        return entry

    def history(self, app: str | None = None, limit: int | None = None) -> list[Entry]:
        return self._newest_first({} if app is None else {"app": app}, limit)

    def current(self, app: str) -> Entry | None:
        """The app's newest healthy entry: what should be running now."""
        row = self._one("SELECT * FROM entries WHERE app = ? AND status = 'healthy' ORDER BY id DESC LIMIT 1", [app])
        return Entry.from_row(row) if row else None

    def healthy_ids(self, app: str, digest: str) -> frozenset[int]:
        rows = self._rows("SELECT id FROM entries WHERE app = ? AND digest = ? AND status = 'healthy'", [app, digest])
        return frozenset(int(row["id"]) for row in rows)

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

    def with_tag(self, app: str, tag: str) -> list[Entry]:
        """Every entry of `app` recorded with `tag`, whatever its kind and status, newest first."""
        return [Entry.from_row(row) for row in
                self._rows("SELECT * FROM entries WHERE app = ? AND tag = ? ORDER BY id DESC", [app, tag])]

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
        rows = self._rows("SELECT kind, status, COUNT(*) AS n FROM entries WHERE app = ? GROUP BY kind, status", [app])
        return {(row["kind"], row["status"]): int(row["n"]) for row in rows}

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

    def leases(self, app: str | None = None) -> list[Lease]:
        sql = "SELECT app, holder, host, pid, acquired_at, expires_at, heartbeat_at, token FROM locks"
        params: list[Any] = []
        if app is not None:
            sql += " WHERE app = ?"
            params.append(app)
        return [Lease(**row) for row in self._rows(sql + " ORDER BY app", params)]

    def rebuilds(self, app: str, build_key: str | None = None, limit: int | None = None) -> list[Entry]:
        equal = {"app": app, "kind": REBUILD}
        if build_key is not None:
            equal["build_key"] = build_key
        return self._newest_first(equal, limit)

    def build_key_count(self, app: str) -> int:
        row = self._one("SELECT COUNT(DISTINCT build_key) AS n FROM entries WHERE app = ? AND kind = ?", [app, REBUILD])
        return int(row["n"]) if row else 0

    def _newest_first(self, equal: dict[str, Any], limit: int | None) -> list[Entry]:
        """Entries whose columns equal `equal` (names from this module, never from input), newest first."""
        sql = "SELECT * FROM entries"
        if equal:
            sql += " WHERE " + " AND ".join(f"{column} = ?" for column in equal)
        params: list[Any] = list(equal.values())
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [Entry.from_row(row) for row in self._rows(sql, params)]


class SqliteLedger(SqlReads):
    """The ledger in one SQLite file (WAL mode, created 0600); every method is a short
    transaction so concurrent rollouts interleave safely. Method contracts: LedgerBackend.

    Opening creates or migrates the file (one transaction) and raises LedgerError for a
    file that is unreadable, foreign or of a newer schema, LedgerBusy when another process
    holds its write lock for over 30 s. `db` is the raw connection: for this module and
    for tests that must reach under the interface, never for other callers.
    """

    database_errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only:
            self.db = _connect_read_only(self.path)
        else:
            self.db = _connect(self.path)
            _ensure_schema(self.db, self.path)
        # Run inside every write transaction, under SQLite's write lock: guard_writes installs
        # one that refuses the write once another rollout has taken the app's lease.
        self._guard: Callable[[sqlite3.Connection], None] | None = None

    def now(self) -> float:
        # One machine, one clock: the holders of a SQLite ledger's leases share it.
        return time.time()

    def reopen(self) -> "SqliteLedger":
        # sqlite3 connections are not for concurrent use: another thread needs its own.
        return type(self)(self.path)

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
        faults.kill_point("recorded")
        return self.get(entry_id)

    def set_status(self, entry_id: int, status: str, error: str | None = None) -> None:
        finished_at = now_iso() if status in FINISHED else None
        with self.transaction():
            self.db.execute(
                "UPDATE entries SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                [status, finished_at, error, entry_id],
            )
            self._event(entry_id, f"status:{status}", {"error": error} if error else {})
        faults.kill_point(f"status:{status}")

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
        faults.kill_point(f"target:{outcome}")

    def event(self, entry_id: int | None, event: str, detail: dict[str, Any] | None = None) -> None:
        with self.transaction():
            self._event(entry_id, event, detail or {})
        faults.kill_point(event)

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
        # Yields the sqlite3 connection: for this module and tests only (LedgerBackend says object).
        return _Transaction(self.db, self._guard)

    def check_guard(self) -> None:
        """Raise what the next write would (LeaseLost once the app's lock is lost), writing nothing."""
        with self.transaction():
            pass

    def tolerate_outage(self) -> None:
        pass  # a local file is never unreachable: a failed write is an error, as always

    def writes_waiting(self) -> bool:
        return False

    def outage_report(self) -> str | None:
        return None

    def guard_writes(self, lease: Lease | None) -> None:
        self._guard = None if lease is None else _still_held(lease)

    # -- reading -------------------------------------------------------------

    def find(self, entry_id: int) -> Entry | None:
        row = self._one("SELECT * FROM entries WHERE id = ?", [entry_id])
        return Entry.from_row(row) if row else None

    # -- leases ----------------------------------------------------------------

    def take_lease(self, app: str, lease_seconds: float) -> Lease | None:
        now = time.time()
        # BEGIN IMMEDIATE: the read and the write below are one step no other rollout can split.
        with self.transaction():
            held = self.leases(app)
            if held and not held[0].is_stale(now):
                return None
            if held:
                self._event(None, "lock:taken-over", {"app": app, "from": held[0].holder, "pid": held[0].pid})
            started = now_iso()
            lease = Lease(app, default_actor(), socket.gethostname(), os.getpid(), started, now + lease_seconds, started,
                          new_lease_token())
            self.db.execute(
                "INSERT OR REPLACE INTO locks (app, holder, host, pid, acquired_at, expires_at, heartbeat_at, token)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [lease.app, lease.holder, lease.host, lease.pid, lease.acquired_at, lease.expires_at, lease.heartbeat_at,
                 lease.token],
            )
        return lease

    def renew_lease(self, lease: Lease, lease_seconds: float) -> bool:
        with self.transaction():
            where, params = lease.matches()
            cursor = self.db.execute(f"UPDATE locks SET expires_at = ?, heartbeat_at = ? WHERE {where}",
                                     [time.time() + lease_seconds, now_iso(), *params])
        return cursor.rowcount == 1

    def release_lease(self, lease: Lease) -> None:
        with self.transaction():
            where, params = lease.matches()
            self.db.execute(f"DELETE FROM locks WHERE {where}", params)

    def force_release(self, app: str) -> Lease | None:
        with self.transaction():
            held = self.leases(app)
            self.db.execute("DELETE FROM locks WHERE app = ?", [app])
            if held:
                self._event(None, "lock:released-by-hand", {"app": app, "holder": held[0].holder, "pid": held[0].pid})
        return held[0] if held else None

    # -- build records -----------------------------------------------------------

    def record_build(self, build: PushedBuild) -> None:
        self.event(None, BUILD_PUSHED, {k: v for k, v in asdict(build).items() if k != "at"})

    def pushed_builds(self, app: str) -> list[PushedBuild]:
        # Build events carry the app in their JSON detail, not in a column (schema 2): filter here.
        builds = []
        for row in self._rows("SELECT at, detail FROM events WHERE entry_id IS NULL AND event = ? ORDER BY id",
                              [BUILD_PUSHED]):
            values = json.loads(row["detail"])
            if values.get("app") == app:
                builds.append(PushedBuild(at=row["at"], **{name: values[name] for name in (
                    "app", "repository", "tag", "digest", "build_key", "base_digests", "deploy")}))
        return builds

    # -- the whole ledger (rollout.ledger_copy) ------------------------------------

    def dump(self) -> Generator[tuple[str, dict[str, Any]], None, None]:
        # A deferred BEGIN: in WAL mode the first SELECT fixes one snapshot for all three tables,
        # without taking the write lock (rollouts keep running while a copy reads).
        outermost = not self.db.in_transaction
        if outermost:
            self.db.execute("BEGIN")
        try:
            for table in COPIED_TABLES:
                cursor = self.db.execute(f"SELECT * FROM {table} ORDER BY id")
                names = [c[0] for c in cursor.description]
                for values in cursor:  # row by row: a large ledger is never all in memory
                    yield table, dict(zip(names, values))
        finally:
            if outermost and self.db.in_transaction:
                self.db.execute("COMMIT")

    def load(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> None:
        # BEGIN IMMEDIATE (transaction()) holds the write lock from the emptiness check to the
        # last insert. AUTOINCREMENT needs no help: SQLite raises sqlite_sequence to the largest
        # id inserted, so the next entry gets max + 1.
        with self.transaction():
            held = [table for table in (*COPIED_TABLES, "locks")
                    if self.db.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]]
            if held:
                raise LedgerError(f"ledger {self.path} is not empty (it holds {', '.join(held)}):"
                                  " copy into a new file or an empty database")
            columns = {table: [row[1] for row in self.db.execute(f"PRAGMA table_info({table})")]
                       for table in COPIED_TABLES}
            for table, batch in load_batches(rows, columns):
                names = columns[table]
                self.db.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                                    batch)

    # -- helpers ---------------------------------------------------------------

    def _rows(self, sql: str, params: list[Any]) -> Iterator[dict[str, Any]]:
        cursor = self.db.execute(sql, params)
        columns = [c[0] for c in cursor.description]
        for values in cursor.fetchall():
            yield dict(zip(columns, values))

    def _one(self, sql: str, params: list[Any]) -> dict[str, Any] | None:
        return next(iter(self._rows(sql, params)), None)


# The name callers construct (`Ledger(path)`): the SQLite backend, the embedded default.
Ledger = SqliteLedger


def open_ledger(location: str | os.PathLike[str], state_dir: str | os.PathLike[str] | None = None, *,
                read_only: bool = False) -> LedgerBackend:
    """The ledger at `location`: a `postgresql://` (or `postgres://`) URL opens the PostgreSQL
    backend (rollout.ledger_postgres), anything else is a SQLite file path (created if missing).

    `state_dir` (PostgreSQL only): the config's state directory, where writes the server could
    not take after a target changed are spooled, and from where opening replays them first
    (rollout.ledger_spool); None: no spool (such writes are reported lost).
    `read_only` (plans, a promotion's source: they write nothing): a SQLite file is opened with
    mode=ro and never created or migrated (a missing file is an empty ledger in memory); a
    PostgreSQL ledger gets no state_dir, so no spooled write is replayed.
    The one place a backend is chosen. Raises LedgerError / LedgerBusy (see SqliteLedger),
    LedgerUnreachable (exit 5) when a PostgreSQL server cannot be reached.
    """
    if is_url(location):
        # Imported here: psycopg's import costs every SQLite user start-up time.
        from rollout.ledger_postgres import PostgresLedger

        return PostgresLedger(location, None if read_only else state_dir)
    return SqliteLedger(location, read_only=read_only)


def _still_held(lease: Lease) -> Callable[[sqlite3.Connection], None]:
    def guard(conn: sqlite3.Connection) -> None:
        where, params = lease.matches()
        row = conn.execute(f"SELECT 1 FROM locks WHERE {where}", params).fetchone()
        if row is None:
            raise LeaseLost(f"another rollout took over the lock on {lease.app} while this one ran:"
                            f" stopped without changing anything more; it now decides what {lease.app} runs"
                            f" (see `rollout status {lease.app}`)")
    return guard


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


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """path opened read-only (SQLite URI mode=ro: no file, -wal or directory is created and nothing
    is migrated); a missing file is an empty ledger in memory. Raises LedgerError for a file that
    cannot be read or whose schema is not this rollout's (a writing command migrates it)."""
    if not path.exists():
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        _ensure_schema(conn, path)
        return conn
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT,
                               isolation_level=None, check_same_thread=False)
        version = _schema_version(conn)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read ledger {path}: {one_line(exc)}: check the path and its permissions") from exc
    if version != SCHEMA_VERSION:
        conn.close()
        raise LedgerError(f"ledger {path} has schema version {version}, not {SCHEMA_VERSION}: a read-only command"
                          " does not migrate it; run `rollout status` once (it does), then again")
    return conn


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