"""`rollout check`: what changed since the ledger's current entry, without building or changing anything.

For each app: targets that drifted from the current entry (rollout.targets.observe),
the current entry's tag re-pushed with other content or gone (one registry HEAD),
and, for an app with a [build] table, base images that moved or a build context
that changed since the last build (rollout.build.gather_inputs: one HEAD per base).
Meant for cron: exit 0 nothing changed, 10 something changed, 5 something could
not be looked at. An app a live rollout is changing right now (rollout.progress) is reported
as `in_progress`; its targets not in sync are that rollout's work, not drift, so they change
nothing in the exit code (its re-pushed tag or changed build inputs still do).

Apps are looked at concurrently, CHECK_WORKERS at a time (a fleet's cron check takes about
the time of its slowest apps, not of all in turn, issue 17 point 8); the ledger is read on
the calling thread only, and every app shares the one registry client, so each registry
is first contacted once and each token fetched once (rollout.registry.RegistryClient).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from rollout.config import AppConfig
from rollout.errors import EXIT_CHANGED, EXIT_OK, EXIT_UNREACHABLE, RolloutError, TagNotFound, Unreachable, one_line
from rollout.ledger import Entry, LedgerBackend
from rollout.progress import InProgress, in_progress, mark
from rollout.reference import Reference
from rollout.targets import Target, TargetState, observe

if TYPE_CHECKING:
    # rollout.build and rollout.rebuild (the Dockerfile parser, the build context, the orchestrator)
    # are imported only for an app with a [build] table: a cron check of deployed apps skips them.
    from rollout.build import Inputs, Resolver

# Apps looked at at the same time: enough to hide round trips to registries and engines, few
# enough not to look like a burst to a registry's rate limiter (Docker Hub counts per IP).
CHECK_WORKERS = 8


@dataclass
class AppCheck:
    """One app's check: what runs, what the registry and the build inputs say, and what differs.

    `changes` and `errors` are one line each; `in_progress` the rollout changing its targets now
    (None: none); to_json() is the shape `check --json` prints.
    """

    app: str
    current: Entry | None = None
    targets: list[TargetState] = field(default_factory=list)
    tag_digest: str | None = None  # what the registry says the current entry's tag points at now
    inputs: Inputs | None = None
    last_build_key: str | None = None
    changes: list[str] = field(default_factory=list)  # one line each: what differs from the ledger
    errors: list[str] = field(default_factory=list)  # what could not be looked at
    in_progress: InProgress | None = None

    @property
    def changed(self) -> bool:
        """Whether anything differs from the ledger (exit 10 unless something could not be looked at)."""
        return bool(self.changes)

    def to_json(self) -> dict[str, Any]:
        """The object `check --json` prints for the app (targets as `status --json` shows them)."""
        return {"app": self.app, "changed": self.changed, "changes": self.changes, "errors": self.errors,
                "current": self.current.to_json() if self.current else None,
                "targets": [asdict(t) for t in self.targets], "tag_digest": self.tag_digest,
                "build": self.inputs.to_json() if self.inputs else None, "last_build_key": self.last_build_key,
                "in_progress": self.in_progress.to_json() if self.in_progress else None}


def check(apps: Iterable[AppConfig], *, config_path: Path | None, ledger: LedgerBackend, registry: Resolver,
          open_target: Callable[[Any, AppConfig], Target]) -> list[AppCheck]:
    """For each app, compare what its targets run, its current tag and its build inputs with the ledger.

    Never builds or changes anything; registry traffic is HEADs only: one for the current
    tag and one per base image. A target or registry that cannot be reached is an entry in
    the app's `errors`, not an exception; a build context or Dockerfile that is missing
    raises ConfigError (exit 2). Reports come in the order of `apps`.
    """
    # The ledger is read here, on this thread (a SQLite connection belongs to the thread that
    # opened it); only targets and registries are asked from the workers.
    # A rollout in progress is read before `current`, as `status` does (operations.status).
    known = [(app, in_progress(ledger, app.name), ledger.current(app.name), _last_build(ledger, app)) for app in apps]
    if len(known) <= 1:
        return [_check_app(*k, config_path, registry, open_target) for k in known]
    with ThreadPoolExecutor(max_workers=min(CHECK_WORKERS, len(known))) as pool:
        return list(pool.map(lambda k: _check_app(*k, config_path, registry, open_target), known))


def check_exit_code(reports: list[AppCheck]) -> int:
    """The exit code of `rollout check`: 5 (EXIT_UNREACHABLE) when something could not be looked at,
    else 10 (EXIT_CHANGED) when something changed, else 0: an app whose only difference is a rollout
    in progress is 0 (a cron check must not alert on every deploy; `in_progress` says it)."""
    if any(r.errors for r in reports):
        return EXIT_UNREACHABLE
    return EXIT_CHANGED if any(r.changed for r in reports) else EXIT_OK


def _last_build(ledger: LedgerBackend, app: AppConfig) -> tuple[str | None, dict[str, str]]:
    if app.build is None:
        return None, {}
    from rollout.rebuild import last_build_key

    return last_build_key(ledger, app.name)


def _check_app(app: AppConfig, running: InProgress | None, current: Entry | None,
               last_build: tuple[str | None, dict[str, str]], config_path: Path | None, registry: Resolver,
               open_target: Callable[[Any, AppConfig], Target]) -> AppCheck:
    report = AppCheck(app.name, current=current, in_progress=running)
    current = report.current
    report.targets = mark(observe(app, current.digest if current else None, open_target), running)
    for state in report.targets:
        if state.error:
            report.errors.append(f"target {state.name}: {state.error}")
        elif current and not state.in_sync and not state.deploying:
            traffic = state.traffic
            if state.running and state.digest == current.digest and traffic and not traffic["routed"]:
                # The right release runs, but the proxy sends the traffic elsewhere (e.g. after a reload).
                to = ", ".join(traffic["upstreams"]) or "nothing"
                report.changes.append(
                    f"target {state.name} runs #{current.id}, but {traffic['router']} route {traffic['route']} sends"
                    f" its traffic to {to}, not to its slot {traffic['slot']}: `rollout deploy"
                    f" {app.name}:{current.tag or current.digest}` switches it back")
                continue
            what = (f"runs {state.image}" if state.running else
                    f"is stopped ({state.image})" if state.image else "runs nothing")
            report.changes.append(f"target {state.name} {what}, not #{current.id} {current.image}")
    if current is not None and current.tag:
        try:
            report.tag_digest = registry.resolve(Reference(app.registry, app.repository, tag=current.tag))
            if report.tag_digest != current.digest:
                report.changes.append(f"tag {current.tag} now points at {report.tag_digest}, not {current.digest} (#{current.id})")
        except TagNotFound:
            report.changes.append(f"tag {current.tag} of #{current.id} is gone from the registry")
        except RolloutError as exc:
            report.errors.append(one_line(exc))
    if app.build is not None:
        _check_inputs(app, config_path, last_build, registry, report)
    return report


def _check_inputs(app: AppConfig, config_path: Path | None, last_build: tuple[str | None, dict[str, str]],
                  registry: Resolver, report: AppCheck) -> None:
    from rollout.build import gather_inputs

    try:
        inputs = gather_inputs(app, config_path, registry)
    except Unreachable as exc:
        report.errors.append(one_line(exc))
        return
    report.inputs = inputs
    key, recorded_bases = last_build
    report.last_build_key = key
    if key is None:
        report.changes.append("never built: a rebuild is due")
        return
    if key == inputs.build_key:
        return
    moved = [f"base {name} now {digest} (was {recorded_bases.get(name) or 'not a base'})"
             for name, digest in inputs.base_digests.items() if recorded_bases.get(name) != digest]
    report.changes.extend(moved or ["build context, Dockerfile, build args, target or platform changed"])
