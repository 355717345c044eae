"""`rollout ledger copy --to DEST`: the whole ledger into another one, SQLite or PostgreSQL,
either way (issue 13): moving a team from one machine's file to a shared server, or back.

What is copied: every entry, target row and event (build records are events) with its id and
original timestamps, so `#12` names the same entry on both ends and history reads the same.
Leases are not copied: a lease belongs to a running process on the old ledger, and the copy
starts with every app unlocked.

How it is checked: both ends are read through `LedgerBackend.dump()` (tables in
COPIED_TABLES order, rows by id) and fingerprinted the same way: rows per table, and the
SHA-256 of each row's canonical JSON (`[table, row]`, keys sorted, no spaces) in that order.
The destination is re-read inside the same transaction that wrote it; when anything differs
the transaction is rolled back, so the destination is left empty and the command fails.

Refusals, each before anything is written:
- a destination that holds anything (LedgerBackend.load raises LedgerError, exit 2): a copy
  never merges two histories;
- a source in the middle of a rollout (a held lease, or an unfinished entry: SourceBusy,
  exit 4). Its unfinished entry would be copied as unfinished and recovered on the
  destination while the real rollout still runs on the source. The source is read in one
  snapshot, and an unfinished entry seen in that snapshot (a rollout that started after the
  first check) refuses the copy too. A rollout that starts after the snapshot writes only to
  the old ledger: copy, then point the config at the new one before deploying again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from rollout.errors import EXIT_INTERNAL, EXIT_LOCKED, LedgerError, RolloutError, one_line
from rollout.ledger import COPIED_TABLES, IN_PROGRESS, LedgerBackend, open_ledger
from rollout.ledger_url import is_url, looks_like_conninfo, redact


class SourceBusy(RolloutError):
    """The source ledger is in the middle of a rollout (a held lease or an unfinished entry);
    exit 4, nothing written. The message names the app and the holder or the entry."""

    exit_code = EXIT_LOCKED


class CopyNotVerified(RolloutError):
    """The destination did not read back what was written (rows per table or content hash
    differ, or a backend dumped rows out of order): a bug; the copy was rolled back, exit 70."""

    exit_code = EXIT_INTERNAL


class Fingerprint:
    """Rows per table and the SHA-256 of their canonical JSON, fed in dump order.

    Enforces that order (COPIED_TABLES, then ascending id) instead of assuming it, since two
    ledgers holding the same rows in another order would otherwise hash differently.
    Raises CopyNotVerified for a row out of order.
    """

    def __init__(self) -> None:
        self.rows = {table: 0 for table in COPIED_TABLES}
        self._hash = hashlib.sha256()
        self._last: tuple[int, int] | None = None

    def add(self, table: str, row: dict[str, Any]) -> None:
        """Count and hash one (table, row) of a dump."""
        if table not in self.rows:
            raise CopyNotVerified(f"a ledger dump yielded rows of table {table!r}, not one of"
                                  f" {', '.join(COPIED_TABLES)}: please report it")
        position = (COPIED_TABLES.index(table), row["id"])
        if self._last is not None and position <= self._last:
            raise CopyNotVerified(f"a ledger dump yielded {table} #{row['id']} out of order: please report it")
        self._last = position
        self.rows[table] += 1
        self._hash.update(json.dumps([table, row], sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode() + b"\n")

    def tee(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
        """Pass `rows` through unchanged, adding each on the way."""
        for table, row in rows:
            self.add(table, row)
            yield table, row

    @property
    def sha256(self) -> str:
        """`sha256:` + the hex digest of the rows added so far."""
        return "sha256:" + self._hash.hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fingerprint) and (self.rows, self.sha256) == (other.rows, other.sha256)

    __hash__ = None  # type: ignore[assignment]  # mutable


@dataclass(frozen=True)
class Side:
    """One end of a copy: its ledger (a file path, or a URL with the password masked), rows per
    table (COPIED_TABLES) and content hash (`sha256:HEX`, see Fingerprint)."""

    ledger: str
    rows: dict[str, int]
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """{ledger, rows: {entries, targets, events}, sha256}."""
        return {"ledger": self.ledger, "rows": dict(self.rows), "sha256": self.sha256}


@dataclass(frozen=True)
class CopyResult:
    """A verified copy: both ends' fingerprints (equal, or the copy would have been rolled back)."""

    source: Side
    destination: Side

    def to_json(self) -> dict[str, Any]:
        """What `rollout ledger copy --json` prints: {source: Side, destination: Side, leases_copied: 0}."""
        return {"source": self.source.to_json(), "destination": self.destination.to_json(), "leases_copied": 0}


