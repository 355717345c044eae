"""In-memory stand-ins for the orchestrator's collaborators: registry resolver,
targets and their watches (behaviour scripted per digest), reporter, clock.

The ledger is never faked: tests use a real one (a SQLite file or a PostgreSQL database).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rollout import config as configuration
from rollout.config import AppConfig, HealthPolicy
from rollout.errors import NotApplied, TagNotFound, TargetUnreachable
from rollout.health import Verdict, verify
from rollout.ledger import LedgerBackend
from rollout.reference import Reference
from rollout.targets import Observation, Release, Running, Watch
from support.raw_ledger import run_sql

REGISTRY = "127.0.0.1:5000"
REPOSITORY = "shop/web"
IMAGE = f"{REGISTRY}/{REPOSITORY}"


def fake_digest(label: str) -> str:
    """A well-formed, distinct sha256 digest per label, so failures name something readable."""
    return "sha256:" + hashlib.sha256(label.encode()).hexdigest()


class FakeClock:
    """Monotonic seconds that move only when a fake watch waits."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Timeline = list[tuple[float, Observation]]


class ScriptedWatch:
    """A Watch whose observations follow a timeline of (seconds after creation, Observation).

    wait() advances the clock, returning early at the next scripted change, the way a
    real watch wakes on an engine event; every requested duration is recorded.
    """

    def __init__(self, timeline: Timeline, clock: FakeClock | None = None) -> None:
        assert timeline and timeline[0][0] == 0, "a timeline starts at 0"
        self.clock = clock or FakeClock()
        self.started = self.clock()
        self.timeline = sorted(timeline, key=lambda item: item[0])
        self.waits: list[float] = []
        self.observations = 0
        self.closed = False

    def observe(self) -> Observation:
        self.observations += 1
        elapsed = self.clock() - self.started
        current = self.timeline[0][1]
        for at, observation in self.timeline:
            if at <= elapsed + 1e-9:
                current = observation
        return current

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        elapsed = self.clock() - self.started
        upcoming = [at for at, _ in self.timeline if at > elapsed + 1e-9]
        step = min([seconds, *(at - elapsed for at in upcoming)])
        self.clock.advance(step)

    def close(self) -> None:
        self.closed = True


READY = Observation(ready=True, detail="running")
STARTING = Observation(ready=False, detail="starting")


def healthy_timeline() -> Timeline:
    return [(0, READY)]


def crashing_timeline(reason: str = "container exited with code 1", after: float = 0.5) -> Timeline:
    return [(0, STARTING), (after, Observation(ready=False, failed=reason, detail="exited"))]


@dataclass
class Behaviour:
    """How a fake target treats one digest."""

    timeline: Timeline = field(default_factory=healthy_timeline)
    prepare_error: Exception | None = None
    apply_error: Exception | None = None
    watch_error: Exception | None = None


def healthy() -> Behaviour:
    return Behaviour()


def crashes(reason: str = "container exited with code 1") -> Behaviour:
    return Behaviour(timeline=crashing_timeline(reason))


class FakeTarget:
    """A place to deploy to that keeps what it runs in memory and records every call."""

    def __init__(self, name: str, behaviours: dict[str, Behaviour] | None = None,
                 unreachable: Exception | None = None) -> None:
        self.name = name
        self.behaviours = behaviours or {}
        self.unreachable = unreachable
        self.image: str | None = None
        self.digest: str | None = None
        # What runs is stopped, not gone: a failed first release that stop() had nothing to put back for.
        self.halted = False
        # (image, digest) the last apply replaced, (None, None) when it replaced nothing; None before any apply.
        self.replaced: tuple[str | None, str | None] | None = None
        self.calls: list[tuple[str, str | None]] = []
        self.watches: list[ScriptedWatch] = []
        self.stopped = 0

    def behaviour(self, digest: str) -> Behaviour:
        return self.behaviours.get(digest, Behaviour())

    def running(self) -> Running:
        """As DockerTarget.running: a stopped container still names its image but is not active."""
        self.calls.append(("running", None))
        if self.unreachable is not None:
            raise self.unreachable
        if self.image is None:
            return Running(None, None, "no container", active=False)
        return Running(self.image, self.digest, "exited" if self.halted else "running", active=not self.halted)

    def prepare(self, release: Release) -> None:
        self.calls.append(("prepare", release.digest))
        error = self.behaviour(release.digest).prepare_error
        if error is not None:
            raise error

    def apply(self, release: Release) -> str | None:
        self.calls.append(("apply", release.digest))
        before = self.image
        error = self.behaviour(release.digest).apply_error
        if isinstance(error, NotApplied):
            raise error  # refused before changing anything, as the real targets promise
        # Even a failing apply may have removed the old container: the target counts as moved.
        self.replaced = (self.image, self.digest)
        self.image, self.digest, self.halted = release.image, release.digest, False
        if error is not None:
            raise error
        return before

    def watch(self, release: Release) -> ScriptedWatch:
        self.calls.append(("watch", release.digest))
        behaviour = self.behaviour(release.digest)
        if behaviour.watch_error is not None:
            raise behaviour.watch_error
        watch = ScriptedWatch(behaviour.timeline)
        self.watches.append(watch)
        return watch

    def logs(self, lines: int = 20) -> str:
        return f"{self.name}: last words of {self.digest}"

    def stop(self) -> None:
        """As the real targets' stop(): the failed release stops and what the last apply replaced
        runs again (DockerTarget.stop starts the replaced container; KubernetesTarget.stop patches
        the image back); a release that replaced nothing stays, stopped."""
        self.calls.append(("stop", self.digest))
        self.stopped += 1
        if self.replaced is None:
            return  # nothing was applied: nothing to stop
        image, digest = self.replaced
        if image is None:
            self.halted = True
        else:
            self.image, self.digest, self.halted = image, digest, False

    def applied(self) -> list[str | None]:
        return [digest for call, digest in self.calls if call == "apply"]


