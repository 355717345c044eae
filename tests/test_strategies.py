"""Rolling and parallel strategies across several targets (the orchestrator with in-memory targets)."""

from __future__ import annotations

from pathlib import Path

from rollout import ledger as L
from rollout.errors import EXIT_OK, EXIT_REVERTED
from rollout.ledger import Ledger
from rollout.orchestrator import Orchestrator, Strategy, plan_batches
from rollout.reference import parse
from support.fakes import IMAGE, FakeTarget, RecordingReporter, FakeResolver, app_config, crashes, fake_digest, scripted_verifier

NAMES = ("h1", "h2", "h3", "h4", "h5")


def orchestrator(tmp_path: Path, rollout: dict) -> tuple[Orchestrator, list[FakeTarget], FakeResolver, Ledger]:
    ledger = Ledger(tmp_path / "ledger.db")
    targets = [FakeTarget(name) for name in NAMES]
    resolver = FakeResolver()
    app = app_config(NAMES, rollout=rollout)
    return Orchestrator(app, ledger, resolver, targets, scripted_verifier, RecordingReporter()), targets, resolver, ledger  # type: ignore[arg-type]


def publish(resolver: FakeResolver, tag: str) -> str:
    resolver.tags[tag] = fake_digest(tag)
    return fake_digest(tag)


def test_batches_follow_the_strategy() -> None:
    targets = [FakeTarget(n) for n in NAMES]
    assert [[t.name for t in b] for b in plan_batches(targets, Strategy("rolling", batch_size=2))] == [
        ["h1", "h2"], ["h3", "h4"], ["h5"]]
    assert [[t.name for t in b] for b in plan_batches(targets, Strategy())] == [list(NAMES)]


def test_rolling_stops_at_the_first_failing_batch_and_reverts_only_moved_targets(tmp_path: Path) -> None:
    orch, targets, resolver, ledger = orchestrator(tmp_path, {"strategy": "rolling", "batch_size": 2})
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


def test_parallel_moves_every_target_and_reverts_every_target(tmp_path: Path) -> None:
    orch, targets, resolver, ledger = orchestrator(tmp_path, {"strategy": "parallel", "max_parallel": 2})
    publish(resolver, "v1")
    assert orch.deploy(parse(f"{IMAGE}:v1")).exit_code == EXIT_OK
    bad = publish(resolver, "v2")
    targets[0].behaviours[bad] = crashes()
    outcome = orch.deploy(parse(f"{IMAGE}:v2"))
    assert outcome.exit_code == EXIT_REVERTED
    assert {row.target for row in ledger.targets(outcome.entry.id)} == set(NAMES)
    assert ledger.get(outcome.revert.id).status == L.HEALTHY
    assert all(t.digest == fake_digest("v1") for t in targets)
