"""The use cases behind the `rollout` commands, for every front end: the CLI, a scheduler, a webhook receiver, a test.

One function per command: deploy, revert, promote, status, history, check, rebuild, init, lock_status,
lock_release, ledger_copy, show, versions; plan_deploy / plan_revert / plan_promote for `--dry-run`. Each takes a loaded rollout.config.Config (init: the path to write) and plain
arguments, tells a Reporter its progress (rollout.output.Console is one), and returns a result
object. Failures are raised as rollout.errors exceptions, each carrying its exit code (README,
"Exit codes"): RolloutError subclasses (2 bad input, 4 lock held, 5 unreachable before anything
changed), and the BaseExceptions Interrupted (128 + signal) and LeaseLost (4). Printing and
exiting are the front end's job; nothing here writes to stdout.

What keeps an app safe lives here, so that every front end gets it:
- the app's lock (rollout.lock.held) around everything that may record an entry or change a
  target: deploy, revert, rebuild, and the recovery that status may run;
- recovery: an entry an earlier rollout left unfinished (killed, interrupted) is finished first,
  its targets put back on the newest healthy release (Orchestrator.recover);
- interruption: the front end passes `interrupts`, a factory of a context manager inside which
  SIGINT/SIGTERM raise rollout.errors.Interrupted in the calling thread (the CLI installs signal
  handlers; a worker thread cannot, and passes nothing). It is entered where the orchestrator can
  answer an interruption by putting the last healthy release back: once the lock is held for
  deploy, revert and status, around the whole run for rebuild;
- notifications: the [notify] listener is created here, and drain_notifications() sends what is
  still queued; call it once before the process exits (the sends run in a background thread);
- metrics: deploy, revert and rebuild write --metrics-file / push to --pushgateway (MetricsOptions)
  whatever their outcome.

Several operations may run in one process one after another. The Docker SDK reads the engine's
registry credentials from $DOCKER_CONFIG only, so an operation on a config with
`[registry] docker_config` sets it while it runs (see _docker_config): operations on configs
with different docker_config values must not run at the same time in one process.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Optional, TypeVar

from rollout.errors import EXIT_INTERNAL, EXIT_OK, EXIT_UNREACHABLE, Interrupted, LeaseLost, LockHeld, RolloutError, \
    UserError

if TYPE_CHECKING:
    from rollout.check import AppCheck
    from rollout.config import AppConfig, Config
    from rollout.ledger import Entry, Lease, LedgerBackend
    from rollout.ledger_copy import CopyResult
    from rollout.orchestrator import Orchestrator, Outcome, Reporter
    from rollout.plan import Plan
    from rollout.progress import InProgress
    from rollout.rebuild import RebuildResult
    from rollout.reference import Reference
    from rollout.scaffold import Draft
    from rollout.targets import TargetState

__all__ = [
    "AppStatus", "CheckResult", "Initialised", "Interruptions", "LockState", "MetricsOptions",
    "NotificationsInterrupted", "Promoted", "Promotion", "Shown", "Status", "check", "deploy", "drain_notifications", "error_json",
    "exit_code_of", "history", "init", "ledger_copy", "lock_release", "lock_status", "no_interruptions",
    "parse_release", "plan_deploy", "plan_promote", "plan_revert", "promote", "rebuild", "revert", "show", "status", "versions",
]

Interruptions = Callable[[], ContextManager[object]]
T = TypeVar("T")

APP_NAME = re.compile(r"^(?P<app>[A-Za-z0-9][A-Za-z0-9_-]*)(?P<rest>[:@].*)?$", re.DOTALL)
EXIT_KEYBOARD_INTERRUPT = 130  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C


def no_interruptions() -> ContextManager[object]:
    """The default `interrupts`: signals are left as they are (a front end that installs no handlers)."""
    return nullcontext()


class NotificationsInterrupted(RolloutError):
    """Ctrl-C while queued notifications were being sent: the rollout was over, some were not sent. Exit 130."""

    exit_code = EXIT_KEYBOARD_INTERRUPT


@dataclass(frozen=True)
class MetricsOptions:
    """Where deploy/revert/rebuild report their run: a Prometheus textfile (path) and/or a Pushgateway (URL).

    Written after the operation whatever its outcome (rollout.metrics); a failure to write is one
    warning through the reporter, never an error of the operation.
    """

    file: Optional[str] = None
    pushgateway: Optional[str] = None

    @property
    def wanted(self) -> bool:
        """Whether any metrics are to be written or pushed."""
        return bool(self.file or self.pushgateway)


# -- deploy, revert, rebuild: under the app's lock ----------------------------------------


def parse_release(text: str, cfg: "Config") -> tuple["AppConfig", "Reference"]:
    """The app and image reference `text` names: APP:TAG, APP@DIGEST, APP:TAG@DIGEST, or a full
    REGISTRY/REPO:TAG of the repository of exactly one configured app.

    Raises UserError (exit 2) when no tag or digest is given, no configured app matches, or a
    full reference's repository is shared by several apps (e.g. web and web-staging, the setup
    `rollout promote` is for: which one is meant cannot be guessed; name it, APP:TAG), and
    InvalidReference (exit 2) for text that is no image reference (Docker's reference grammar).
    """
    from rollout.reference import parse

    match = APP_NAME.match(text)
    if match and match["app"] in cfg.apps:
        app_cfg = cfg.apps[match["app"]]
        if not match["rest"]:
            raise UserError(f"give a tag or digest: rollout deploy {app_cfg.name}:TAG")
        return app_cfg, parse(app_cfg.image + match["rest"])
    ref = parse(text)
    given = "@" in text or ":" in text.rsplit("/", 1)[-1]  # parse() adds :latest to a bare name
    owners = [app_cfg for app_cfg in cfg.apps.values() if app_cfg.image == ref.name]
    if len(owners) > 1:
        suffix = (f":{ref.tag}" if ref.tag else "") + (f"@{ref.digest}" if ref.digest else "") if given else ":TAG"
        names = " and ".join(", ".join(a.name for a in owners).rsplit(", ", 1))
        raise UserError(f"{ref.name} is the repository of apps {names}: name the app, APP:TAG,"
                        f" e.g. rollout deploy {owners[0].name}{suffix}")
    if owners:
        if not given:
            raise UserError(f"give a tag or digest: rollout deploy {owners[0].name}:TAG")
        return owners[0], ref
    known = ", ".join(f"{a.name} ({a.image})" for a in cfg.apps.values()) or "none"
    raise UserError(f"{text!r} names no configured app: configured apps are {known}")


def deploy(cfg: "Config", release: str, *, reporter: "Reporter", allow_retag: bool = False, wait: float = 0.0,
           reason: Optional[str] = None, interrupts: Interruptions = no_interruptions,
           metrics: Optional[MetricsOptions] = None, force: bool = False) -> "Outcome":
    """Deploy `release` (parse_release's forms) to every target of its app, verify, revert on failure.

    Holds the app's lock, waiting up to `wait` seconds for it, and first finishes a rollout an
    earlier run left unfinished. Returns the Outcome: exit_code 0 healthy, 1 failed and reverted,
    3 failed and not reverted (also a recovery that failed: then nothing new was deployed), with
    the entry, its revert entry if any, and a one-line message. Raises UserError / RetagRefused /
    InvalidReference (2), LockHeld / LedgerBusy / LeaseLost (4), Unreachable / NotApplied (5 or
    2), Interrupted (130/143, after putting the last healthy release back).

    Idempotent (Orchestrator.deploy): the current healthy entry's digest running on every target is
    Outcome.unchanged, nothing recorded, unless `force`.
    """
    app, ref = parse_release(release, cfg)

    def run() -> "Outcome":
        with _docker_config(cfg), _ledger(cfg, reporter) as ledger:
            return _under_lock(cfg, app, ledger, reporter, wait, interrupts,
                               lambda orchestrator: orchestrator.deploy(ref, allow_retag=allow_retag, reason=reason,
                                                                        force=force))

    return _measured("deploy", app, cfg, metrics, reporter, run)


@dataclass(frozen=True)
class Promotion:
    """Where a promoted digest comes from: the source app's current healthy entry, and its ledger
    (shown redacted: a PostgreSQL URL's password never leaves this process)."""

    app: str
    entry_id: int
    tag: Optional[str]
    digest: str
    repository: str  # the source app's image repository
    ledger: str  # redacted; "" when it is the destination's own ledger

    def to_json(self) -> dict[str, Any]:
        """The `promoted` event's detail (and `promote --json`'s "promoted_from"): {app, entry, tag,
        digest, repository, ledger: null for the destination's own ledger}."""
        return {"app": self.app, "entry": self.entry_id, "tag": self.tag, "digest": self.digest,
                "repository": self.repository, "ledger": self.ledger or None}

    def describe(self) -> str:
        """The new entry's reason: 'promoted from web-staging #12 1.0.5', plus ' in ledger L' from another ledger."""
        where = f" in ledger {self.ledger}" if self.ledger else ""
        return f"promoted from {self.app} #{self.entry_id} {self.tag or self.digest}{where}"


@dataclass(frozen=True)
class Promoted:
    """What promote returns: the deploy's Outcome (exit code, message, entries) and its source."""

    outcome: "Outcome"
    source: Promotion

    @property
    def exit_code(self) -> int:
        """The deploy's exit code (0 healthy or already running, 1 reverted, 3 not reverted)."""
        return self.outcome.exit_code

    @property
    def message(self) -> str:
        """The deploy's one-line message."""
        return self.outcome.message

    def to_json(self) -> dict[str, Any]:
        """`promote --json`: the deploy's object (Outcome.to_json) plus "promoted_from" (Promotion.to_json)."""
        return {**self.outcome.to_json(), "promoted_from": self.source.to_json()}


def promote(cfg: "Config", app_name: str, *, source_app: Optional[str] = None, source_config: Optional[str] = None,
            reporter: "Reporter", wait: float = 0.0, reason: Optional[str] = None,
            interrupts: Interruptions = no_interruptions, metrics: Optional[MetricsOptions] = None,
            force: bool = False) -> Promoted:
    """Deploy to app_name the exact digest of the source app's current healthy entry (issue 17.6).

    The source is `source_app` in this config's ledger, or in `source_config`'s (another
    rollout.toml: its ledger; the app of the same name unless source_app is given). Refused
    with UserError (exit 2), nothing recorded, when the source's newest entry is not healthy
    (failed, or a rollout in progress) or it has none, when the source is the app itself, or
    when the digest is not in app_name's repository (registry HEADs, no GET). The new entry is
    a deploy of the digest with the source entry's tag when _promoted_ref finds that safe (else
    no tag), its reason names the source ("promoted from ...") and its `promoted` event holds
    Promotion.to_json(). Otherwise as deploy (lock, recovery, idempotency, exit codes, metrics);
    returns the deploy's Outcome with its source (Promoted).
    """
    app = cfg.app(app_name)
    origin = _promotion_source(cfg, app, source_app, source_config)
    reporter.info(f"{origin.describe()}: {origin.digest}")

    def deploy(orchestrator: "Orchestrator") -> "Outcome":
        with _promotable(app, origin):
            ref = _promoted_ref(orchestrator, app, origin, reporter)
            return orchestrator.deploy(ref, reason=f"{origin.describe()}: {reason}" if reason else origin.describe(), force=force, origin=origin.to_json())

    def run() -> Promoted:
        with _docker_config(cfg), _ledger(cfg, reporter) as ledger:
            return Promoted(_under_lock(cfg, app, ledger, reporter, wait, interrupts, deploy), origin)

    return _measured("promote", app, cfg, metrics, reporter, run)


def plan_promote(cfg: "Config", app_name: str, *, source_app: Optional[str] = None,
                 source_config: Optional[str] = None, reporter: "Reporter", force: bool = False) -> "Plan":
    """What promote(...) would do now (`promote --dry-run`), changing nothing, as plan_deploy: the
    plan of deploying the source's digest (with the tag promote would record), plus a note naming
    the source. Both ledgers are opened read-only. Raises what promote raises before it records
    anything: UserError (2: no healthy source, the digest not in app_name's repository, ...),
    RegistryUnreachable / TargetUnreachable (5)."""
    app = cfg.app(app_name)
    origin = _promotion_source(cfg, app, source_app, source_config, read_only=True)
    reporter.info(f"{origin.describe()}: {origin.digest}")

    def plan(orchestrator: "Orchestrator", _: "LedgerBackend") -> "Plan":
        with _promotable(app, origin):
            return orchestrator.plan_deploy(_promoted_ref(orchestrator, app, origin, reporter), force=force)

    result = _planned(cfg, app, reporter, plan)
    result.notes.insert(0, origin.describe())
    return result


@contextmanager
def _promotable(app: "AppConfig", origin: Promotion) -> Iterator[None]:
    """The registry's "no such manifest" for the promoted digest as promote's UserError (exit 2)."""
    from rollout.errors import TagNotFound

    try:
        yield
    except TagNotFound:
        raise UserError(f"{origin.digest} (#{origin.entry_id} of {origin.app}) is not in {app.image}: copy that"
                        f" exact image there first, e.g. crane copy {origin.repository}@{origin.digest}"
                        f" {app.image}") from None


def _promoted_ref(orchestrator: "Orchestrator", app: "AppConfig", origin: Promotion, reporter: "Reporter") -> "Reference":
    """What a promotion deploys: app's repository @ the source's digest, with the source entry's tag
    only when that tag means this digest for app as well, so that recording it never makes a later
    `deploy APP:TAG` refuse as a re-pushed tag (Orchestrator.resolve, digests_for_tag) or name other
    content than `revert --to TAG` restores: TAG in app's repository points at the digest now (one
    registry HEAD; absent or elsewhere, e.g. another registry holding only the copied digest), and
    app's ledger has no other digest for TAG. Otherwise the digest alone (the entry has no tag),
    said through the reporter. Raises RegistryUnreachable / RegistryAuthError (5) from that HEAD."""
    from rollout.errors import TagNotFound
    from rollout.reference import Reference

    ref = Reference(app.registry, app.repository, digest=origin.digest)
    if origin.tag is None:
        return ref
    tagged = ref.with_tag(origin.tag)  # checked: the tag comes from a ledger, maybe another config's
    try:
        now: Optional[str] = orchestrator.resolver.resolve(Reference(app.registry, app.repository, tag=tagged.tag))
    except TagNotFound:
        now = None
    if now != origin.digest:
        why = f"{app.image}:{origin.tag} {'points at ' + now if now else 'does not exist'}"
    elif orchestrator.ledger.digests_for_tag(app.name, origin.tag) - {origin.digest}:
        why = f"{app.name} recorded tag {origin.tag} with another digest"
    else:
        return tagged
    reporter.warn(f"recorded without tag {origin.tag}: {why}; the entry is the digest alone")
    return ref


def _promotion_source(cfg: "Config", app: "AppConfig", source_app: Optional[str],
                      source_config: Optional[str], read_only: bool = False) -> Promotion:
    """The source's current healthy entry as a Promotion; UserError (2) as promote says. `read_only`:
    open this config's own ledger read-only too (a dry run; another config's always is)."""
    from rollout import config as configuration
    from rollout import ledger as L
    from rollout.ledger_url import redact

    if source_config is not None:
        other = configuration.load(source_config)
        name = source_app or app.name
        if name not in other.apps:
            raise UserError(f"{source_config} has no app {name!r} to promote from: name it with --from")
        source_cfg, shown, image = other, redact(str(other.ledger_location)), other.apps[name].image
        if str(other.ledger_location) == str(cfg.ledger_location):
            shown = ""  # the same ledger after all ($ROLLOUT_LEDGER_URL names this command's ledger)
    elif source_app is not None:
        name, source_cfg, shown, image = source_app, cfg, "", cfg.app(source_app).image
    else:
        raise UserError(f"promote from where? rollout promote {app.name} --from SOURCE_APP (or --from-config OTHER.toml)")
    if not shown and name == app.name:
        raise UserError(f"{app.name} cannot be promoted from itself: name another app with --from")
    with _ledger(source_cfg, read_only=read_only or source_cfg is not cfg) as ledger:
        newest = ledger.history(name, 1)
    where = f" in ledger {shown}" if shown else ""
    if not newest:
        raise UserError(f"{name} has no entry{where} to promote: deploy it there first")
    entry = newest[0]
    if entry.status != L.HEALTHY:
        raise UserError(f"{name}'s current entry #{entry.id} ({entry.tag or entry.digest}){where} is {entry.status},"
                        " not healthy: promote once it is healthy (see `rollout history`)")
    return Promotion(name, entry.id, entry.tag, entry.digest, image, shown)


def plan_deploy(cfg: "Config", release: str, *, reporter: "Reporter", allow_retag: bool = False,
                force: bool = False) -> "Plan":
    """What deploy(release) would do now (`deploy --dry-run`), changing nothing: no lock, no entry,
    no recovery (an unfinished rollout is a note), no pull, no target touched (Orchestrator.plan_deploy).
    Raises what deploy raises before it records anything: UserError / RetagRefused /
    InvalidReference (2), RegistryUnreachable / TargetUnreachable (5), LedgerError (2)."""
    app, ref = parse_release(release, cfg)
    return _planned(cfg, app, reporter, lambda orchestrator, _: orchestrator.plan_deploy(
        ref, allow_retag=allow_retag, force=force))


def plan_revert(cfg: "Config", app_name: Optional[str] = None, *, reporter: "Reporter",
                to: Optional[str] = None) -> "Plan":
    """What revert(app_name, to=to) would do now (`revert --dry-run`), changing nothing (as
    plan_deploy). Raises UserError (2) when there is nothing to revert to or `to` names no
    healthy entry, TargetUnreachable (5)."""
    from rollout.entries import name_entry

    app = cfg.app(app_name)

    def plan(orchestrator: "Orchestrator", ledger: "LedgerBackend") -> "Plan":
        target_entry = None
        if to is not None:
            named = name_entry(ledger, app.name, to)
            reporter.info(named.how)
            target_entry = named.entry
        return orchestrator.plan_revert(target_entry)

    return _planned(cfg, app, reporter, plan)


def _planned(cfg: "Config", app: "AppConfig", reporter: "Reporter",
             plan: Callable[["Orchestrator", "LedgerBackend"], "Plan"]) -> "Plan":
    """plan(orchestrator, ledger) on the config's ledger without the lock, plus a note for an
    unfinished rollout (the real command would recover it first, which may change the plan)."""
    with _docker_config(cfg), _ledger(cfg, reporter, read_only=True) as ledger:
        result = plan(_orchestrator(cfg, app, ledger, reporter), ledger)
        unfinished = ledger.unfinished(app.name)
    if unfinished:
        result.notes.append(f"#{', #'.join(str(e.id) for e in unfinished)} unfinished: the real command would"
                            " first recover it (put the targets back on the current healthy entry)")
    return result


def revert(cfg: "Config", app_name: Optional[str] = None, *, reporter: "Reporter", to: Optional[str] = None,
           wait: float = 0.0, reason: Optional[str] = None, interrupts: Interruptions = no_interruptions,
           metrics: Optional[MetricsOptions] = None) -> "Outcome":
    """Put app `app_name` (None: the only app) back on an earlier healthy entry and verify it.

    `to` names that entry as rollout.entries reads it ('#ID', id:ID, TAG, tag:TAG; which entry it
    took is reported); None: the healthy entry before the current one with another digest. Lock,
    recovery, Outcome and errors as deploy; UserError (2) when there is nothing to revert to.
    """
    app = cfg.app(app_name)

    def run() -> "Outcome":
        from rollout.entries import name_entry

        with _docker_config(cfg), _ledger(cfg, reporter) as ledger:
            target_entry = None
            if to is not None:
                named = name_entry(ledger, app.name, to)
                reporter.info(named.how)
                target_entry = named.entry
            return _under_lock(cfg, app, ledger, reporter, wait, interrupts,
                               lambda orchestrator: orchestrator.revert(target_entry, reason=reason))

    return _measured("revert", app, cfg, metrics, reporter, run)


def rebuild(cfg: "Config", app_name: Optional[str] = None, *, reporter: "Reporter", check_only: bool = False,
            no_deploy: bool = False, force: bool = False, wait: float = 0.0,
            interrupts: Interruptions = no_interruptions, metrics: Optional[MetricsOptions] = None,
            no_cache: bool = False, explain: bool = False) -> "RebuildResult":
    """Rebuild, push and deploy the app's image when a base image or its build context changed (rollout.rebuild).

    `check_only`: only say whether a rebuild is due (exit_code 10), without the lock; `no_deploy`:
    build and push only; `force`: build even when the inputs are unchanged or failed before;
    `no_cache`: build even when the build key is unchanged (buildah: nothing pushed when the image
    is already there, `build:unchanged`); `explain`: only name the layers that differ between the
    last two builds of the same inputs (rebuild.explain), without the lock.
    Otherwise holds the app's lock for the whole run (inputs, build, push, deploy), waiting up to
    `wait` seconds, and first finishes a rollout an earlier run left unfinished (a failed
    recovery is the result, action "failed"). Sends the rebuild_skipped / rebuild_built
    notifications the orchestrator never sees. Returns the RebuildResult (its exit_code as
    deploy's, or 10); raises as deploy, plus ConfigError (2) for a missing build context and
    UserError (2) for `explain` with any of the other options (it would silently ignore them).
    """
    given = [flag for flag, on in (("--check", check_only), ("--no-deploy", no_deploy), ("--force", force),
                                   ("--no-cache", no_cache)) if on]
    if explain and given:
        raise UserError(f"rebuild --explain only compares two earlier builds and takes no {', '.join(given)}:"
                        " run it without them")
    app = cfg.app(app_name)
    return _measured("rebuild", app, cfg, metrics, reporter,
                     lambda: _rebuild(cfg, app, reporter, check_only, no_deploy, force, wait, interrupts, no_cache, explain))


def _rebuild(cfg: "Config", app: "AppConfig", reporter: "Reporter", check_only: bool, no_deploy: bool, force: bool,
             wait: float, interrupts: Interruptions, no_cache: bool = False, explain: bool = False) -> "RebuildResult":
    from rollout import lock
    from rollout import rebuild as rebuilding

    with _docker_config(cfg), _ledger(cfg, reporter) as ledger:
        registry = _registry(cfg)
        with interrupts():
            if explain:
                result = rebuilding.explain(app, ledger=ledger, registry=registry)
            elif check_only:
                result = rebuilding.plan(app, config_path=cfg.path, ledger=ledger, registry=registry,
                                         force=force, no_deploy=no_deploy, no_cache=no_cache)
            else:
                with lock.held(ledger, app.name, wait):
                    orchestrator = functools.cache(lambda: _orchestrator(cfg, app, ledger, reporter))
                    recovered = _recover_first(ledger, app, orchestrator, reporter)
                    if recovered is not None:
                        result = rebuilding.RebuildResult(app.name, recovered.exit_code, "failed", recovered.message,
                                                          entry=recovered.entry)
                    else:
                        result = rebuilding.rebuild(
                            app, config_path=cfg.path, ledger=ledger, registry=registry, orchestrator=orchestrator,
                            engine=rebuilding.local_engine, reporter=reporter, force=force, no_deploy=no_deploy,
                            no_cache=no_cache, state_dir=_state_dir(cfg))
    _notify_rebuild(cfg, app, result, reporter, check_only or explain)
    return result


def _notify_rebuild(cfg: "Config", app: "AppConfig", result: "RebuildResult", reporter: "Reporter",
                    check_only: bool) -> None:
    """rebuild_skipped / rebuild_built: the rebuild outcomes the orchestrator never sees."""
    from rollout import notify

    # Created even for --check, whose result is never sent: an unset ${NAME} in a [notify] URL
    # stops every command that notifies, `rebuild --check` included, as before.
    notifier = _notifier(cfg, reporter)
    event = None if check_only or notifier is None else notify.rebuild_event(result, app.image)
    if event is not None:
        notifier(*event)  # type: ignore[misc]


def _under_lock(cfg: "Config", app: "AppConfig", ledger: "LedgerBackend", reporter: "Reporter", wait: float,
                interrupts: Interruptions, action: Callable[["Orchestrator"], "Outcome"]) -> "Outcome":
    """Hold the app's lock, finish any interrupted rollout, then run action(orchestrator)."""
    from rollout import lock

    with lock.held(ledger, app.name, wait), interrupts():
        orchestrator = functools.cache(lambda: _orchestrator(cfg, app, ledger, reporter))
        orchestrator()  # built before any recovery: a target or [notify] in error stops the command here
        recovered = _recover_first(ledger, app, orchestrator, reporter)
        if recovered is not None:
            return recovered
        return action(orchestrator())


def _recover_first(ledger: "LedgerBackend", app: "AppConfig", orchestrator: Callable[[], "Orchestrator"],
                   reporter: "Reporter") -> Optional["Outcome"]:
    """Finish a rollout of app an earlier run left unfinished. Call it holding the app's lock.

    None when there was nothing to finish or the recovery went well (its message reported as
    info); the recovery's Outcome when it failed: the command must stop there.
    """
    if not ledger.unfinished(app.name):
        return None
    outcome = orchestrator().recover()
    if outcome is None or outcome.exit_code == EXIT_OK:
        if outcome is not None:
            reporter.info(outcome.message)
        return None
    return outcome


# -- status, history, check: read, and recover what was abandoned ---------------------------


@dataclass
class AppStatus:
    """One app for `status`: the ledger's current entry (None: no healthy entry yet) and what each target runs.

    `recovery` is the failed Outcome of a recovery status ran first (REVERT FAILED), else None;
    `in_progress` the rollout of the app running now (rollout.progress), else None.
    to_json() is the shape `status --json` prints: {app, current: entry|null, targets: [...], in_progress}.
    """

    app: str
    current: Optional["Entry"]
    targets: list["TargetState"]
    recovery: Optional["Outcome"] = None
    in_progress: Optional["InProgress"] = None

    def to_json(self) -> dict[str, Any]:
        """{app, current: Entry.to_json() | None, targets: [TargetState's fields], in_progress:
        InProgress.to_json() | None}; `recovery` is not part of it, nor `traffic` for a target without a
        router (the shape stays as before issue 14)."""
        return {"app": self.app, "current": self.current.to_json() if self.current else None,
                "targets": [{k: v for k, v in asdict(t).items() if k != "traffic" or v is not None}
                            for t in self.targets],
                "in_progress": self.in_progress.to_json() if self.in_progress else None}


@dataclass
class Status:
    """`status` of one or several apps; exit_code 5 (EXIT_UNREACHABLE) when a target could not be read, else 0."""

    apps: list[AppStatus] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """5 when any target's state could not be read, else 0 (drift alone is not an error: `check` says 10)."""
        return EXIT_UNREACHABLE if any(t.error for a in self.apps for t in a.targets) else EXIT_OK

    def to_json(self) -> Any:
        """One app's object when one app was asked for, else a list of them (README, `status --json`)."""
        reports = [a.to_json() for a in self.apps]
        return reports[0] if len(reports) == 1 else reports


def status(cfg: "Config", app_name: Optional[str] = None, *, reporter: "Reporter",
           interrupts: Interruptions = no_interruptions) -> Status:
    """What the ledger says should run and what each target runs, for one app (or every app).

    `app_name` None: the only app, or all of them when several are configured. An app with an
    unfinished entry is recovered first unless a live rollout holds its lock: then that rollout is
    the app's `in_progress` and its targets not in sync are `deploying`, not drift (rollout.progress);
    a recovery that cannot run is a warning, one that fails is the app's `recovery`. Targets are asked
    concurrently; one that cannot be read is its TargetState.error, not an exception. Raises
    ConfigError / UserError (2) for a bad config or an unknown app, LedgerError (2) / LedgerBusy (4).
    """
    from rollout import progress
    from rollout.targets import observe

    apps = [cfg.app(app_name)] if app_name or len(cfg.apps) == 1 else list(cfg.apps.values())
    result = Status()
    with _docker_config(cfg), _ledger(cfg, reporter) as ledger:
        for app in apps:
            recovery = _recover_if_abandoned(cfg, app, ledger, reporter, interrupts)
            # Read before `current`: a rollout that ends meanwhile then shows its targets in sync
            # (or deploying), never as drift from the entry it just replaced.
            running = progress.in_progress(ledger, app.name)
            current = ledger.current(app.name)
            targets = progress.mark(observe(app, current.digest if current else None), running)
            result.apps.append(AppStatus(app.name, current, targets, recovery, running))
    return result


def _recover_if_abandoned(cfg: "Config", app: "AppConfig", ledger: "LedgerBackend", reporter: "Reporter",
                          interrupts: Interruptions) -> Optional["Outcome"]:
    """`status` finishes an interrupted rollout too, unless a live rollout holds the app; the failed Outcome, if any."""
    from rollout import lock

    if not ledger.unfinished(app.name):
        return None
    try:
        # lock.held, not a bare lease: a recovery's verify can outlast one lease period.
        with lock.held(ledger, app.name, 0), interrupts():
            return _recover_first(ledger, app, functools.cache(lambda: _orchestrator(cfg, app, ledger, reporter)), reporter)
    except LockHeld:
        return None  # a rollout is running right now: its entry is not abandoned
    except LeaseLost as lost:
        reporter.warn(f"{app.name}: interrupted rollout not recovered: {lost}")
    except RolloutError as exc:
        reporter.warn(f"{app.name}: interrupted rollout not recovered yet: {exc}")
    return None


def history(cfg: "Config", app_name: Optional[str] = None, limit: int = 20) -> list["Entry"]:
    """The ledger's entries, newest first, at most `limit`; of one app, or of all apps when app_name is None.

    Works without a rollout.toml (cfg with no apps: any app name is read from the ledger as
    given). Raises UserError (2) for an app the config does not have, LedgerError (2) / LedgerBusy (4).
    """
    if app_name is not None and cfg.apps:
        cfg.app(app_name)
    with _ledger(cfg) as ledger:
        return ledger.history(app_name, limit)


@dataclass
class CheckResult:
    """`check` of some apps (rollout.check.AppCheck each); exit_code 5 unreachable, 10 changed, 0 unchanged."""

    apps: list["AppCheck"]

    @property
    def exit_code(self) -> int:
        """rollout.check.check_exit_code: 5 something could not be looked at, else 10 something changed, else 0."""
        from rollout.check import check_exit_code

        return check_exit_code(self.apps)

    def to_json(self) -> list[dict[str, Any]]:
        """The list `check --json` prints: AppCheck.to_json() per app, in the order asked."""
        return [a.to_json() for a in self.apps]


def check(cfg: "Config", app_names: Optional[list[str]] = None) -> CheckResult:
    """Drift, re-pushed tags and changed build inputs of the named apps (None or empty: all); never builds.

    Registry traffic is HEADs only. Unreachable targets or registries are each app's `errors`;
    raises UserError (2) for an unknown app, ConfigError (2) for a missing build context.
    """
    from rollout import check as checking
    from rollout.targets import open_target

    apps = [cfg.app(name) for name in app_names] if app_names else list(cfg.apps.values())
    with _docker_config(cfg), _ledger(cfg) as ledger:
        return CheckResult(checking.check(apps, config_path=cfg.path, ledger=ledger, registry=_registry(cfg),
                                          open_target=open_target))


@dataclass
class Shown:
    """One entry for `rollout show`: the entry, its per-target rows (rollout.ledger.TargetRow) and
    its events in time order ({at, event, detail}). Derived: `durations` (the `timings` event's
    seconds per phase, {} for entries recorded before it existed) and `log_tails` (target -> the
    lines its container wrote, captured at the failure: the `log-tail` events)."""

    entry: "Entry"
    targets: list[Any]
    events: list[dict[str, Any]]

    @property
    def durations(self) -> dict[str, float]:
        """Seconds per phase (resolve, pull, apply, verify, revert) from the entry's `timings` event."""
        from rollout.orchestrator import PHASES

        timings = [e["detail"].get("seconds", {}) for e in self.events if e["event"] == "timings"]
        seconds = timings[-1] if timings else {}
        return {phase: seconds[phase] for phase in PHASES if phase in seconds}  # in the order they run

    @property
    def log_tails(self) -> dict[str, list[str]]:
        """target -> the last lines of its failed container's log, as captured at the failure."""
        return {e["detail"]["target"]: e["detail"]["lines"] for e in self.events if e["event"] == "log-tail"}

    def to_json(self) -> dict[str, Any]:
        """The object `show --json` prints (README, "rollout show"): {entry, targets, events, durations, log_tails}."""
        return {"entry": self.entry.to_json(), "targets": [asdict(t) for t in self.targets], "events": self.events,
                "durations": self.durations, "log_tails": self.log_tails}


def show(cfg: "Config", text: str) -> Shown:
    """Entry `text` ('#12', 'id:12' or '12': rollout.entries.parse_entry_id) with its target rows and
    events. Works without a rollout.toml. Raises UserError (2) for text that is no entry id or an id
    the ledger does not have, LedgerError (2) / LedgerBusy (4) / LedgerUnreachable (5)."""
    from rollout.entries import parse_entry_id

    entry_id = parse_entry_id(text)
    with _ledger(cfg) as ledger:
        entry = ledger.find(entry_id)
        if entry is None:
            raise UserError(f"the ledger has no entry #{entry_id}: see `rollout history`")
        return Shown(entry, ledger.targets(entry_id), ledger.events(entry_id))


def versions() -> dict[str, Optional[str]]:
    """What `rollout --version` prints: the versions of rollout, Python, the Docker SDK (`docker`) and
    the Kubernetes client (`kubernetes`), from the installed distributions' metadata; None for a
    client that is not installed."""
    import importlib.metadata
    import platform

    def installed(name: str) -> Optional[str]:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"rollout": installed("rollout"), "python": platform.python_version(),
            "docker": installed("docker"), "kubernetes": installed("kubernetes")}


def error_json(app: Optional[str], error: BaseException) -> dict[str, Any]:
    """The result object a `--json` command prints when it ends in an error before any outcome
    (bad input, lock held, unreachable, interrupted): the keys of Outcome.to_json with `entry` null,
    `outcome` "error", `exit_code` (exit_code_of) and `error`, the same one line as stderr."""
    from rollout.orchestrator import PHASES

    return {"entry": None, "kind": None, "app": app, "tag": None, "digest": None, "repository": None,
            "outcome": "error", "exit_code": exit_code_of(error), "message": " ".join(str(error).split()),
            "error": " ".join(str(error).split()), "targets": [], "revert": None, "durations": dict.fromkeys(PHASES)}


# -- locks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockState:
    """A held lease and whether it is stale (its holder gone or its time up: the next rollout takes it over)."""

    lease: "Lease"
    stale: bool

    def to_json(self) -> dict[str, Any]:
        """The shape `lock status --json` prints: the lease's fields plus `stale`."""
        return {**self.lease.__dict__, "stale": self.stale}


def lock_status(cfg: "Config", app_name: Optional[str] = None) -> list[LockState]:
    """Who holds which app's lock (of one app, or all), ordered by app. Raises LedgerError (2) / LedgerBusy (4)."""
    from rollout import lock

    with _ledger(cfg) as ledger:
        leases = lock.read(ledger, app_name)
        now = ledger.now()  # the ledger's clock: Lease.expires_at is measured on it
    return [LockState(lease, lease.is_stale(now)) for lease in leases]


def lock_release(cfg: "Config", app_name: str) -> Optional["Lease"]:
    """Release app_name's lock whoever holds it (its holder is gone); the lease released, None if it was free."""
    from rollout import lock

    with _ledger(cfg) as ledger:
        return lock.force_release(ledger, app_name)


# -- ledger ---------------------------------------------------------------------------------------


def ledger_copy(cfg: "Config", destination: str) -> "CopyResult":
    """Copy the configured ledger (cfg.ledger_location) whole to `destination`, a postgresql:// URL
    or a SQLite file path, and verify it (rollout.ledger_copy.copy_ledger). Raises LedgerError (2:
    missing source, bad or non-empty destination), SourceBusy (4: a rollout in progress),
    LedgerUnreachable (5), CopyNotVerified (70); the destination is written only by a verified copy."""
    from rollout.ledger_copy import copy_ledger

    # The state dir: a PostgreSQL source replays its spooled writes before it is copied.
    return copy_ledger(cfg.ledger_location, destination, _state_dir(cfg))


# -- init ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Initialised:
    """What init wrote: the file and the draft it was rendered from (app, image, target, notes for the user)."""

    path: Path
    draft: "Draft"


def init(path: Path, *, from_container: Optional[str] = None, host: Optional[str] = None,
         from_deployment: Optional[str] = None, namespace: Optional[str] = None, kubeconfig: Optional[str] = None,
         context: Optional[str] = None, container: Optional[str] = None, app_name: Optional[str] = None,
         image: Optional[str] = None, force: bool = False, from_compose: Optional[str] = None,
         project_dir: Optional[str] = None, from_statefulset: Optional[str] = None,
         from_daemonset: Optional[str] = None) -> Initialised:
    """Write a commented rollout.toml at `path`, filled from a running container (on Docker host
    `host`), a Deployment, a Compose service (of the project in `project_dir`), or blank (rollout.scaffold).

    Raises UserError (2) when both sources are given or the file exists without `force`, and what
    the scaffold raises: ConfigError (2), TargetUnreachable (5).
    """
    from rollout import scaffold

    sources = {"--from-container": from_container, "--from-deployment": from_deployment, "--from-compose": from_compose,
               "--from-statefulset": from_statefulset, "--from-daemonset": from_daemonset}
    if from_container and from_deployment:  # said before "already exists", as it always was
        raise UserError("give --from-container or --from-deployment, not both")
    if path.exists() and not force:
        raise UserError(f"{path} already exists: pass --force to overwrite it")
    # The kind that drafts from the given source is found through the registry (rollout.targets.kinds).
    draft = scaffold.draft_from(sources, {"host": host, "namespace": namespace, "kubeconfig": kubeconfig,
                                          "context": context, "container": container, "project_dir": project_dir,
                                          "config_dir": str(path.parent)}, app_name, image)
    scaffold.write(path, scaffold.render(draft), force=force)
    return Initialised(path, draft)


# -- notifications and metrics --------------------------------------------------------------------


def drain_notifications() -> None:
    """Wait (bounded, rollout.notify.Dispatcher.drain) for the notifications still queued; call once before exiting.

    Not from atexit alone: at interpreter shutdown Apprise and urllib3 cannot start new work, so
    a notification still queued then would fail every try. Raises NotificationsInterrupted (exit
    130) on Ctrl-C: the rollout itself is over, only sending is given up.
    """
    notifying = sys.modules.get("rollout.notify")
    if notifying is None:  # only an operation that had something to send imported it
        return
    try:
        notifying.drain()
    except KeyboardInterrupt:
        raise NotificationsInterrupted("interrupted while sending notifications: some were not sent") from None


def exit_code_of(error: BaseException) -> int:
    """The exit code an exception ends a command with (README, "Exit codes"): its own exit_code for
    rollout's errors, Interrupted and LeaseLost; 130 for KeyboardInterrupt; 70 (a bug) otherwise."""
    if isinstance(error, (RolloutError, Interrupted, LeaseLost)):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return EXIT_KEYBOARD_INTERRUPT
    return EXIT_INTERNAL


def _measured(command: str, app: "AppConfig", cfg: "Config", metrics: Optional[MetricsOptions], reporter: "Reporter",
              run: Callable[[], T]) -> T:
    """run(), timed, its metrics written/pushed afterwards whatever its outcome; run() returns an object with exit_code."""
    if metrics is None or not metrics.wanted:
        return run()
    from rollout import metrics as metering

    started = time.monotonic()
    code = EXIT_INTERNAL
    try:
        result = run()
        code = result.exit_code  # type: ignore[attr-defined]
        return result
    except BaseException as error:
        code = exit_code_of(error)
        raise
    finally:
        finished = metering.Run(command=command, app=app.name, ended_at=time.time(),
                                duration=time.monotonic() - started, exit_code=code)
        metering.record(finished, ledger_location=cfg.ledger_location, apps=list(cfg.apps) or [app.name],
                        metrics_file=metrics.file, pushgateway=metrics.pushgateway, warn=reporter.warn)


# -- wiring -------------------------------------------------------------------------------------------


@contextmanager
def _ledger(cfg: "Config", reporter: Optional["Reporter"] = None, *, read_only: bool = False
            ) -> Iterator["LedgerBackend"]:
    """The config's ledger for the block, closed after. Opening a PostgreSQL ledger first replays
    the writes an earlier command spooled in the config's state directory (rollout.ledger_spool);
    when this command had to spool writes, the reporter gets one warning saying so. `read_only`
    (plans, a promotion's source): nothing created, migrated or replayed (open_ledger)."""
    from rollout.ledger import open_ledger

    ledger = open_ledger(cfg.ledger_location, _state_dir(cfg), read_only=read_only)
    try:
        yield ledger
    finally:
        ledger.close()  # first: writes still waiting are retried or spooled there
        report = ledger.outage_report()
        if report and reporter is not None:
            reporter.warn(report)


def _state_dir(cfg: "Config") -> Path:
    """The config's state directory (next to rollout.toml, or the working directory without one),
    where the SQLite ledger lives by default and a PostgreSQL ledger's writes are spooled."""
    return (cfg.path.parent if cfg.path else Path.cwd()) / "state"


@contextmanager
def _docker_config(cfg: "Config") -> Iterator[None]:
    """$DOCKER_CONFIG set to `[registry] docker_config` while an operation runs, then put back.

    Why the environment: the Docker SDK reads the engine's pull credentials (docker.auth) and
    the docker targets read Docker contexts from $DOCKER_CONFIG, and the target kinds take no
    other way to be given it yet (open_target(config, app)). Our own registry client is given
    it explicitly (_registry). Process-wide: see this module's docstring.
    """
    wanted = cfg.registry.docker_config
    if not wanted:
        yield
        return
    before = os.environ.get("DOCKER_CONFIG")
    os.environ["DOCKER_CONFIG"] = wanted
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DOCKER_CONFIG", None)
        else:
            os.environ["DOCKER_CONFIG"] = before


def _registry(cfg: "Config") -> Any:
    from rollout.registry import RegistryClient

    return RegistryClient(docker_config=cfg.registry.docker_config, insecure=cfg.registry.insecure,
                          ca_bundle=cfg.registry.ca_bundle)


def _notifier(cfg: "Config", reporter: "Reporter") -> Any:
    """The [notify] channels as an orchestrator listener (None when none are configured).
    Raises ConfigError (2) for a URL with an unset ${NAME}."""
    from rollout import notify

    return notify.notifier_for(cfg.notify, reporter.warn)


def _orchestrator(cfg: "Config", app: "AppConfig", ledger: "LedgerBackend", reporter: "Reporter") -> "Orchestrator":
    from rollout.health import verify
    from rollout.orchestrator import Orchestrator
    from rollout.targets import open_target

    targets = [open_target(t, app) for t in app.targets]
    return Orchestrator(app, ledger, _registry(cfg), targets,
                        lambda watch, policy, progress: verify(watch, policy, on_progress=progress), reporter,
                        listener=_notifier(cfg, reporter))
