"""The one interface every place we deploy to implements: docker hosts and Kubernetes Deployments.

Backends live one module each (rollout.targets.docker, rollout.targets.kubernetes),
registered with their settings schema in rollout.targets.kinds, and are imported
only when an app uses them, so the CLI starts fast.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from rollout.errors import one_line

if TYPE_CHECKING:
    from rollout.config import AppConfig, TargetConfig


@dataclass(frozen=True)
class Release:
    """What a target is asked to run: one ledger entry's exact image."""

    entry_id: int
    repository: str  # fully qualified, e.g. 127.0.0.1:5000/web
    tag: str | None
    digest: str
    change_cause: str
    # A revert entry (automatic, recovery or `rollout revert`): it puts back a release because the
    # one running is bad, so a target may clear what the bad release left stuck (the kubernetes
    # target deletes a StatefulSet's not-Ready pods of it, KubernetesTarget._force_rollback).
    revert: bool = False
    # The ids of the app's healthy entries with this digest. A kept container created by one of them
    # ran this release healthy and may be taken back; one a failed entry created may not (its
    # settings may be what failed: a `deploy --force` of the same digest after an edit).
    trusted: frozenset[int] = frozenset()

    @property
    def image(self) -> str:
        """The pinned reference a target runs, "REPOSITORY@sha256:HEX" (never a tag, which can move)."""
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True)
class Running:
    """What a target actually runs: the image it was given and the digest behind it."""

    image: str | None
    digest: str | None
    detail: str = ""
    active: bool = True  # False: the container exists but is not running
    warning: str | None = None  # something the operator should know although it runs (one line)
    # A docker target with a traffic section (issue 14): what its router sends new requests to,
    # {"router", "route", "upstreams": ["HOST:PORT", ...], "slot": the running container's slot or
    # None, "routed": whether the upstreams are exactly that slot}; None without a traffic section.
    traffic: dict[str, Any] | None = None
    entry: int | None = None  # the ledger entry that created what runs (a container's rollout.entry); None: unknown

    def made_by(self, entries: frozenset[int]) -> bool:
        """Whether what runs was created by one of these ledger entries; True when that cannot be
        told (`entry` None: a target kind that does not say, or a container rollout did not create)."""
        return self.entry is None or self.entry in entries

    def serves(self, digest: str) -> bool:
        """Whether the target runs `digest` ("sha256:HEX") now: a stopped container with it does not,
        nor, behind a router, one the router does not send the traffic to."""
        routed = self.traffic is None or bool(self.traffic.get("routed"))
        return self.active and routed and self.digest == digest


@dataclass(frozen=True)
class Observation:
    """One look at a target during verification."""

    ready: bool
    failed: str | None = None
    detail: str = ""
    # The host port the release is verified on (a docker target with a traffic section): "{port}"
    # in the health policy's http URL stands for it (rollout.health.verify).
    slot: int | None = None


class OutOfOrder(RuntimeError):
    """A Target method was called out of the order the Target protocol states (e.g. watch() before a
    successful apply()): a bug in the caller, never an operator's mistake, so it maps to no exit code
    of its own (rollout.cli reports it as an internal error, exit 70)."""


