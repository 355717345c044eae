"""One rollout per app at a time: leases stored in the ledger.

A lease names its holder (user@host, pid) and expires unless a heartbeat renews
it, so a holder killed with SIGKILL blocks others for at most one lease period,
and not at all on the same host, where a dead pid is noticed at once.

This module holds the policy (waiting, the heartbeat thread, the write guard's
lifetime); the lease rows themselves are read and written only through the ledger
(`LedgerBackend.leases`, `take_lease`, `renew_lease`, `release_lease`, `force_release`).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from rollout.errors import LedgerUnreachable, LockHeld, one_line
from rollout.ledger import Lease, LedgerBackend

__all__ = ["LEASE_SECONDS", "Lease", "acquire", "force_release", "held", "read", "release", "renew", "try_acquire"]

LEASE_SECONDS = 30.0  # wall-clock seconds a lease lasts unless renewed
POLL_SECONDS = 0.2  # how often a waiting rollout asks again
log = logging.getLogger(__name__)


def read(ledger: LedgerBackend, app: str | None = None) -> list[Lease]:
    """The leases held now (of one app, or all), ordered by app."""
    return ledger.leases(app)


def try_acquire(ledger: LedgerBackend, app: str, lease_seconds: float = LEASE_SECONDS) -> Lease | None:
    """Take the app's lease if it is free or stale; return None when someone alive holds it."""
    return ledger.take_lease(app, lease_seconds)


def acquire(ledger: LedgerBackend, app: str, wait: float = 0.0, lease_seconds: float = LEASE_SECONDS) -> Lease:
    """Take the app's lease, polling every POLL_SECONDS for up to `wait` seconds (monotonic).

    Raises LockHeld (exit 4) naming the holder when it is still held after `wait`.
    """
    deadline = time.monotonic() + wait
    while True:
        lease = try_acquire(ledger, app, lease_seconds)
        if lease is not None:
            return lease
        if time.monotonic() >= deadline:
            holders = read(ledger, app)
            holder = holders[0].describe() if holders else "another rollout"
            raise LockHeld(
                f"{app} is locked by {holder}: wait for it, retry with --wait SECONDS,"
                f" or `rollout lock release {app}` if that rollout is gone"
            )
        time.sleep(POLL_SECONDS)


def renew(ledger: LedgerBackend, lease: Lease, lease_seconds: float = LEASE_SECONDS) -> bool:
    """Extend our lease by lease_seconds from now; False when it is no longer ours."""
    return ledger.renew_lease(lease, lease_seconds)


def release(ledger: LedgerBackend, lease: Lease) -> None:
    """Drop our lease (a lease another rollout has taken since is left alone)."""
    ledger.release_lease(lease)


def force_release(ledger: LedgerBackend, app: str) -> Lease | None:
    """`rollout lock release APP`: drop the app's lease whoever holds it; the lease dropped, or None."""
    return ledger.force_release(app)


@contextmanager
def held(ledger: LedgerBackend, app: str, wait: float = 0.0, lease_seconds: float = LEASE_SECONDS) -> Iterator[Lease]:
    """Hold the app's lease for the block, renewing it from a background thread.

    Inside the block every ledger write first checks, under the ledger's write lock, that
    the lease is still ours (LeaseLost if not): a holder that stalled past its lease never
    writes over the rollout that took the app over. `LedgerBackend.check_guard` asks the
    same before a step that changes a target without writing first.

    `wait`: seconds to wait for a held lease (LockHeld after); `lease_seconds`: how long the
    lease lasts unless renewed (wall-clock, stored as `Lease.expires_at`); the heartbeat
    renews it every lease_seconds / 3 by its own (monotonic) clock. Raises LockHeld,
    LedgerError / LedgerBusy from the ledger; LeaseLost from writes inside the block.
    """
    # The heartbeat gets its own handle (its own connection): a connection is not for
    # concurrent use. Opened first: failing to open it must not leave a lease behind that
    # nobody renews.
    heartbeat_ledger = ledger.reopen()
    try:
        lease = acquire(ledger, app, wait, lease_seconds)
    except BaseException:
        heartbeat_ledger.close()
        raise
    stop = threading.Event()
    # A database server that went away (LedgerUnreachable; the next renewal reconnects) is one of them.
    failures = (LedgerUnreachable, *heartbeat_ledger.database_errors)

    def beat() -> None:
        while not stop.wait(lease_seconds / 3):
            try:
                if renew(heartbeat_ledger, lease, lease_seconds):
                    continue
            except failures as exc:
                # A full disk or a briefly unreadable ledger must not end the heartbeat, or the
                # lease would expire under a rollout that is still running: try again next beat.
                # A server that is away is not repeated every beat: the rollout reports the
                # outage once, with what it did about its writes (LedgerBackend.outage_report).
                (log.debug if isinstance(exc, LedgerUnreachable) else log.warning)(
                    "cannot renew the lock on %s (%s); retrying", app, one_line(exc))
                continue
            # Our row is gone: we stalled past the lease (a suspended machine, a stopped process)
            # and another rollout took the app over. Taking it back would make two holders.
            try:
                taker = read(heartbeat_ledger, app)
                heartbeat_ledger.event(None, "lock:lost", {"app": app, "pid": lease.pid,
                                                           "to": taker[0].holder if taker else None})
            except failures:
                taker = []  # the warning below still goes out
            log.warning("the lock on %s was taken over by %s while this rollout ran: stopping at the next"
                        " step; the new holder decides what %s runs", app,
                        taker[0].describe() if taker else "`rollout lock release`", app)
            return

    thread = threading.Thread(target=beat, name=f"lease-{app}", daemon=True)
    thread.start()
    ledger.guard_writes(lease)
    try:
        yield lease
    finally:
        ledger.guard_writes(None)
        stop.set()
        thread.join()
        heartbeat_ledger.close()
        try:
            release(ledger, lease)
        except LedgerUnreachable:
            # The server went away before any target changed (after, the release is spooled with
            # the other writes): the lease is left to lapse, at once for a rollout on this host
            # (our pid is gone), after lease_seconds elsewhere. Not reported: nothing depends on
            # it, and a command ending on the outage keeps to its one-line error.
            pass
