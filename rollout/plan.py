"""What a deploy or revert would do, said before doing it (`--dry-run`, issue 17.1).

A Plan is built by rollout.orchestrator.Orchestrator.plan_deploy / plan_revert from the same
decisions the real command takes (the resolved digest, the idempotency rule, the strategy's
batches, the entry a failure would revert to), plus one read-only look per moving target
(`preview_of`): whether its engine would pull, and what would change. Building one records no
entry, takes no lease, touches no target and pulls nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rollout.reference import short_digest

if TYPE_CHECKING:
    from rollout.ledger import Entry
    from rollout.targets import Release, Target


@dataclass(frozen=True)
class Preview:
    """What one target would do for a release: `changes` (one line: the container, Deployment or
    route that changes) and `pull` (True: its engine lacks the image and would pull it; False: it
    has it; None: the target cannot say, e.g. Kubernetes nodes pull for themselves)."""

    changes: str
    pull: bool | None


def preview_of(target: "Target", release: "Release") -> Preview:
    """The target's optional, read-only `preview(release)` (rollout.targets.Target); a kind without
    one is described by its name alone. Raises what the target's preview raises (TargetUnreachable, 5)."""
    preview = getattr(target, "preview", None)
    if preview is None:
        return Preview(f"target {target.name}", None)
    return preview(release)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class TargetPlan:
    """One target in a plan: the digest it runs now (None: nothing), the one it would run, whether it
    moves at all, whether it would pull, and what would change."""

    name: str
    current_digest: str | None
    new_digest: str
    moves: bool
    pull: bool | None
    changes: str


@dataclass
class Plan:
    """What `deploy --dry-run` / `revert --dry-run` print. `kind` deploy or revert; `current` the app's
    current healthy entry; `batches` the target names per batch, in order (empty: nothing moves);
    `on_failure` the healthy entry a failure would revert to (None: the failed release would be
    stopped and what it replaced put back); `repair` the deploy only brings drifted targets back to
    the current entry's digest (a failure then reverts to nothing older); `reverts_to` the entry a revert restores; `notes`
    lines the operations layer adds (e.g. an unfinished rollout would be recovered first)."""

    kind: str
    app: str
    repository: str
    tag: str | None
    digest: str
    current: "Entry | None"
    targets: list[TargetPlan]
    batches: list[list[str]]
    on_failure: "Entry | None"
    reverts_to: "Entry | None" = None
    repair: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        """Nothing would move: the release already runs everywhere as the current healthy entry."""
        return not self.batches

    def to_json(self) -> dict[str, Any]:
        """The object `--dry-run --json` prints (README, "Plan: --dry-run"); entries as {id, tag, digest}."""
        return {"dry_run": True, "kind": self.kind, "app": self.app, "repository": self.repository, "tag": self.tag,
                "digest": self.digest, "unchanged": self.unchanged, "current": _brief(self.current),
                "reverts_to": _brief(self.reverts_to), "on_failure_reverts_to": _brief(self.on_failure),
                "batches": self.batches, "repair": self.repair, "notes": self.notes,
                "targets": [{"name": t.name, "current_digest": t.current_digest, "new_digest": t.new_digest,
                             "moves": t.moves, "pull": t.pull, "changes": t.changes} for t in self.targets]}

    def lines(self) -> list[str]:
        """The human plan, one line each: the headline, one line per target, batches, what a failure does."""
        what = f"{self.tag or '-'} ({short_digest(self.digest)})"
        if self.unchanged:
            assert self.current is not None
            head = f"plan: {self.app}: nothing to do: already running #{self.current.id} {self.current.tag or '-'}"
        elif self.reverts_to is not None:
            head = f"plan: revert {self.app} to #{self.reverts_to.id} {what}"
        else:
            head = f"plan: deploy {self.app} {what} {self.digest}"
        out = [head]
        if self.current is not None:
            out.append(f"  current: #{self.current.id} {self.current.tag or '-'} ({short_digest(self.current.digest)})")
        for t in self.targets:
            now = short_digest(t.current_digest) if t.current_digest else "nothing"
            if not t.moves:
                out.append(f"  {t.name}: {now}: unchanged")
                continue
            pull = {True: "pull needed", False: "image present, no pull", None: "pull: decided by the target"}[t.pull]
            out.append(f"  {t.name}: {now} -> {short_digest(t.new_digest)}; {pull}; changes {t.changes}")
        if len(self.batches) > 1:
            out.append("  batches: " + " | ".join(", ".join(batch) for batch in self.batches))
        if not self.unchanged:
            back = self.on_failure
            if self.repair:
                assert self.current is not None
                out.append(f"  on failure: no revert to an older release (a repair of drifted targets): the failed"
                           f" release would be stopped there, #{self.current.id} stays current, exit 3")
            else:
                out.append(f"  on failure: revert to #{back.id} {back.tag or '-'} ({short_digest(back.digest)})" if back
                           else "  on failure: no healthy entry to revert to: the failed release would be stopped")
        out.extend(f"  note: {note}" for note in self.notes)
        out.append("  (dry run: nothing was recorded, locked, pulled or changed)")
        return out


def _brief(entry: "Entry | None") -> dict[str, Any] | None:
    return None if entry is None else {"id": entry.id, "tag": entry.tag, "digest": entry.digest}
