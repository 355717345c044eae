"""Rolling and parallel strategies across several targets (the orchestrator with in-memory
targets): every test that runs the orchestrator runs once on a SQLite file and once on a
PostgreSQL database (the ledger_location fixture), so batches, their ledger rows and reverts
hold on both backends (issue 13)."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

from rollout import ledger as L
from rollout.errors import EXIT_OK, EXIT_REVERTED
from rollout.ledger import LedgerBackend, open_ledger
from rollout.orchestrator import Orchestrator, Strategy, plan_batches
from rollout.reference import parse
from rollout.targets import Release
from support.fakes import (
    IMAGE,
    FakeResolver,
    FakeTarget,
    RecordingReporter,
    ScriptedWatch,
    app_config,
    crashes,
    fake_digest,
    scripted_verifier,
)

NAMES = ("h1", "h2", "h3", "h4", "h5")


@pytest.fixture
def ledger(ledger_location: str) -> Iterator[LedgerBackend]:
    """The test's ledger, once per backend (ledger_location), closed after the test."""
    opened = open_ledger(ledger_location)
    yield opened
    opened.close()


def orchestrator(ledger: LedgerBackend, rollout: dict) -> tuple[Orchestrator, list[FakeTarget], FakeResolver]:
    targets = [FakeTarget(name) for name in NAMES]
    resolver = FakeResolver()
    app = app_config(NAMES, rollout=rollout)
    return Orchestrator(app, ledger, resolver, targets, scripted_verifier, RecordingReporter()), targets, resolver  # type: ignore[arg-type]


def publish(resolver: FakeResolver, tag: str) -> str:
    resolver.tags[tag] = fake_digest(tag)
    return fake_digest(tag)


def test_batches_follow_the_strategy() -> None:
    targets = [FakeTarget(n) for n in NAMES]
    assert [[t.name for t in b] for b in plan_batches(targets, Strategy("rolling", batch_size=2))] == [
        ["h1", "h2"], ["h3", "h4"], ["h5"]]
    assert [[t.name for t in b] for b in plan_batches(targets, Strategy())] == [list(NAMES)]


def test_rolling_stops_at_the_first_failing_batch_and_reverts_only_moved_targets(ledger: LedgerBackend) -> None:
    orch, targets, resolver = orchestrator(ledger, {"strategy": "rolling", "batch_size": 2})
    publish(resolver, "v1")
    assert orch.deploy(parse(f"{IMAGE}:v1")).exit_code == EXIT_OK
    bad = publish(resolver, "v2")
    targets[3].behaviours[bad] = crashes()  # h4, in the second batch, crashes
    outcome = orch.deploy(parse(f"{IMAGE}:v2"))
    assert outcome.exit_code == EXIT_REVERTED
    rows = {row.target: row.outcome for row in ledger.targets(outcome.entry.id)}
    assert rows == {"h1": "healthy", "h2": "healthy", "h3": "healthy", "h4": "failed"}  # h5 never touched
    revert_rows = {row.target for row in ledger.targets(outcome.revert.id)}
    assert revert_rows == {"h1", "h2", "h3", "h4"}
    assert all(t.digest == fake_digest("v1") for t in targets)
    assert [c for c in targets[4].calls if c[0] == "apply"] == [("apply", fake_digest("v1"))]  # h5 only ever got v1


def test_parallel_moves_every_target_and_reverts_every_target(ledger: LedgerBackend) -> None:
    orch, targets, resolver = orchestrator(ledger, {"strategy": "parallel", "max_parallel": 2})
    publish(resolver, "v1")
    assert orch.deploy(parse(f"{IMAGE}:v1")).exit_code == EXIT_OK
    bad = publish(resolver, "v2")
    targets[0].behaviours[bad] = crashes()
    outcome = orch.deploy(parse(f"{IMAGE}:v2"))
    assert outcome.exit_code == EXIT_REVERTED
    assert {row.target for row in ledger.targets(outcome.entry.id)} == set(NAMES)
    assert ledger.get(outcome.revert.id).status == L.HEALTHY
    assert all(t.digest == fake_digest("v1") for t in targets)


