"""The PostgreSQL ledger's server going away after a target changed (issue 13, point 6).

rollout.ledger_postgres speaks SQL to the server; this module is what a PostgresLedger does once
the orchestrator has called `tolerate_outage` (just before a target's first apply) and the server
stops answering: the rollout must finish (verify, revert) and what it did must reach the ledger.

- A write the server did not take is kept, with the time it was made, in `Outage.backlog` (one
  `Group` per ledger transaction, in order). While the backlog is not empty every later write joins
  it, each first trying once, with a short connect timeout, to get the backlog in (`Outage.flush`):
  targets are never held up by the ledger.
- A flush replays the backlog in one transaction (`replay_one`: a write to an entry another runner
  finished meanwhile becomes a `spool:late-outcome` event on it). A COMMIT whose answer never came
  (the connection dropped, or a signal arrived while it was in flight) is settled by PostgreSQL's
  `txid_status`, never guessed: its transaction id is on record (`Outage.tries`, `Group.unconfirmed`)
  before the COMMIT is sent and dropped only once its answer is known, so no write lands twice.
- After RETRY_SECONDS, or at close, the backlog goes to the spool (rollout.ledger_spool) and every
  later write follows it; the next handle opened with that state directory replays the spool first
  (`replay_spool`), under the spool's flock.
- `record` needs an id at once (the orchestrator names the revert to the user, in notifications and
  on the target as `Release.entry_id`). `tolerate_outage` is called while the server is known to
  answer, so it reserves one id from the entries' sequence then (`Outage.reserved`): the one record
  that can follow the point of no return is the automatic revert's (a recovery's revert is recorded
  before it). Only a record with no reservation left gets a negative placeholder id, mapped to a real
  one when it reaches the ledger (`Story.ids`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import psycopg

from rollout.errors import LedgerError, LedgerUnreachable, one_line
from rollout.ledger import FINISHED
from rollout.ledger_spool import VERSION as SPOOL_VERSION
from rollout.ledger_url import redact

if TYPE_CHECKING:
    from rollout.ledger_postgres import PostgresLedger

# A write as a function of (connection, LedgerBackend arguments by name, when it was made or None
# for the server's clock): rollout.ledger_postgres's _WRITES, by op name.
Write = Callable[[psycopg.Connection[Any], dict[str, Any], "str | None"], Any]

# Seconds spent retrying writes, in all, before they go to the spool (issue 13: bounded retries,
# then a local spool), and the pause between reconnection attempts.
RETRY_SECONDS = 30.0
RETRY_PAUSE = 1.0
QUICK_CONNECT = 2  # seconds: the one reconnection a write tries before the rollout moves on
# SQLSTATE classes of a connection that is gone: 08 connection exception, 57P admin/crash shutdown.
GONE_STATES = ("08", "57P")
ENTRY_REFERENCES = ("entry_id", "previous_id", "reverts_to")
LATE_OUTCOME, REPLAYED = "spool:late-outcome", "spool:replayed"
# What a replayed `record` is compared on with an entry already under its id (not created_at: a
# record the server took at once has the server's time, its retry the client's).
_RECORD_IDENTITY = ("app", "repository", "tag", "digest", "kind", "previous_id", "reverts_to", "actor", "reason",
                    "build_key")


def gone(conn: psycopg.Connection[Any], exc: BaseException) -> bool:
    """Whether exc says the server, or our connection to it, is gone (not that a statement was refused).
    An OperationalError without SQLSTATE counts as gone even if the connection is in fact alive."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return conn.closed or conn.broken or state is None or state.startswith(GONE_STATES)


def rollback(conn: psycopg.Connection[Any]) -> None:
    """ROLLBACK, ignoring a connection that is gone (the server rolled the transaction back itself)."""
    try:
        conn.execute("ROLLBACK")
    except psycopg.OperationalError:
        pass