class Watch(Protocol):
    """Verification of one target after apply(), as rollout.health.verify drives it.

    Call order: observe() and wait() alternate, any number of times, until the verdict; close()
    once at the end (also after an error). Times are in seconds. observe() and wait() report a
    failure through the Observation, never by raising: an unreachable target is a failed look.
    """

    def observe(self) -> Observation:
        """One look now: ready (healthy by the target's own measure), failed (a one-line reason:
        a crash, a restart, a failed HEALTHCHECK, a pull error) or neither yet (detail says why).
        A failure seen once stays reported by every later call."""

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning early as soon as the target reports an event."""

    def close(self) -> None:
        """Release what the watch holds (event streams, threads); safe to call more than once."""


class Target(Protocol):
    """One place a release runs: a container on a Docker host, a Kubernetes Deployment, ...

    Implementations are registered by kind in rollout.targets.kinds and built by open_target, one
    object per command. rollout.orchestrator calls them in this order:

        running()                      any time, any number of times (status, check, before a deploy)
        prepare(release)               first; may be called alone (a dry look, a fleet's first pass)
        apply(release)                 after prepare; changes the target
        watch(release) -> Watch        after a successful apply (else OutOfOrder)
        logs(lines)                    after watch, when the verdict is a failure
        stop()                         only after a failed apply or a failed verification, and only
                                       when there is no healthy release to revert to

    Optional: settle(healthy), when the target has it (a docker target with a traffic section:
    rollout.targets.docker.target), on the release the last apply() started. settle(False) right
    after a failed verdict, on the verifying thread, before any ledger write: the traffic goes back
    to the release it replaced at once and the new one is stopped. settle(True) only once the
    whole entry is recorded healthy (every batch): the release it replaced is stopped (after the
    drain time), so until then a failure elsewhere reverts this target by a switch. What it raises
    is reported as a warning, never changes the verdict.
    Optional: keeps_log_tail (bool, default True), read after logs(): False when the text logs()
    returned may hold values it could not mask (a kubernetes container's env from Secrets): the
    orchestrator then shows it on stderr but does not store it in the ledger's log-tail event.
    Optional: tidy(), called by recovery (Orchestrator.recover) on every target before anything
    else: removes what an interrupted apply left beside the live release that never took the name
    or the traffic (a docker target: a new container under its temporary name, which may be
    running, unverified). Raises TargetUnreachable; recovery then warns and goes on.
    Optional: preview(release) -> rollout.plan.Preview, read-only (no pull, no change): whether the
    target would pull release.image and what would change; `--dry-run` calls it (issue 17.1).

    A revert is another prepare/apply/watch with the earlier release on a new object; stop() is
    not a revert. Every method but logs() may raise:

    - TargetUnreachable (exit 5): the target could not be reached or read.
    - NotApplied (its exit_code: 2 for a settings cause, 5 otherwise): apply refused before it
      changed anything, so nothing needs reverting (issue 11).
    - UserError / ConfigError (exit 2): the target's settings cannot work (e.g. no such container).

    Anything else raised by apply() means the target may have changed, and the orchestrator
    reverts it. Times are in seconds; digests are "sha256:HEX".
    """

    name: str

    def running(self) -> Running:
        """What runs now; raises TargetUnreachable when the target cannot be reached."""

    def prepare(self, release: Release) -> None:
        """Everything that can fail before anything changes (pull, checks); changes nothing the app runs.
        Raises TargetUnreachable (5), NotApplied or UserError (2)."""

    def apply(self, release: Release) -> str | None:
        """Move the target to release.image; return the image it ran before (None: nothing ran).
        Raises NotApplied when it refused before changing anything; other errors mean it may have changed."""

    def watch(self, release: Release) -> Watch:
        """A Watch of what the last apply() started; raises OutOfOrder when apply() did not succeed first."""

    def logs(self, lines: int = 20) -> str:
        """The last `lines` lines the released app wrote, the values of its environment masked
        ("" when there are none or they cannot be read: logs are a courtesy for a failure report
        and never raise)."""

    def stop(self) -> None:
        """Stop what the last apply started (a first release failed and there is nothing to go back to),
        bringing back what that apply replaced, as it was; nothing when apply() was never called."""


TargetFactory = Callable[["TargetConfig", "AppConfig"], Target]


def open_target(config: "TargetConfig", app: "AppConfig") -> Target:
    """The Target for one configured target of app, by its kind (rollout.targets.kinds.KINDS).

    The kind's module is imported here, on first use. Raises ValueError for a kind that is
    not registered (rollout.config refuses such a file before it gets here).
    """
    from rollout.targets.kinds import KINDS

    kind = KINDS.get(config.kind)
    if kind is None:
        raise ValueError(f"unknown target kind {config.kind!r}")
    return kind.open(config, app)


MAX_PARALLEL_LOOKS = 16  # status/check: targets asked at once


@dataclass
class TargetState:
    """One target as `status` and `check` report it: what runs, and whether it is what the ledger says."""

    name: str
    image: str | None = None
    digest: str | None = None
    running: bool = False
    in_sync: bool = False  # running the ledger's current digest; a stopped container is not
    error: str | None = None  # the target could not be reached or read
    warning: str | None = None  # it runs, but something needs the operator's eye (e.g. an init container)
    traffic: dict[str, Any] | None = None  # Running.traffic: where its router sends requests (None: no router)
    # not in sync because a live rollout of the app is changing it (rollout.progress.mark): not drift
    deploying: bool = False


def observe(app: "AppConfig", current_digest: str | None, opener: TargetFactory = open_target) -> list[TargetState]:
    """What every target of app runs now, asked of all at once (a fleet of ssh hosts answers in
    the time of the slowest, not of all in turn); one broken target does not hide the others."""

    def look(config: "TargetConfig") -> TargetState:
        state = TargetState(config.name)
        try:
            running = opener(config, app).running()
            state.image, state.digest, state.running = running.image, running.digest, running.active
            state.warning, state.traffic = running.warning, running.traffic
            state.in_sync = current_digest is not None and running.serves(current_digest)
        except Exception as exc:  # noqa: BLE001 - any failure of one target is reported, not raised
            state.error = one_line(exc)
        return state

    if len(app.targets) <= 1:
        return [look(config) for config in app.targets]
    # Daemon threads, not a pool: on Ctrl-C the command ends at once instead of waiting out
    # reads still running (they only read).
    states: list[TargetState] = [TargetState(config.name) for config in app.targets]
    slots = threading.BoundedSemaphore(MAX_PARALLEL_LOOKS)

    def look_into(index: int) -> None:
        with slots:
            states[index] = look(app.targets[index])

    threads = [threading.Thread(target=look_into, args=(i,), daemon=True) for i in range(len(app.targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return states