def unreachable(name: str) -> TargetUnreachable:
    return TargetUnreachable(f"target {name}: cannot connect to the engine")


class FakeResolver:
    """The registry: tag -> digest, changeable between calls to simulate a re-push."""

    def __init__(self, tags: dict[str, str] | None = None) -> None:
        self.tags = dict(tags or {})
        self.asked: list[Reference] = []

    def resolve(self, ref: Reference) -> str:
        self.asked.append(ref)
        if ref.tag is not None:
            if ref.tag not in self.tags:
                raise TagNotFound(f"{ref.name}:{ref.tag} not found")
            return self.tags[ref.tag]
        assert ref.digest is not None
        return ref.digest


class RecordingReporter:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def warn(self, message: str) -> None:
        self.lines.append(("warn", message))

    def progress(self, target: str, message: str) -> None:
        self.lines.append(("progress", f"[{target}] {message}"))

    def logs(self, target: str, text: str) -> None:
        self.lines.append(("logs", f"[{target}] {text}"))

    def said(self, kind: str) -> list[str]:
        return [message for k, message in self.lines if k == kind]


def scripted_verifier(watch: Watch, policy: HealthPolicy, progress: Callable[[str], None]) -> Verdict:
    """The real health.verify, on the scripted watch's own fake clock (targets verify in parallel)."""
    scripted = getattr(watch, "watch", watch)  # the orchestrator wraps every watch to cancel it on SIGINT
    assert isinstance(scripted, ScriptedWatch)
    return verify(watch, policy, clock=scripted.clock, on_progress=progress)


def app_config(target_names: tuple[str, ...] = ("local",), health: dict[str, Any] | None = None,
               path: Path = Path("/srv/rollout.toml"), rollout: dict[str, Any] | None = None) -> AppConfig:
    """A parsed app 'web' with docker targets, through the real config parser."""
    data = {"apps": {"web": {
        "image": IMAGE,
        "rollout": rollout or {},
        "health": health or {"timeout": 30, "interval": 1, "stable": 3},
        "targets": [{"name": name, "kind": "docker", "container": f"web-{name}"} for name in target_names],
    }}}
    return configuration.parse(data, path).app("web")


def plant(ledger: LedgerBackend, app: str, *, holder: str, host: str, pid: int, expires_at: float,
          token: str | None = None) -> None:
    """A lease row as another rollout (another process or machine) would have left it, on either
    backend; `expires_at` is wall-clock seconds on the ledger's clock (`ledger.now()`); `token`
    None: a lease as a rollout before schema version 3 took it."""
    run_sql(ledger, "INSERT INTO locks (app, holder, host, pid, acquired_at, expires_at, token) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [app, holder, host, pid, "2024-01-01T00:00:00+00:00", expires_at, token])


def take_over(ledger: LedgerBackend, app: str = "web") -> None:
    """What another rollout does once this one stalled past its lease: its own row replaces ours,
    in one commit on another connection, so our heartbeat never sees the app without a holder."""
    other = ledger.reopen()
    try:
        expires_at = other.now() + 60
        with other.transaction():
            run_sql(other, "DELETE FROM locks WHERE app = ?", [app])
            plant(other, app, holder="ops@other", host="other-host", pid=4242, expires_at=expires_at)
    finally:
        other.close()