@dataclass
class Story:
    """How one writer's delayed writes landed: placeholder ids given their real ids, entries whose
    writes became `spool:late-outcome` events (another runner had finished them), entries this
    writer finished itself, and the last spool line replayed (`through`, its `seq`).
    Kept as the detail of a `spool:replayed` ledger event, so a later replay continues it."""

    ids: dict[int, int] = field(default_factory=dict)
    diverted: dict[int, int] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    through: int = 0

    def real(self, entry_id: int | None) -> int | None:
        """The id the ledger knows entry_id by (a placeholder mapped, else as given)."""
        return self.ids.get(entry_id, entry_id) if entry_id is not None else None

    def resolved(self, args: dict[str, Any]) -> dict[str, Any]:
        """args with every entry reference that is a mapped placeholder replaced by its real id."""
        return {name: self.real(value) if name in ENTRY_REFERENCES else value for name, value in args.items()}

    def copy(self) -> "Story":
        """An independent copy, for a replay that may be rolled back: the original stays as it was."""
        return Story(dict(self.ids), dict(self.diverted), set(self.finished), self.through)

    def to_json(self) -> dict[str, Any]:
        """The story as JSON-ready values (int keys as strings): the `spool:replayed` event's detail."""
        return {"ids": {str(k): v for k, v in self.ids.items()}, "through": self.through,
                "diverted": {str(k): v for k, v in self.diverted.items()}, "finished": sorted(self.finished)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "Story":
        """The story to_json wrote (missing keys: empty)."""
        return cls({int(k): v for k, v in value.get("ids", {}).items()},
                   {int(k): v for k, v in value.get("diverted", {}).items()},
                   set(value.get("finished", [])), int(value.get("through", 0)))


def replay_one(conn: psycopg.Connection[Any], writes: Mapping[str, Write], op: str, args: dict[str, Any], at: str,
               story: Story) -> None:
    """Apply one delayed write (retried or spooled) as of `at`, unguarded: it was made under our lease.

    Conflicts are not errors: a write to an entry another runner has finished meanwhile (a recovery
    marked it interrupted) and every later write of an entry recorded as its answer (the automatic
    revert) become `spool:late-outcome` events on that entry, so the true outcome is on record
    without changing a finished entry or recording a healthy entry after the other runner's.
    """
    if op == "record":
        written, previous = args.get("id"), args.get("previous_id")
        if previous is not None and previous in story.diverted:
            if written is not None:
                story.diverted[written] = story.diverted[previous]
            _late(conn, writes, story.diverted[previous], op, args, at)
            return
        pinned = written
        if written is not None and written < 0:
            # Its id is taken from the sequence first and kept even if this transaction is lost
            # (a sequence never hands a value out twice), so later writes and a spool name it for good.
            pinned = story.ids.get(written) or conn.execute(
                "SELECT nextval(pg_get_serial_sequence('entries', 'id')) AS id").fetchone()["id"]
            story.ids[written] = pinned
        writes["record"](conn, {**story.resolved(args), "id": pinned}, at)
        return
    written = args.get("entry_id")
    if op != "release_lease" and written is not None:
        if written not in story.diverted:
            real = story.real(written)
            row = conn.execute("SELECT status FROM entries WHERE id = %s FOR UPDATE", [real]).fetchone()
            if row is not None and row["status"] in FINISHED and real not in story.finished:
                story.diverted[written] = real
        if written in story.diverted:
            _late(conn, writes, story.diverted[written], op, args, at)
            return
        if op == "set_status" and args["status"] in FINISHED:
            story.finished.add(story.real(written))
    writes[op](conn, story.resolved(args), at)


def _late(conn: psycopg.Connection[Any], writes: Mapping[str, Write], entry_id: int, op: str, args: dict[str, Any],
          at: str) -> None:
    detail = {name: value for name, value in args.items() if name not in ("entry_id", "id")}
    writes["event"](conn, {"entry_id": entry_id, "event": LATE_OUTCOME, "detail": {"write": op, **detail}}, at)


def committed(conn: psycopg.Connection[Any], xids: list[int], first: dict[str, Any] | None = None) -> bool:
    """Whether a group of writes is in the ledger already: one of the transactions `xids`
    (txid_current()) committed, `txid_status` being PostgreSQL's answer to a COMMIT whose reply was
    lost; or its `first` write (a spool line or backlog write: {"op", "args", ...}) is a `record`
    whose id, taken from the sequence before it was sent, is in the ledger with the same content (a
    transaction is all or nothing, so the rest of the group is in too). Raises Undecided while
    one of xids is still in progress."""
    for xid in xids:
        status = conn.execute("SELECT txid_status(%s) AS status", [xid]).fetchone()["status"]
        if status == "committed":
            return True
        if status == "in progress":
            raise Undecided(f"transaction {xid} is still committing")
    if first is not None and first["op"] == "record" and (first["args"].get("id") or 0) > 0:
        args = first["args"]
        row = conn.execute("SELECT * FROM entries WHERE id = %s", [args["id"]]).fetchone()
        if row is not None:
            base = args.get("base_digests")
            wanted = {**args, "base_digests": json.dumps(base, sort_keys=True) if base is not None else None}
            # Another content under that id is a conflict: left to fail (and be reported) by the insert.
            return all(row[name] == wanted.get(name) for name in (*_RECORD_IDENTITY, "base_digests"))
    return False  # aborted, or so old the server no longer knows (NULL): replayed rather than lost


class Undecided(Exception):
    """An earlier try's COMMIT is still in progress on the server: ask again later."""


@dataclass(eq=False)  # compared by identity: Outage.tries names the very groups a try held
class Group:
    """The writes of one transaction the server did not take ({"op", "at", "args"} each), and the
    ids (txid_current()) of tries of them whose COMMIT got no answer: if one committed, the group
    is in already."""

    writes: list[dict[str, Any]]
    unconfirmed: list[int]


@dataclass
class Outage:
    """A PostgresLedger's state once a target is about to change (PostgresLedger.tolerate_outage).

    Writes the server did not take wait in `backlog`, in order; while it is not empty every later
    write joins it (the ledger must not see them out of order), each first trying once to get the
    backlog in (flush). `since`: monotonic time the backlog started; RETRY_SECONDS later, or at
    close, it goes to the spool, and so does every later write (`spooling`). `writes`: the SQL of
    each write, by op (rollout.ledger_postgres).
    """

    ledger: "PostgresLedger"
    writes: Mapping[str, Write]
    reserved: int | None = None  # an entry id taken from the sequence for the next record
    writer: str = field(default_factory=lambda: uuid.uuid4().hex)
    since: float | None = None
    spooling: bool = False
    backlog: list[Group] = field(default_factory=list)
    # Flushes whose COMMIT was sent and not (yet) known to have landed: xid -> (story, groups it held).
    tries: dict[int, tuple[Story, list[Group]]] = field(default_factory=dict)
    story: Story = field(default_factory=Story)
    seq: int = 0
    txn: int = 0
    last_placeholder: int = 0
    spooled: int = 0
    lost: int = 0
    lost_reason: str = ""

    def new_id(self) -> int:
        """The id for an entry recorded now: the reserved one while it lasts, else a new negative
        placeholder (the server gives the real one when the record reaches it)."""
        if self.reserved is not None:
            reserved, self.reserved = self.reserved, None
            return reserved
        self.last_placeholder -= 1
        return self.last_placeholder

    def waiting(self) -> bool:
        """Whether writes wait for the server or were spooled away from it."""
        return self.spooling or bool(self.backlog)

    def report(self) -> str | None:
        """One line for the user when writes had to be spooled or were lost; else None."""
        if not (self.spooled or self.lost):
            return None
        ledger = self.ledger
        said = f"ledger {ledger.location} was unreachable after targets changed:"
        if self.spooled and ledger._spool is not None:
            said += (f" {self.spooled} write(s) spooled to {ledger._spool.path}; the next rollout command"
                     " that opens this ledger with this config replays them")
        if self.lost:
            said += (f"{';' if self.spooled else ''} {self.lost} write(s) could not be spooled ({self.lost_reason})"
                     " and are lost: compare `rollout history` with what the targets run")
        return said

    def defer(self, writes: list[dict[str, Any]], unconfirmed: list[int]) -> None:
        """Keep a transaction's writes the server did not take, behind those already waiting;
        spooled at once when the retry budget is spent already."""
        self.backlog.append(Group(writes, unconfirmed))
        if self.since is None:
            self.since = time.monotonic()
        if self.spooling:
            self.flush(wait=False)

    def flush(self, *, wait: bool) -> None:
        """Get the waiting writes into the ledger: reconnect and apply them all in one transaction
        (unguarded: they were made under our lease, which may have lapsed only because the server
        was away; conflicts as replay_one says). `wait` False: one try, with a short connect
        timeout, so targets are never held up by the ledger; True (at close): try again every
        RETRY_PAUSE s. Once the backlog is RETRY_SECONDS old it is spooled instead."""
        ledger = self.ledger
        while self.backlog:
            left = RETRY_SECONDS - (time.monotonic() - (self.since or time.monotonic()))
            if self.spooling or left <= 0:
                self.spooling = True
                self.spool_backlog()
                return
            story, xid = self.story.copy(), None
            try:
                conn = ledger._live(timeout=int(left) + 1 if wait else QUICK_CONNECT)
                self.drop_committed(conn)
                conn.execute("BEGIN")
                xid = conn.execute("SELECT txid_current() AS xid").fetchone()["xid"]
                groups = list(self.backlog)
                for group in groups:
                    if not committed(conn, group.unconfirmed, group.writes[0] if group.writes else None):
                        for write in group.writes:
                            replay_one(conn, self.writes, write["op"], write["args"], write["at"], story)
                # On record before COMMIT is sent, dropped only once the backlog is cleared: a signal
                # during the COMMIT or right after it leaves this try to txid_status, not to a second replay.
                self.tries[xid] = (story, groups)
                conn.execute("COMMIT")
                self.story, self.since = story, None
                self.backlog = [group for group in self.backlog if group not in groups]
                self.tries.clear()
                return
            except (LedgerUnreachable, psycopg.Error, Undecided) as exc:
                rollback(ledger.conn)
                self.story.ids.update(story.ids)  # ids taken from the sequence are theirs for good
                if isinstance(exc, psycopg.Error) and not gone(ledger.conn, exc):
                    # Refused, not lost (a bug, a changed schema): kept in the spool, whose replay
                    # by the next command says why, rather than dropped or retried for nothing.
                    self.tries.pop(xid, None)  # refused: that COMMIT did not commit
                    self.spooling = True
                    continue
                if xid is not None and xid not in self.tries:
                    self.tries[xid] = (story, list(self.backlog))  # it may have committed nothing: harmless
                if not wait:
                    return
                time.sleep(min(RETRY_PAUSE, max(0.0, left)))  # waiting for the server to come back

    def drop_committed(self, conn: psycopg.Connection[Any]) -> None:
        """Drop the waiting groups an earlier flush got in after all (its COMMIT unanswered)."""
        for xid, (story, groups) in list(self.tries.items()):
            if committed(conn, [xid]):
                self.story = story
                self.backlog = [group for group in self.backlog if group not in groups]
                break
        self.tries.clear()

    def spool_backlog(self) -> None:
        """Append the backlog to the spool (or count it lost, saying why) and empty it."""
        spool = self.ledger._spool
        lines = []
        for group in self.backlog:
            self.txn += 1
            unless = group.unconfirmed + [xid for xid, (_, groups) in self.tries.items() if group in groups]
            for write in group.writes:
                self.seq += 1
                lines.append({"v": SPOOL_VERSION, "writer": self.writer, "seq": self.seq, "txn": self.txn,
                              "unless_committed": unless, "op": write["op"], "at": write["at"],
                              "args": {**self.story.resolved(write["args"]),
                                       **({"id": self.story.real(write["args"]["id"])}
                                          if write["op"] == "record" else {})}})
        self.backlog = []
        self.tries.clear()
        if spool is None:
            self.lost, self.lost_reason = self.lost + len(lines), "this handle has no state directory to spool to"
            return
        try:
            spool.append(lines)
            self.spooled += len(lines)
        except OSError as exc:
            self.lost, self.lost_reason = self.lost + len(lines), f"{spool.path}: {one_line(exc)}"


def replay_spool(ledger: "PostgresLedger", writes: Mapping[str, Write]) -> None:
    """Replay the writes an earlier command spooled for this ledger, in one transaction, before
    anything else (see rollout.ledger_spool); the file is removed once they are in. Raises
    LedgerError (exit 2) naming the file when the server refuses them."""
    spool = ledger._spool
    assert spool is not None
    try:
        with spool.claimed() as lines:
            if lines:
                with ledger.transaction() as conn:
                    _replay_lines(conn, writes, lines, spool.path.name)
    except (psycopg.Error, Undecided) as exc:
        raise LedgerError(f"the ledger writes spooled in {spool.path} cannot be replayed into"
                          f" {ledger.location} ({redact(one_line(exc))}): retry in a moment; if it persists,"
                          " move the file away and record its content by hand") from None


def _replay_lines(conn: psycopg.Connection[Any], writes: Mapping[str, Write], lines: list[dict[str, Any]],
                  spool_name: str) -> None:
    stories: dict[str, Story] = {}
    replayed: dict[str, int] = {}
    skip: dict[tuple[str, int], bool] = {}
    for line in lines:
        writer = line["writer"]
        if writer not in stories:
            row = conn.execute("SELECT detail FROM events WHERE entry_id IS NULL AND event = %s"
                               " AND (detail::jsonb ->> 'writer') = %s ORDER BY id DESC LIMIT 1",
                               [REPLAYED, writer]).fetchone()
            stories[writer] = Story.from_json(json.loads(row["detail"])) if row else Story()
        story = stories[writer]
        if line["seq"] <= story.through:
            continue  # an earlier replay got it in (and died before removing the file)
        group = (writer, line["txn"])
        if group not in skip:
            skip[group] = committed(conn, line.get("unless_committed") or [], line)
        if not skip[group]:
            replay_one(conn, writes, line["op"], line["args"], line["at"], story)
            replayed[writer] = replayed.get(writer, 0) + 1
        story.through = line["seq"]
    for writer, count in replayed.items():
        writes["event"](conn, {"entry_id": None, "event": REPLAYED, "detail": {
            "writer": writer, "writes": count, "spool": spool_name, **stories[writer].to_json()}}, None)


__all__ = ["Outage", "Group", "Story", "Undecided", "committed", "gone", "replay_one", "replay_spool", "rollback",
           "RETRY_SECONDS", "LATE_OUTCOME", "REPLAYED"]
