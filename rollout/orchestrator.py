"""The rollout state machine: resolve -> record -> apply -> verify -> healthy, or failed -> revert.

It only talks to interfaces (a resolver, the ledger, targets, a verifier and a
reporter), so every path through it is unit-tested with in-memory stand-ins;
all I/O lives in rollout.registry, rollout.ledger and rollout.targets.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Protocol

from rollout import ledger as L
from rollout.config import AppConfig, HealthPolicy, Strategy
from rollout.errors import (
    EXIT_OK,
    EXIT_REVERTED,
    EXIT_UNRECOVERED,
    Interrupted,
    LeaseLost,
    NotApplied,
    RetagRefused,
    RolloutError,
    TargetUnreachable,
    UserError,
    one_line,
)
from rollout.health import Verdict
from rollout.metric_gate import for_release
from rollout.ledger import Entry, Ledger, NewEntry
from rollout.reference import Reference, short_digest
from rollout.plan import Plan, TargetPlan, preview_of
from rollout.targets import Observation, Release, Running, Target, Watch

# The phases a run is timed by (Outcome.durations, the `timings` event, README "JSON results"), in seconds.
PHASES = ("resolve", "pull", "apply", "verify", "revert")
LOG_TAIL_LINES = 20
LOG_TAIL_LINE_CHARS = 400  # one line of a log tail kept in the ledger; longer lines are clipped


class Resolver(Protocol):
    """Where digests come from (rollout.registry.RegistryClient in production)."""

    def resolve(self, ref: Reference) -> str:
        """The digest ref names now ("sha256:..."): its tag's, or its own digest once confirmed.

        Raises TagNotFound (exit 2), RegistryAuthError or RegistryUnreachable (exit 5).
        """
        ...


class Reporter(Protocol):
    """Where a rollout tells people what happens (rollout.output.Console in the CLI): one-line
    messages, never secrets. Methods must not raise; they are called from verifier threads too."""

    def info(self, message: str) -> None:
        """A step that went as planned ("#12 healthy on web")."""
        ...

    def warn(self, message: str) -> None:
        """Something that needs a look: a failure, a revert, a recovery."""
        ...

    def progress(self, target: str, message: str) -> None:
        """The latest state of one target while it is verified ("running, stable 2.0/5s (3.1s)")."""
        ...

    def logs(self, target: str, text: str) -> None:
        """The tail of a failed target's log (Target.logs), shown when its verdict is unhealthy."""
        ...


Verifier = Callable[[Watch, HealthPolicy, Callable[[str], None]], Verdict]
# Told about each milestone: ("started" | "healthy" | "failed" | "reverted" | "revert_failed", details).
Listener = Callable[[str, dict[str, object]], None]


@dataclass
class Outcome:
    """How deploy, revert or recover ended, for the CLI to print and exit with.

    exit_code: EXIT_OK (0) healthy, EXIT_REVERTED (1) failed and reverted, EXIT_UNRECOVERED (3)
    failed and not reverted (rollout.errors); entry: the entry asked for (for recover, its
    revert entry), as finally recorded; revert: the automatic revert entry, if one ran;
    message: one line saying what happened. unchanged: the release asked for already ran
    everywhere as the current healthy entry, so nothing was recorded (entry is that entry).
    targets / revert_targets: each target's last verdict {"outcome": applied|healthy|failed|
    refused, "detail"} for entry / revert; durations: seconds per PHASES (None: not run).
    """

    exit_code: int
    entry: Entry
    revert: Entry | None = None
    message: str = ""
    unchanged: bool = False
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    revert_targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    durations: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(PHASES))

    def to_json(self) -> dict[str, Any]:
        """The result object `deploy/revert/rebuild/promote --json` print (README, "JSON results"):
        {entry, kind, app, tag, digest, repository, outcome (the entry's status, or "unchanged"),
        exit_code, message, targets: [{name, outcome, detail}], revert: null | {entry, kind, tag,
        digest, outcome, targets}, durations: {resolve, pull, apply, verify, revert} in seconds
        (null: that phase did not run)}."""
        entry, revert = self.entry, self.revert
        return {"entry": entry.id, "kind": entry.kind, "app": entry.app, "tag": entry.tag, "digest": entry.digest,
                "repository": entry.repository, "outcome": "unchanged" if self.unchanged else entry.status,
                "exit_code": self.exit_code, "message": self.message, "targets": _verdict_list(self.targets),
                "revert": None if revert is None else {
                    "entry": revert.id, "kind": revert.kind, "tag": revert.tag, "digest": revert.digest,
                    "outcome": revert.status, "targets": _verdict_list(self.revert_targets)},
                "durations": {phase: None if self.durations.get(phase) is None else round(self.durations[phase], 3)
                              for phase in PHASES}}


