"""A rollout in progress: what `status` and `check` show instead of drift while one runs.

While a deploy, revert or recovery holds an app's lock, its targets run (or are between)
releases the ledger has not recorded as current yet: that is the rollout's work, not drift.
A rollout is in progress when the app has an unfinished entry (pending, applying, verifying)
and a live lease (rollout.lock; not stale: its holder alive, its time not up). A stale lease
is no rollout: its entry is abandoned, and `status` recovers it as before
(operations._recover_if_abandoned). A live lease with no unfinished entry (a deploy still
resolving, a rebuild building) changes no target yet, so it is not reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rollout import lock
from rollout.ledger import Entry, Lease, LedgerBackend
from rollout.targets import TargetState

__all__ = ["InProgress", "in_progress", "mark"]


@dataclass(frozen=True)
class InProgress:
    """The app's rollout running now: its unfinished entry and the live lease its process holds."""

    entry: Entry
    lease: Lease

    def describe(self) -> str:
        """`#12 deploy good2 (verifying) by user@host (pid N), started TIME UTC`, one line for people."""
        e = self.entry
        return (f"#{e.id} {e.kind} {e.tag or e.digest} ({e.status}) by {self.lease.holder} (pid {self.lease.pid}),"
                f" started {e.created_at[:19].replace('T', ' ')} UTC")

    def to_json(self) -> dict[str, Any]:
        """`{entry: Entry.to_json(), lock: {app, holder, host, pid, acquired_at, expires_at, heartbeat_at, token}}`:
        the `in_progress` object of `status --json` and `check --json` (the lock as `lock status --json` shows it)."""
        return {"entry": self.entry.to_json(), "lock": dict(self.lease.__dict__)}


def in_progress(ledger: LedgerBackend, app: str) -> InProgress | None:
    """The app's rollout in progress, or None (no unfinished entry, no lease, or a stale one).

    The newest unfinished entry is the one the holder works on: a recovery finishes older ones
    first, under the same lease. Reads only; staleness by the ledger's clock (`LedgerBackend.now`).
    """
    unfinished = ledger.unfinished(app)
    if not unfinished:
        return None
    leases = lock.read(ledger, app)
    if not leases or leases[0].is_stale(ledger.now()):
        return None
    return InProgress(unfinished[-1], leases[0])


def mark(states: list[TargetState], progress: InProgress | None) -> list[TargetState]:
    """Set `deploying` on every target that answered and does not run the current entry, when a
    rollout is in progress (what it runs is the rollout's doing, not drift); states, for chaining."""
    if progress is not None:
        for state in states:
            state.deploying = state.error is None and not state.in_sync
    return states