def copy_ledger(source_location: str | Path, destination: str, state_dir: str | Path | None = None) -> CopyResult:
    """Copy the ledger at `source_location` (Config.ledger_location: a SQLite path or a
    postgresql:// URL) whole into `destination` (a postgresql:// URL, or a SQLite file path,
    created if missing), and verify it. `state_dir`: the config's state directory, so that a
    PostgreSQL source first replays writes spooled there during an outage (open_ledger); the
    copy itself never spools (it is one transaction: it commits whole or not at all).

    Raises LedgerError (exit 2: a missing source file, a destination that is not a ledger
    location, is the source itself, or is not empty; a database error while copying, e.g. a
    PostgreSQL role without the rights the copy needs), SourceBusy (exit 4), LedgerUnreachable
    (exit 5, a PostgreSQL server down), CopyNotVerified (exit 70); nothing is written to the
    destination in any of these cases (a new SQLite file may be left created and empty).
    """
    target = _destination(destination)
    source_name, target_name = _name(source_location), _name(target)
    if not is_url(source_location) and not Path(source_location).exists():
        raise LedgerError(f"ledger {source_name} does not exist, so there is nothing to copy: check [ledger] in"
                          " rollout.toml, $ROLLOUT_LEDGER_URL and $ROLLOUT_LEDGER")
    if _same(source_location, target):
        raise LedgerError(f"--to {target_name} is the configured ledger itself: name another file or database")
    source = open_ledger(source_location, state_dir)
    try:
        refuse_busy(source)
        copy_to = open_ledger(target)
        try:
            read, written = copy(source, copy_to)
        except (*source.database_errors, *copy_to.database_errors) as exc:
            # The destination's transaction was rolled back. The usual cause on PostgreSQL: a role
            # that does not own the tables (moving the id sequences takes the owner's UPDATE on them).
            raise LedgerError(f"copying into {target_name} failed ({redact(one_line(exc))}): nothing was written"
                              " there; on PostgreSQL run the copy as the role that owns the ledger's tables,"
                              " then retry") from None
        finally:
            copy_to.close()
    finally:
        source.close()
    return CopyResult(Side(source_name, read.rows, read.sha256), Side(target_name, written.rows, written.sha256))


def refuse_busy(source: LedgerBackend) -> None:
    """Raise SourceBusy (exit 4) when a lease is held on `source` (naming app and holder) or an
    entry is unfinished (naming it): a rollout is running or was cut short there."""
    leases = source.leases()
    if leases:
        lease = leases[0]
        raise SourceBusy(f"{lease.app} is locked by {lease.describe()}: copy the ledger when no rollout runs"
                         f" (if that holder is gone: `rollout lock release {lease.app}`)")
    unfinished = source.unfinished()
    if unfinished:
        raise _unfinished(unfinished[0].id, unfinished[0].app)


def copy(source: LedgerBackend, destination: LedgerBackend) -> tuple[Fingerprint, Fingerprint]:
    """Load `source.dump()` into `destination` and read it back, in one destination transaction
    rolled back unless both fingerprints match; return (what was read, what was written).

    Backend-neutral: only LedgerBackend methods. Raises what `destination.load` raises
    (LedgerError for a non-empty destination), SourceBusy for an unfinished entry in the
    source's snapshot, CopyNotVerified when the ends differ.
    """
    read, written = Fingerprint(), Fingerprint()
    rows = source.dump()
    try:
        with destination.transaction():
            destination.load(read.tee(_finished_only(rows)))
            for table, row in destination.dump():
                written.add(table, row)
            if read != written:
                raise CopyNotVerified(
                    f"the copy does not read back as its source (source {_counts(read)} {read.sha256},"
                    f" copy {_counts(written)} {written.sha256}): it was rolled back, the destination is"
                    " left empty; please report it")
    finally:
        rows.close()
    return read, written


def _finished_only(rows: Iterable[tuple[str, dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    # refuse_busy looked before the snapshot; a rollout may have recorded an entry in between.
    for table, row in rows:
        if table == "entries" and row["status"] in IN_PROGRESS:
            raise _unfinished(row["id"], row["app"])
        yield table, row


def _unfinished(entry_id: int, app: str) -> SourceBusy:
    return SourceBusy(f"entry #{entry_id} of {app} is unfinished: a rollout of {app} is running or was cut short;"
                      f" let it finish (or `rollout status {app}` recover it), then copy")


def _destination(text: str) -> str | Path:
    if is_url(text):
        return text
    if "://" in text:
        # Not echoed: a URL of another scheme may carry a password redact() does not know.
        raise LedgerError(f"--to names a {text.split('://', 1)[0]}:// URL: a ledger is a postgresql:// URL"
                          " or a SQLite file path")
    if not text.strip():
        raise LedgerError("--to is empty: give a postgresql:// URL or a SQLite file path")
    if looks_like_conninfo(text):
        # Not echoed, and never a file name: a key=value string carries its password in the clear.
        raise LedgerError("--to is a libpq key=value string: give the PostgreSQL ledger as a postgresql:// URL"
                          " (the password in ~/.pgpass or $PGPASSWORD), or a SQLite file path")
    return Path(text).expanduser()


def _same(source: str | Path, target: str | Path) -> bool:
    if is_url(source) or is_url(target):
        return source == target
    return Path(source).resolve() == Path(target).resolve()


def _name(location: str | Path) -> str:
    return redact(location) if isinstance(location, str) else str(location)


def _counts(fingerprint: Fingerprint) -> str:
    return ", ".join(f"{count} {table}" for table, count in fingerprint.rows.items())
