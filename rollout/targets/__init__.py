"""The one interface every place we deploy to implements: docker hosts and Kubernetes Deployments.

Backends live one module each (rollout.targets.docker, rollout.targets.kubernetes),
registered with their settings schema in rollout.targets.kinds, and are imported
only when an app uses them, so the CLI starts fast.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

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

    @property
    def image(self) -> str:
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True)
class Running:
    """What a target actually runs: the image it was given and the digest behind it."""

    image: str | None
    digest: str | None
    detail: str = ""
    active: bool = True  # False: the container exists but is not running
    warning: str | None = None  # something the operator should know although it runs (one line)

    def serves(self, digest: str) -> bool:
        return self.active and self.digest == digest


@dataclass(frozen=True)
class Observation:
    """One look at a target during verification."""

    ready: bool
    failed: str | None = None
    detail: str = ""


class Watch(Protocol):
    def observe(self) -> Observation: ...

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning early as soon as the target reports an event."""

    def close(self) -> None: ...


class Target(Protocol):
    name: str

    def running(self) -> Running:
        """What runs now; raises TargetUnreachable when the target cannot be reached."""

    def prepare(self, release: Release) -> None:
        """Everything that can fail before anything changes (pull, checks)."""

    def apply(self, release: Release) -> str | None:
        """Move the target to release.image; return the image it ran before."""

    def watch(self, release: Release) -> Watch: ...

    def logs(self, lines: int = 20) -> str: ...

    def stop(self) -> None:
        """Stop what the last apply started (a first release failed and there is nothing to go back to)."""


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


def observe(app: "AppConfig", current_digest: str | None, opener: TargetFactory = open_target) -> list[TargetState]:
    """What every target of app runs now, asked of all at once (a fleet of ssh hosts answers in
    the time of the slowest, not of all in turn); one broken target does not hide the others."""

    def look(config: "TargetConfig") -> TargetState:
        state = TargetState(config.name)
        try:
            running = opener(config, app).running()
            state.image, state.digest, state.running = running.image, running.digest, running.active
            state.warning = running.warning
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