class Gate:
    """Counts how many targets are inside prepare/apply at once. Each caller is held until as many
    as max_parallel are inside together (or every target has come), so the parallelism the
    strategy allows is always observed and running them one at a time is seen. Then it stays a
    moment more (GRACE) in case one more comes in, as it would if the limit were not enforced:
    that moment can only reveal a wrong orchestrator, never fail a correct one."""

    GRACE = 0.3  # seconds

    def __init__(self, limit: int, total: int) -> None:
        self.limit, self.total = limit, total
        self.changed = threading.Condition()
        self.inside = self.entered = self.most = 0

    def hold(self) -> None:
        with self.changed:
            self.inside += 1
            self.entered += 1
            self.most = max(self.most, self.inside)
            self.changed.notify_all()
            # A hang guard only: with a correct orchestrator the condition comes true at once.
            self.changed.wait_for(lambda: self.inside >= self.limit or self.entered == self.total, timeout=30)
            self.changed.wait_for(lambda: self.inside > self.limit, timeout=self.GRACE)
            self.inside -= 1
            self.changed.notify_all()


class GatedTarget(FakeTarget):
    def __init__(self, name: str, gates: dict[str, Gate]) -> None:
        super().__init__(name)
        self.gates = gates

    def prepare(self, release: Release) -> None:
        self.gates["prepare"].hold()
        super().prepare(release)

    def apply(self, release: Release) -> str | None:
        self.gates["apply"].hold()
        return super().apply(release)


def test_parallel_runs_max_parallel_targets_at_once_and_no_more(ledger: LedgerBackend) -> None:
    gates = {step: Gate(limit=2, total=len(NAMES)) for step in ("prepare", "apply")}
    targets = [GatedTarget(name, gates) for name in NAMES]
    resolver = FakeResolver({"v1": fake_digest("v1")})
    app = app_config(NAMES, rollout={"strategy": "parallel", "max_parallel": 2})
    orch = Orchestrator(app, ledger, resolver, targets, scripted_verifier,  # type: ignore[arg-type]
                        RecordingReporter())
    assert orch.deploy(parse(f"{IMAGE}:v1")).exit_code == EXIT_OK
    assert {step: gate.most for step, gate in gates.items()} == {"prepare": 2, "apply": 2}
    assert all(t.digest == fake_digest("v1") for t in targets)


class Journal:
    """One ordered record, with monotonic times (seconds), of what targets and the reporter did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.steps: list[tuple[float, str]] = []

    def note(self, step: str) -> None:
        with self.lock:
            self.steps.append((time.monotonic(), step))


class JournalingTarget(FakeTarget):
    def __init__(self, name: str, journal: Journal) -> None:
        super().__init__(name)
        self.journal = journal

    def apply(self, release: Release) -> str | None:
        self.journal.note(f"apply {self.name}")
        return super().apply(release)

    def watch(self, release: Release) -> ScriptedWatch:
        watch = super().watch(release)
        journal, name, close = self.journal, self.name, watch.close

        def closed() -> None:  # the verdict on this target is in
            close()
            journal.note(f"verified {name}")

        watch.close = closed  # type: ignore[method-assign]
        return watch


class JournalingReporter(RecordingReporter):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    def info(self, message: str) -> None:
        super().info(message)
        if "pausing" in message:
            self.journal.note("pause")


def test_rolling_pauses_between_batches_after_each_batch_is_verified(ledger: LedgerBackend) -> None:
    pause = 0.2
    journal = Journal()
    targets = [JournalingTarget(name, journal) for name in NAMES]
    resolver = FakeResolver({"v1": fake_digest("v1")})
    app = app_config(NAMES, rollout={"strategy": "rolling", "batch_size": 2, "pause": pause})
    orch = Orchestrator(app, ledger, resolver, targets, scripted_verifier,  # type: ignore[arg-type]
                        JournalingReporter(journal))
    assert orch.deploy(parse(f"{IMAGE}:v1")).exit_code == EXIT_OK

    # Batches in order, each verified before the pause, no pause after the last one.
    def batch(*names: str) -> set[str]:
        return {f"apply {n}" for n in names} | {f"verified {n}" for n in names}

    steps = [step for _, step in journal.steps]
    assert [set(steps[0:4]), steps[4], set(steps[5:9]), steps[9], set(steps[10:])] == [
        batch("h1", "h2"), "pause", batch("h3", "h4"), "pause", batch("h5")]
    # The pause is waited out in full (a lower bound: Event.wait never returns early unless set).
    times = dict((step, at) for at, step in journal.steps if step.startswith("apply"))
    verified = {step: at for at, step in journal.steps if step.startswith("verified")}
    assert times["apply h3"] - max(verified["verified h1"], verified["verified h2"]) >= pause
    assert times["apply h5"] - max(verified["verified h3"], verified["verified h4"]) >= pause