def _verdict_list(verdicts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": name, **verdict} for name, verdict in verdicts.items()]


@dataclass
class _Attempt:
    """Which targets an entry moved, and how each fared."""

    moved: list[Target] = field(default_factory=list)  # targets apply changed (or may have): a revert brings them back
    refused: list[NotApplied] = field(default_factory=list)  # targets that refused before changing anything
    failures: dict[str, str] = field(default_factory=dict)
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> its last {outcome, detail}

    @property
    def reason(self) -> str:
        return "; ".join(f"{name}: {why}" for name, why in self.failures.items())


class Orchestrator:
    """Runs one app's deploys, reverts and recoveries: resolve -> record -> prepare -> apply ->
    verify -> healthy, or failed -> automatic revert of the targets that changed.

    Every step is recorded in the ledger before or as it happens, so a rollout killed at any
    moment leaves an unfinished entry that `recover` finishes. The caller holds the app's
    lock (rollout.lock) around every public method. `verifier` is health.verify in
    production, `listener` (optional) gets the milestones for notifications. Targets are
    prepared, applied and verified in parallel, `app.rollout.max_parallel` at a time, in
    batches when the strategy is rolling (plan_batches); every ledger write happens on the
    calling thread.
    """

    def __init__(self, app: AppConfig, ledger: Ledger, resolver: Resolver, targets: list[Target],
                 verifier: Verifier, reporter: Reporter, listener: Listener | None = None) -> None:
        self.app = app
        self.ledger = ledger
        self.resolver = resolver
        self.targets = targets
        self.verifier = verifier
        self.reporter = reporter
        self.policies = {t.name: t.health for t in app.targets}
        self.strategy = app.rollout
        self._cancelled = threading.Event()
        self.listener = listener
        self._durations: dict[str, float | None] = dict.fromkeys(PHASES)

    # -- public operations ---------------------------------------------------

    def resolve(self, ref: Reference, *, allow_retag: bool = False) -> str:
        """The digest to deploy for ref ("sha256:..."), refusing a tag that was re-pushed with other content.

        Raises UserError (exit 2) when ref is not in the app's repository or its tag no longer
        points at the digest given with it, RetagRefused (exit 2) when the ledger recorded the
        tag with another digest (unless allow_retag), and what the resolver raises.
        """
        if ref.name != self.app.image:
            raise UserError(f"{ref} is not in app {self.app.name}'s repository {self.app.image}")
        digest = self.resolver.resolve(ref)
        if ref.digest and digest != ref.digest:
            raise UserError(
                f"{ref.name}:{ref.tag} now resolves to {digest}, not the digest given ({ref.digest}):"
                " deploy by digest alone or check the registry"
            )
        if ref.tag and not allow_retag:
            recorded = self.ledger.digests_for_tag(self.app.name, ref.tag) - {digest}
            if recorded:
                raise RetagRefused(
                    f"tag {ref.tag} of {self.app.name} was deployed as {sorted(recorded)[0]} but now resolves to"
                    f" {digest}: tags are immutable here; push a new tag, or pass --allow-retag to accept it"
                )
        return digest

    def deploy(self, ref: Reference, *, allow_retag: bool = False, reason: str | None = None,
               kind: str = L.DEPLOY, build_key: str | None = None,
               base_digests: dict[str, str] | None = None, force: bool = False,
               origin: dict[str, object] | None = None) -> Outcome:
        """Deploy ref to every target of the app; revert them automatically if it is not healthy.

        `origin` (a promotion, operations.promote): where the digest came from, recorded as the
        new entry's `promoted` event before any target changes.

        Resolves ref (`resolve`), checks that every target answers, records a `kind` entry
        (deploy, or rebuild with its build_key and base_digests), then prepares (pulls), applies
        and verifies it (`_attempt`). Returns an Outcome: exit 0 healthy; 1 failed and the
        targets that changed were put back on the app's newest healthy entry with another digest
        (recorded as a revert entry, verified like a deploy); 3 failed with no healthy entry to
        go back to, or the revert failed too.

        Idempotent (issue 17.2; kind deploy, unless `force`): when the digest is the app's current
        healthy entry's and every target runs it, nothing is recorded or touched (Outcome.unchanged,
        exit 0, "already running #N TAG"); when some targets drifted from it, only those are moved,
        recorded as a deploy whose `drift` event names them (`_to_move`).

        Raises, before any target changed (the entry, if recorded, is failed): UserError /
        RetagRefused (exit 2) and the resolver's errors (exit 2 or 5) from resolve;
        TargetUnreachable (exit 5), or the target's own RolloutError, when a target cannot be
        read or prepared; NotApplied (its own exit code, 5 or 2) when every target refused the
        change. Interrupted (exit 128 + signal) after putting the last healthy release back;
        LeaseLost (exit 4) when another rollout took the app's lock meanwhile.
        """
        self._durations = dict.fromkeys(PHASES)
        with self._timed("resolve"):
            digest = self.resolve(ref, allow_retag=allow_retag)
        running = self._check_reachable()
        current = self.ledger.current(self.app.name)
        moving = self._to_move(digest, current, running, idempotent=kind == L.DEPLOY and not force)
        if not moving:
            assert current is not None  # _to_move moves every target unless current runs everywhere
            for name, seen in running.items():
                if seen.warning:  # e.g. rollout.toml edited since: the no-op must not hide it
                    self.reporter.warn(f"{name}: {seen.warning}")
            return Outcome(EXIT_OK, current, message=f"already running #{current.id} {current.tag or '-'}",
                           unchanged=True, durations=dict(self._durations))
        idempotent = kind == L.DEPLOY and not force and current is not None and current.digest == digest
        drifted = [t.name for t in moving] if idempotent else []
        if drifted and reason is None and current is not None:
            reason = f"bring back {', '.join(drifted)}: drifted from #{current.id}"
        entry = self.ledger.record(NewEntry(
            app=self.app.name, repository=ref.name, tag=ref.tag, digest=digest, kind=kind,
            previous_id=current.id if current else None, reason=reason,
            build_key=build_key, base_digests=base_digests,
        ))
        if drifted:
            self.ledger.event(entry.id, "drift", {"targets": drifted, "from_entry": current.id if current else None})
        if origin is not None:
            self.ledger.event(entry.id, "promoted", origin)
        return self._run(entry, f"#{entry.id} {kind} {self.app.name} {_label(entry)}", moving, repair=bool(drifted))

    def _to_move(self, digest: str, current: Entry | None, running: dict[str, Running], *,
                 idempotent: bool) -> list[Target]:
        """The targets a deploy of `digest` moves: all of them, unless `idempotent` and digest is the
        current healthy entry's: then only those not running it (none: nothing to do)."""
        if not idempotent or current is None or current.digest != digest:
            return list(self.targets)
        return [t for t in self.targets if not running[t.name].serves(digest)]

    def plan_deploy(self, ref: Reference, *, allow_retag: bool = False, force: bool = False) -> Plan:
        """What `deploy(ref)` would do now, changing nothing (issue 17.1): the same resolve (one HEAD),
        target reads, idempotency rule (`_to_move`), batches (plan_batches) and revert candidate as
        the deploy, plus each moving target's preview (rollout.plan.preview_of: pull or not, what
        changes). Raises what deploy raises before it records an entry (exit 2 or 5)."""
        digest = self.resolve(ref, allow_retag=allow_retag)
        running = self._check_reachable()
        current = self.ledger.current(self.app.name)
        moving = self._to_move(digest, current, running, idempotent=not force)
        release = Release(0, ref.name, ref.tag, digest, "plan", trusted=self._trusted(digest))
        repair = not force and current is not None and current.digest == digest and bool(moving)
        return self._plan(L.DEPLOY, release, current, running, moving, repair=repair)

    def plan_revert(self, to: Entry | None = None) -> Plan:
        """What `revert(to)` would do now, changing nothing; raises what revert raises before it
        records an entry (exit 2 nothing to revert to, 5 a target unreachable)."""
        to, current = self._revert_choice(to)
        running = self._check_reachable()
        release = Release(0, to.repository, to.tag, to.digest, "plan", revert=True, trusted=self._trusted(to.digest))
        moving = [] if self._already_there(to, current, running) else list(self.targets)
        return self._plan(L.REVERT, release, current, running, moving, reverts_to=to)

    def _plan(self, kind: str, release: Release, current: Entry | None, running: dict[str, Running],
              moving: list[Target], reverts_to: Entry | None = None, repair: bool = False) -> Plan:
        previews = {}
        for target, result in _each(lambda t: preview_of(t, release), moving, self.strategy.max_parallel):
            if isinstance(result, RolloutError):
                raise result
            if isinstance(result, BaseException):
                raise TargetUnreachable(f"target {target.name} is unreachable: {one_line(result)}") from result
            previews[target.name] = result
        targets = [TargetPlan(t.name, running[t.name].digest, release.digest, t.name in previews,
                              previews[t.name].pull if t.name in previews else False,
                              previews[t.name].changes if t.name in previews else "nothing: it runs this digest")
                   for t in self.targets]
        batches = [[t.name for t in batch] for batch in plan_batches(moving, self.strategy)] if moving else []
        return Plan(kind=kind, app=self.app.name, repository=release.repository, tag=release.tag,
                    digest=release.digest, current=current, targets=targets, batches=batches,
                    on_failure=None if repair else self._fallback(release.digest),
                    reverts_to=reverts_to, repair=repair)

    def revert(self, to: Entry | None = None, *, reason: str | None = None) -> Outcome:
        """Go back to `to`, or by default to the healthy entry before the current one with another digest.

        The revert is its own entry (kind revert, reverts_to = to.id), applied to every target and
        verified like a deploy; its Outcome's exit code is 0 healthy, 1 or 3 as for `deploy`. When
        `to` has the current healthy entry's digest and every target runs it, nothing is recorded or
        touched (Outcome.unchanged, exit 0, "already running #N TAG"), as for an idempotent deploy.
        Raises UserError (exit 2) when there is nothing to revert to, or `to` is another app's or
        was never healthy; TargetUnreachable (exit 5) and the other errors `deploy` raises.
        """
        self._durations = dict.fromkeys(PHASES)
        to, current = self._revert_choice(to)
        running = self._check_reachable()
        if self._already_there(to, current, running):
            assert current is not None
            return Outcome(EXIT_OK, current, message=f"already running #{current.id} {current.tag or '-'}",
                           unchanged=True, durations=dict(self._durations))
        entry = self.ledger.record(NewEntry(
            app=self.app.name, repository=to.repository, tag=to.tag, digest=to.digest, kind=L.REVERT,
            previous_id=current.id if current else None, reverts_to=to.id,
            reason=reason or f"revert to #{to.id} requested",
        ))
        return self._run(entry, f"#{entry.id} revert {self.app.name} to #{to.id} {_label(to)}")

    def _already_there(self, to: Entry, current: Entry | None, running: dict[str, Running]) -> bool:
        """A revert to `to` changes nothing: its digest is the current healthy entry's and every
        target runs it (a `revert --to` the running release is a no-op, as such a deploy is): in
        a container `to` created or took back, unless `to` is the current entry itself (a revert
        to an older entry of the same digest puts back its own container and settings)."""
        if current is None or current.digest != to.digest or self._to_move(to.digest, current, running, idempotent=True):
            return False
        return to.id == current.id or all(seen.made_by(frozenset({to.id})) for seen in running.values())

    def _fallback(self, digest: str) -> Entry | None:
        """What a failed entry of `digest` is reverted to: the newest healthy entry with another
        digest (two broken releases in a row still land on a good one), unless the current healthy
        entry has this very digest: then the digest ran healthy until now and is not what failed
        (a `deploy --force` after a settings edit, a repair), so the current entry comes back, with
        the container it ran in (Release.trusted), not an older version."""
        current = self.ledger.current(self.app.name)
        if current is not None and current.digest == digest:
            return current
        return self.ledger.last_healthy(self.app.name, not_digest=digest)

    def _trusted(self, digest: str) -> frozenset[int]:
        """Release.trusted for `digest`: the ids of the app's healthy entries with it."""
        return self.ledger.healthy_ids(self.app.name, digest)

    def _revert_choice(self, to: Entry | None) -> tuple[Entry, Entry | None]:
        """(the entry a revert goes back to, the current healthy entry): `to`, checked, or the healthy
        entry before the current one with another digest. Raises UserError (exit 2) as `revert` says."""
        current = self.ledger.current(self.app.name)
        if to is None:
            if current is None:
                raise UserError(f"{self.app.name} has no healthy entry yet: nothing to revert from")
            to = self.ledger.last_healthy(self.app.name, not_digest=current.digest, before_id=current.id)
            if to is None:
                raise UserError(f"{self.app.name} has no earlier healthy entry with another digest to revert to")
        elif to.app != self.app.name:
            raise UserError(f"entry #{to.id} belongs to app {to.app}, not {self.app.name}")
        elif to.status != L.HEALTHY:
            raise UserError(f"entry #{to.id} was never healthy ({to.status}): choose a healthy entry from `rollout history`")
        return to, current

    # -- the state machine ---------------------------------------------------

    def recover(self, reason: str = "the rollout that was running it stopped before finishing") -> Outcome | None:
        """Finish what a dead rollout (another process) left behind: see _recover. Call it holding the app's lock."""
        return self._recover(reason, tidy=True)

    def _recover(self, reason: str, *, tidy: bool) -> Outcome | None:
        """Finish what a dead or interrupted rollout left behind. Call it holding the app's lock.
        `tidy`: False in the interrupted process itself, where verifiers of other targets may still
        be finishing (they stop what they started: Target.settle) and must not lose a container
        they are giving the name to.

        Rule: what an interrupted apply left beside a target's live release goes (Target.tidy);
        every unfinished entry becomes `interrupted`; then each target that does not
        run the app's newest healthy digest is reverted to it, as a revert entry verified like
        a deploy. An unverified release is never kept, however far it got.
        """
        abandoned = self.ledger.unfinished(self.app.name)
        if not abandoned:
            return None
        for target in self.targets if tidy else []:
            remove_leftovers = getattr(target, "tidy", None)
            if remove_leftovers is None:
                continue
            try:
                remove_leftovers()
            except RolloutError as exc:  # what stays behind never serves; the recovery matters more
                self.reporter.warn(f"{target.name}: {one_line(exc)}")
        good = self.ledger.current(self.app.name)
        running = self._check_reachable() if good is not None else {}
        trusted = self._trusted(good.digest) if good is not None else frozenset()
        # A target also counts as off when what holds its name was created by an entry that never
        # turned healthy, even with the good digest (a killed `deploy --force` after a settings edit).
        off = [t for t in self.targets if good is not None and not (running[t.name].serves(good.digest)
                                                                    and running[t.name].made_by(trusted))]
        # One commit: entries are never marked interrupted without the revert that answers them,
        # so a recovery that is itself killed half way leaves them unfinished for the next one.
        with self.ledger.transaction():
            for entry in abandoned:
                self.ledger.set_status(entry.id, L.INTERRUPTED, error=f"interrupted: {reason}")
            revert = self.ledger.record(NewEntry(
                app=self.app.name, repository=good.repository, tag=good.tag, digest=good.digest, kind=L.REVERT,
                previous_id=abandoned[-1].id, reverts_to=good.id,
                reason=f"recovery: #{', #'.join(str(e.id) for e in abandoned)} interrupted",
            )) if good is not None and off else None
        for entry in abandoned:
            self.reporter.warn(f"#{entry.id} ({entry.kind} {_label(entry)}) was interrupted: {reason}")
        if good is None:
            self.reporter.warn(f"{self.app.name} has no healthy entry to return to: targets left as they are")
            return None
        if revert is None:
            self.reporter.info(f"every target already runs #{good.id} {_label(good)}")
            return None
        self.reporter.warn(f"restoring #{good.id} {_label(good)} on {', '.join(t.name for t in off)} as #{revert.id}")
        # A new flag: verifiers of the interrupted attempt keep seeing theirs set, and stop.
        self._cancelled = threading.Event()
        try:
            back = self._attempt(revert, off, ALL_AT_ONCE, trusted=trusted)
        except RolloutError as exc:  # the revert could not even start on a target: it failed
            back = _Attempt(failures={"revert": one_line(exc)})
        interrupted = [e.id for e in abandoned]
        if back.failures:
            self._tell("revert_failed", self.ledger.get(revert.id), reason=back.reason, interrupted_entries=interrupted)
            return Outcome(EXIT_UNRECOVERED, self.ledger.get(revert.id),
                           message=f"REVERT FAILED: #{revert.id} could not restore #{good.id} ({back.reason}): act now")
        self._tell("reverted", self.ledger.get(revert.id), reason=reason, interrupted_entries=interrupted)
        return Outcome(EXIT_OK, self.ledger.get(revert.id), message=f"restored #{good.id} {_label(good)}")

    def _run(self, entry: Entry, announcement: str, targets: list[Target] | None = None, *,
             repair: bool = False) -> Outcome:
        """Attempt entry on targets (default: all) and answer a failure (_run_uninterrupted); recover
        on a signal. `repair`: the entry brings drifted targets back to the current entry's digest."""
        self._attempting = entry
        # The try starts right after the entry is recorded: a signal at any later moment is recovered.
        try:
            self.reporter.info(announcement)
            self._tell("started", entry)
            outcome = self._run_uninterrupted(entry, self.targets if targets is None else targets, repair=repair)
            outcome.durations = dict(self._durations)
            # Read back by `rollout show` (resolve happened before the entry existed: only here).
            self.ledger.event(entry.id, "timings", {"seconds": {k: v for k, v in outcome.durations.items()
                                                                if v is not None}})
            return outcome
        except Interrupted as stop:
            self._cancelled.set()
            self.ledger.abandon_open_transaction()
            self.reporter.warn(f"{stop}: stopping, putting the last healthy release back")
            outcome = self._recover(f"{stop} received", tidy=False)
            if outcome is not None:
                self.reporter.warn(outcome.message)
            raise
        except LeaseLost:
            # The ledger's guard stopped us; name the entry we were on (the new holder may
            # already have marked it interrupted and recorded its own revert).
            name, ours = self.app.name, self.ledger.get(self._attempting.id)
            raise LeaseLost(f"another rollout took over the lock on {name} during #{ours.id} (ledger status now:"
                            f" {ours.status}): stopped without changing anything more; it recovers {name}"
                            f" (see `rollout status {name}`)") from None

    def _run_uninterrupted(self, entry: Entry, targets: list[Target], *, repair: bool = False) -> Outcome:
        # What a failure goes back to, asked before any target changes: afterwards the ledger's
        # server may be away (LedgerBackend.tolerate_outage). Under the lock nothing else can
        # make another entry of this app healthy meanwhile, so the answer is the same.
        # A failed repair of drifted targets goes back to nothing older: the other targets still
        # run the current entry, which must stay current (review of issue 17, P2-1).
        good = None if repair else self._fallback(entry.digest)
        # Read here too: Release.trusted of the entry and of its revert (the ledger may be away later).
        trusted = self._trusted(entry.digest)
        trusted_good = self._trusted(good.digest) if good is not None else frozenset()
        attempt = self._attempt(entry, targets, settle_failure=False, timed=True, trusted=trusted)
        if not attempt.failures:
            self._tell("healthy", entry)
            return Outcome(EXIT_OK, self.ledger.get(entry.id), message=f"#{entry.id} healthy", targets=attempt.verdicts)
        # One commit: a failed release is never on record without the revert that answers it,
        # so a rollout killed in between leaves an unfinished entry for recovery, not a silent failure.
        with self.ledger.transaction():
            self.ledger.set_status(entry.id, L.FAILED, error=attempt.reason)
            revert = self.ledger.record(NewEntry(
                app=self.app.name, repository=good.repository, tag=good.tag, digest=good.digest, kind=L.REVERT,
                previous_id=entry.id, reverts_to=good.id, reason=f"automatic revert: #{entry.id} failed: {attempt.reason}",
            )) if good is not None else None
        failed = self.ledger.get(entry.id)
        self._tell("failed", failed, reason=attempt.reason, failed_targets=sorted(attempt.failures))
        if good is None or revert is None:
            for target in attempt.moved:
                self._quietly(target.stop)
            message = (f"#{entry.id} failed ({attempt.reason}) and there is no healthy entry to go back to:"
                       " the failed release was stopped, and what it replaced was put back as it was before")
            if repair:
                message = (f"#{entry.id} failed to bring back {', '.join(t.name for t in targets)} ({attempt.reason}):"
                           f" not reverted to an older release; the failed release was stopped there and what it"
                           f" replaced put back; #{entry.previous_id} stays current elsewhere: act now")
            return Outcome(EXIT_UNRECOVERED, failed, message=message, targets=attempt.verdicts)
        self.reporter.warn(f"#{entry.id} failed: {attempt.reason}; reverting to #{good.id} {_label(good)} as #{revert.id}")
        try:
            with self._timed("revert"):
                back = self._attempt(revert, attempt.moved, ALL_AT_ONCE, trusted=trusted_good)
        except RolloutError as exc:
            back = _Attempt(failures={"revert": one_line(exc)})
        if back.failures:
            message = (f"REVERT FAILED: #{revert.id} could not restore #{good.id} ({back.reason});"
                       f" {self.app.name} is not on a healthy release: act now")
            self._tell("revert_failed", self.ledger.get(revert.id), reason=back.reason, failed_entry=entry.id)
            return Outcome(EXIT_UNRECOVERED, failed, self.ledger.get(revert.id), message, targets=attempt.verdicts,
                           revert_targets=back.verdicts)
        message = f"#{entry.id} failed ({attempt.reason}); reverted to #{good.id} {_label(good)}, healthy"
        self._tell("reverted", self.ledger.get(revert.id), failed_entry=entry.id, reason=attempt.reason)
        return Outcome(EXIT_REVERTED, failed, self.ledger.get(revert.id), message, targets=attempt.verdicts,
                       revert_targets=back.verdicts)

    def _attempt(self, entry: Entry, targets: list[Target], strategy: "Strategy | None" = None, *,
                 settle_failure: bool = True, timed: bool = False, trusted: frozenset[int] | None = None) -> _Attempt:
        """Apply one entry to targets batch by batch and verify each batch; record every step.

        Workers only touch targets; every ledger write happens here, on this thread. `timed`: the
        pull (prepare), apply and verify phases count in the run's durations (not a revert's).
        """
        strategy = strategy or self.strategy
        self._attempting = entry
        attempt = _Attempt()
        release = Release(entry.id, entry.repository, entry.tag, entry.digest, _change_cause(entry),
                          revert=entry.kind == L.REVERT,
                          trusted=self._trusted(entry.digest) if trusted is None else trusted)
        self.ledger.set_status(entry.id, L.APPLYING)
        with self._timed("pull", timed):
            prepared = _each(lambda t: t.prepare(release), targets, strategy.max_parallel)
        for target, error in prepared:
            if error is not None:
                # Nothing has changed yet: fail the entry and let the caller exit 5 / 2.
                failure = error if isinstance(error, RolloutError) else TargetUnreachable(
                    f"target {target.name}: cannot prepare {release.image}: {one_line(error)}")
                self.ledger.set_status(entry.id, L.FAILED, error=str(failure))
                raise failure
        batches = plan_batches(targets, strategy)
        for number, batch in enumerate(batches, start=1):
            if len(batches) > 1:
                self.reporter.info(f"#{entry.id} batch {number}/{len(batches)}: {', '.join(t.name for t in batch)}")
            applied = []
            if number > 1 and self.ledger.writes_waiting():
                # Widening a release the ledger cannot record would leave more targets to explain:
                # fail it, so the batches already moved go back (their writes reach the ledger later).
                attempt.failures["ledger"] = ("the ledger's server stopped answering: not moving the next batch"
                                              f" ({', '.join(t.name for t in batch)})")
                break
            # No ledger write comes between a long pull or a pause and this change: if another
            # rollout took the app over meanwhile, stop here (LeaseLost) and leave the entry to it.
            self.ledger.check_guard()
            # The point of no return: from the first apply on, this rollout must finish (verify,
            # revert) and its writes must reach the ledger even if the ledger's server goes away.
            self.ledger.tolerate_outage()
            with self._timed("apply", timed):
                results = _each(lambda t: t.apply(release), batch, strategy.max_parallel)
            for target, result in results:
                if isinstance(result, NotApplied):
                    # The target is as it was: it is not among those a revert must bring back.
                    attempt.refused.append(result)
                    attempt.failures[target.name] = f"apply refused: {one_line(result)}"
                    self._mark(attempt, entry, target, "refused", attempt.failures[target.name])
                    continue
                attempt.moved.append(target)
                if isinstance(result, BaseException):
                    attempt.failures[target.name] = f"apply failed: {one_line(result)}"
                    self._mark(attempt, entry, target, "failed", attempt.failures[target.name],
                               image_after=release.image)
                else:
                    applied.append(target)
                    self._mark(attempt, entry, target, "applied", None, image_before=result,
                               image_after=release.image)
            if attempt.failures:
                break
            if number == 1:
                self.ledger.set_status(entry.id, L.VERIFYING)
            with self._timed("verify", timed):
                # A revert (automatic, recovery or `rollout revert`) is not judged by the metric gate:
                # an app-scoped query still counts the failed release's errors in its rate window
                # when the good release is back, and would fail the revert that fixed it (exit 3).
                verdicts = self._verify_all(applied, release, gated=entry.kind != L.REVERT)
            for target, verdict in zip(applied, verdicts):
                outcome = "healthy" if verdict.healthy else "failed"
                self._mark(attempt, entry, target, outcome, f"{verdict.reason} after {verdict.elapsed:.1f}s")
                self.reporter.progress(target.name, f"{outcome.upper()}: {verdict.reason} after {verdict.elapsed:.1f}s")
                if not verdict.healthy:
                    attempt.failures[target.name] = verdict.reason
                    tail = str(self._quietly(target.logs) or "")
                    self.reporter.logs(target.name, tail)
                    if getattr(target, "keeps_log_tail", True):  # Target: False when logs() could not mask all
                        self._keep_log_tail(entry, target.name, tail)
            if attempt.failures:
                break
            if number < len(batches) and strategy.pause > 0:
                self.reporter.info(f"#{entry.id} pausing {strategy.pause:g}s before the next batch")
                if self._cancelled.wait(strategy.pause):
                    break
        if attempt.failures and attempt.refused and not attempt.moved and not settle_failure:
            # The entry asked for was refused before any target changed: nothing to revert; fail it
            # like a failed prepare (exit 5 / 2). A revert refused is a failed revert (the caller's).
            self.ledger.set_status(entry.id, L.FAILED, error=attempt.reason)
            raise attempt.refused[0]
        if attempt.failures:
            if settle_failure:  # else the caller records the failure together with its revert
                self.ledger.set_status(entry.id, L.FAILED, error=attempt.reason)
        else:
            self.ledger.set_status(entry.id, L.HEALTHY)
            self.reporter.info(f"#{entry.id} healthy on {', '.join(t.name for t in targets)}")
            # After the verdict is on record and printed: a drain wait here cannot hide it, and a
            # signal during it cannot revert a release already verified (Target.settle).
            settling = [t for t in targets if getattr(t, "settle", None) is not None]
            _each(lambda t: self._settle(t, True), settling, len(settling))
        return attempt

    def _settle(self, target: Target, healthy: bool) -> None:
        """The target's optional settle(healthy) (rollout.targets); its failure is a warning: the
        verdict stands."""
        try:
            target.settle(healthy)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - the verdict stands; the operator is told
            self.reporter.warn(f"target {target.name}: {one_line(exc)}")

    def _mark(self, attempt: _Attempt, entry: Entry, target: Target, outcome: str, detail: str | None,
              **images: str | None) -> None:
        """Record a target's outcome in the ledger and in the attempt's verdicts (Outcome.targets)."""
        self.ledger.set_target(entry.id, target.name, outcome=outcome, detail=detail, **images)
        attempt.verdicts[target.name] = {"outcome": outcome, "detail": detail}

    def _keep_log_tail(self, entry: Entry, target: str, tail: str) -> None:
        """Record a failed target's log tail (Target.logs, which masks what must not be shown) as the
        entry's `log-tail` event, for `rollout show`: at most LOG_TAIL_LINES lines of at most
        LOG_TAIL_LINE_CHARS characters. Not a `target:` event: those mirror the target rows."""
        lines = [line[:LOG_TAIL_LINE_CHARS] for line in tail.rstrip().splitlines()[-LOG_TAIL_LINES:]]
        if lines:
            self.ledger.event(entry.id, "log-tail", {"target": target, "lines": lines})

    @contextmanager
    def _timed(self, phase: str, on: bool = True) -> Iterator[None]:
        """Add the block's wall time (seconds) to the run's durations[phase] when `on`."""
        started = time.monotonic()
        try:
            yield
        finally:
            if on:
                self._durations[phase] = (self._durations.get(phase) or 0.0) + time.monotonic() - started

    def _verify_all(self, targets: list[Target], release: Release, *, gated: bool = True) -> list[Verdict]:
        """Verify each target against its policy, in parallel; `gated`: with its metric gate
        (rollout.metric_gate), else without (reverts). One Verdict per target, in order."""
        def judge(target: Target) -> Verdict:
            try:
                watch = _Cancellable(target.watch(release), self._cancelled)
            except Exception as exc:  # noqa: BLE001 - a target we cannot watch is not healthy
                return Verdict(False, f"cannot watch: {one_line(exc)}", 0.0)
            try:
                # A metric gate's query is about this release ({app}, {digest}, {entry}).
                policy = self.policies[target.name]
                policy = (for_release(policy, self.app.name, release.entry_id, release.digest) if gated
                          else replace(policy, prometheus=None))
                return self.verifier(watch, policy, lambda text: self.reporter.progress(target.name, text))
            except Exception as exc:  # noqa: BLE001 - a target we cannot watch is not healthy
                return Verdict(False, f"cannot verify: {one_line(exc)}", 0.0)
            finally:
                watch.close()

        def one(target: Target) -> Verdict:
            verdict = judge(target)
            # Optional Target.settle (targets/__init__.py): a target that moved traffic to a release
            # that failed sends it back at once, here, before any ledger write. A healthy one is
            # settled only once the whole entry is recorded healthy (end of _attempt): until then
            # the release it replaced keeps running, so a later batch's failure or a signal
            # reverts this target by a switch, not a cold start.
            if not verdict.healthy:
                self._settle(target, False)
            return verdict

        if len(targets) == 1:
            return [one(targets[0])]
        # Not `with`: on SIGINT the main thread must not wait for the verifiers to time out.
        pool = ThreadPoolExecutor(max_workers=len(targets))
        try:
            return list(pool.map(one, targets))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _check_reachable(self) -> dict[str, Running]:
        """What every target runs, asked of all at once (a fleet of ssh hosts answers slowly)."""
        running = {}
        for target, result in _each(lambda t: t.running(), self.targets, self.strategy.max_parallel):
            if isinstance(result, RolloutError):
                raise result
            if isinstance(result, BaseException):  # any failure to look is "unreachable, nothing changed"
                raise TargetUnreachable(f"target {target.name} is unreachable: {one_line(result)}") from result
            running[target.name] = result
        return running

    def _tell(self, event: str, entry: Entry, **details: object) -> None:
        """Notify the listener; a listener that fails never fails the rollout."""
        if self.listener is None:
            return
        payload: dict[str, object] = {"event": event, "app": self.app.name, "entry": entry.id, "kind": entry.kind,
                                      "tag": entry.tag, "digest": entry.digest, "repository": entry.repository,
                                      "reverts_to": entry.reverts_to, **details}
        try:
            self.listener(event, payload)
        except Exception as exc:  # noqa: BLE001 - notifications are best effort by design
            self.reporter.warn(f"notification failed: {one_line(exc)}")

    def _quietly(self, action: Callable[[], object]) -> object:
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - best effort while already handling a failure
            self.reporter.warn(f"{one_line(exc)}")
            return None


# Strategy (how an entry moves across targets) is the typed [apps.NAME.rollout] table of rollout.config.
ALL_AT_ONCE = Strategy()


def plan_batches(targets: list[Target], strategy: Strategy) -> list[list[Target]]:
    """The batches an entry moves through, in order: all targets in one batch, unless the
    strategy is rolling: then `batch_size` targets per batch, in configured order."""
    if strategy.kind != "rolling" or not targets:
        return [list(targets)]
    size = max(1, strategy.batch_size)
    return [list(targets[i:i + size]) for i in range(0, len(targets), size)]


def _each(action: Callable[[Target], object], targets: list[Target], limit: int) -> list[tuple[Target, object]]:
    """Run action on every target, `limit` at a time (0: all); results or exceptions, in target order."""
    if len(targets) <= 1:
        results: list[tuple[Target, object]] = []
        for target in targets:
            try:
                results.append((target, action(target)))
            except Exception as exc:  # noqa: BLE001 - reported per target by the caller
                results.append((target, exc))
        return results
    pool = ThreadPoolExecutor(max_workers=limit or len(targets))
    try:
        futures = [pool.submit(action, target) for target in targets]
        return [(target, future.exception() or future.result()) for target, future in zip(targets, futures)]
    finally:
        # On SIGINT: applies already running finish (they are bounded) before recovery touches
        # the same targets; those not started yet never start.
        pool.shutdown(wait=True, cancel_futures=True)


class _Cancellable:
    """A Watch that reports failure at once when the rollout is being interrupted."""

    def __init__(self, watch: Watch, cancelled: threading.Event) -> None:
        self.watch = watch
        self.cancelled = cancelled

    def observe(self) -> Observation:
        if self.cancelled.is_set():
            return Observation(False, "interrupted")
        return self.watch.observe()

    def wait(self, seconds: float) -> None:
        if not self.cancelled.is_set():
            self.watch.wait(seconds)

    def close(self) -> None:
        self.watch.close()


def _label(entry: Entry) -> str:
    return f"{entry.tag or '-'} ({short_digest(entry.digest)})"


def _change_cause(entry: Entry) -> str:
    what = f"{entry.tag}@{entry.digest}" if entry.tag else entry.digest
    if entry.kind == L.REVERT:
        return f"rollout revert to #{entry.reverts_to} {what} (ledger #{entry.id})"
    return f"rollout {entry.kind} {entry.app}:{what} (ledger #{entry.id})"