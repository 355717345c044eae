"""Every path through the rollout state machine, with in-memory targets and a real ledger: every
test runs once on a SQLite file and once on a PostgreSQL database (the ledger_location fixture)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import pytest

from rollout import ledger as L
from rollout import lock
from rollout.config import AppConfig
from rollout.errors import (
    EXIT_OK,
    EXIT_REVERTED,
    EXIT_UNREACHABLE,
    EXIT_UNRECOVERED,
    EXIT_USAGE,
    LeaseLost,
    NotApplied,
    RetagRefused,
    RolloutError,
    TargetUnreachable,
    UserError,
)
from rollout.ledger import Entry, LedgerBackend, open_ledger
from rollout.orchestrator import Orchestrator, Outcome
from rollout.reference import parse
from rollout.targets import Release, Running
from support.fakes import (
    IMAGE,
    Behaviour,
    FakeResolver,
    FakeTarget,
    RecordingReporter,
    app_config,
    crashes,
    fake_digest,
    scripted_verifier,
    take_over,
    unreachable,
)


@dataclass
class Bed:
    ledger: LedgerBackend
    app: AppConfig
    targets: list[FakeTarget]
    resolver: FakeResolver = field(default_factory=FakeResolver)
    reporter: RecordingReporter = field(default_factory=RecordingReporter)

    def publish(self, tag: str, label: str | None = None, behaviour: Behaviour | None = None,
                on: tuple[str, ...] | None = None) -> str:
        """Push tag to the fake registry (as content `label`) and script how targets run it."""
        digest = fake_digest(label or tag)
        self.resolver.tags[tag] = digest
        if behaviour is not None:
            for target in self.targets:
                if on is None or target.name in on:
                    target.behaviours[digest] = behaviour
        return digest

    def orchestrator(self) -> Orchestrator:
        return Orchestrator(self.app, self.ledger, self.resolver, self.targets, scripted_verifier,  # type: ignore[arg-type]
                            self.reporter)

    def deploy(self, tag: str, **options: object) -> Outcome:
        return self.orchestrator().deploy(parse(f"{IMAGE}:{tag}"), **options)  # type: ignore[arg-type]

    def healthy(self, tag: str, label: str | None = None) -> Entry:
        self.publish(tag, label)
        outcome = self.deploy(tag)
        assert outcome.exit_code == EXIT_OK, outcome.message
        return outcome.entry

    def history(self) -> list[Entry]:
        return list(reversed(self.ledger.history("web")))


def make_bed(ledger_location: str, names: tuple[str, ...] = ("local",)) -> Iterator[Bed]:
    ledger = open_ledger(ledger_location)
    try:
        yield Bed(ledger, app_config(names), [FakeTarget(name) for name in names])
    finally:
        ledger.close()


@pytest.fixture
def bed(ledger_location: str) -> Iterator[Bed]:
    yield from make_bed(ledger_location)


@pytest.fixture
def pair(ledger_location: str) -> Iterator[Bed]:
    yield from make_bed(ledger_location, ("a", "b"))


def image(label: str) -> str:
    return f"{IMAGE}@{fake_digest(label)}"


def statuses(ledger: LedgerBackend, entry: Entry) -> list[str]:
    return [e["event"] for e in ledger.events(entry.id) if e["event"] == "recorded" or e["event"].startswith("status:")]


# -- healthy ------------------------------------------------------------------


def test_healthy_deploy_moves_the_target_and_records_every_step(bed: Bed) -> None:
    first = bed.healthy("v1")
    bed.publish("v2")
    outcome = bed.deploy("v2", reason="new checkout")

    assert outcome.exit_code == EXIT_OK and outcome.revert is None
    entry = outcome.entry
    assert (entry.status, entry.tag, entry.digest, entry.kind) == (L.HEALTHY, "v2", fake_digest("v2"), L.DEPLOY)
    assert (entry.previous_id, entry.reason) == (first.id, "new checkout")
    assert statuses(bed.ledger, entry) == ["recorded", "status:applying", "status:verifying", "status:healthy"]
    [row] = bed.ledger.targets(entry.id)
    assert (row.target, row.outcome, row.image_before, row.image_after) == ("local", "healthy", image("v1"), image("v2"))
    assert bed.targets[0].image == image("v2")
    assert bed.targets[0].watches[-1].closed
    assert any(line.startswith("[local]") for line in bed.reporter.said("progress"))


def test_first_deploy_has_nothing_before(bed: Bed) -> None:
    entry = bed.healthy("v1")
    assert entry.previous_id is None
    [row] = bed.ledger.targets(entry.id)
    assert (row.image_before, row.image_after, row.outcome) == (None, image("v1"), "healthy")


def test_deploy_by_digest_alone(bed: Bed) -> None:
    outcome = bed.orchestrator().deploy(parse(image("v7")))
    assert outcome.exit_code == EXIT_OK
    assert (outcome.entry.tag, outcome.entry.digest) == (None, fake_digest("v7"))


def test_all_targets_are_verified(pair: Bed) -> None:
    pair.publish("v1")
    outcome = pair.deploy("v1")
    assert outcome.exit_code == EXIT_OK
    assert [r.outcome for r in pair.ledger.targets(outcome.entry.id)] == ["healthy", "healthy"]
    assert all(t.image == image("v1") for t in pair.targets)


# -- failure and automatic revert ----------------------------------------------


def test_failed_deploy_reverts_to_the_previous_healthy_entry(bed: Bed) -> None:
    good = bed.healthy("v1")
    bed.publish("v2", behaviour=crashes("container exited with code 1"))
    outcome = bed.deploy("v2")

    assert outcome.exit_code == EXIT_REVERTED
    failed, revert = outcome.entry, outcome.revert
    assert (failed.status, failed.tag) == (L.FAILED, "v2")
    assert "container exited with code 1" in (failed.error or "")
    assert revert is not None
    assert (revert.kind, revert.status, revert.digest) == (L.REVERT, L.HEALTHY, good.digest)
    assert (revert.reverts_to, revert.previous_id) == (good.id, failed.id)
    assert "automatic revert" in (revert.reason or "")
    assert bed.targets[0].image == good.image
    assert [e.id for e in bed.history()] == [good.id, failed.id, revert.id]
    # The broken release's last log lines were shown.
    assert any("last words of " + fake_digest("v2") in text for text in bed.reporter.said("logs"))
    assert f"reverted to #{good.id}" in outcome.message


def test_two_broken_releases_land_on_the_last_healthy_digest(bed: Bed) -> None:
    good = bed.healthy("v1")
    bed.publish("v2", behaviour=crashes())
    bed.publish("v3", behaviour=crashes())
    assert bed.deploy("v2").exit_code == EXIT_REVERTED
    outcome = bed.deploy("v3")

    assert outcome.exit_code == EXIT_REVERTED
    assert outcome.revert is not None and outcome.revert.digest == good.digest
    assert bed.targets[0].digest == good.digest
    assert fake_digest("v2") not in {e.digest for e in bed.history() if e.status == L.HEALTHY}


def test_revert_goes_to_the_newest_healthy_release(bed: Bed) -> None:
    bed.healthy("v1")
    second = bed.healthy("v2")
    bed.publish("v3", behaviour=crashes())
    outcome = bed.deploy("v3")
    assert outcome.revert is not None and outcome.revert.reverts_to == second.id
    assert bed.targets[0].digest == second.digest


def test_first_deploy_failing_stops_it_and_exits_3(bed: Bed) -> None:
    bed.publish("v1", behaviour=crashes())
    outcome = bed.deploy("v1")
    assert outcome.exit_code == EXIT_UNRECOVERED
    assert outcome.revert is None and outcome.entry.status == L.FAILED
    # As a docker target: the failed container is stopped, not removed, and nothing serves.
    assert bed.targets[0].stopped == 1
    assert bed.targets[0].running() == Running(image("v1"), fake_digest("v1"), "exited", active=False)
    assert len(bed.history()) == 1
    assert "no healthy entry to go back to" in outcome.message


def test_first_deploy_failing_starts_again_what_it_replaced(bed: Bed) -> None:
    """A container (or Deployment image) that was there before rollout's first entry runs again,
    as DockerTarget.stop and KubernetesTarget.stop put it back."""
    target = bed.targets[0]
    target.image, target.digest = f"{IMAGE}:hand-made", fake_digest("hand-made")
    bed.publish("v1", behaviour=crashes())
    outcome = bed.deploy("v1")
    assert outcome.exit_code == EXIT_UNRECOVERED and outcome.revert is None
    assert target.stopped == 1
    assert target.running() == Running(f"{IMAGE}:hand-made", fake_digest("hand-made"), "running", active=True)
    [row] = bed.ledger.targets(outcome.entry.id)
    assert (row.outcome, row.image_before) == ("failed", f"{IMAGE}:hand-made")


def test_revert_that_fails_too_is_loud(bed: Bed) -> None:
    good = bed.healthy("v1")
    bed.publish("v2", behaviour=crashes("segfault"))
    # The world changed under the old release too (say, its database is gone).
    bed.targets[0].behaviours[good.digest] = crashes("cannot reach database")
    outcome = bed.deploy("v2")

    assert outcome.exit_code == EXIT_UNRECOVERED
    assert outcome.message.startswith("REVERT FAILED")
    assert "cannot reach database" in outcome.message
    assert outcome.revert is not None and outcome.revert.status == L.FAILED
    assert bed.ledger.current("web") == bed.ledger.get(good.id)


def test_revert_whose_prepare_fails_is_reported_as_revert_failed(bed: Bed) -> None:
    """The broken release is already running: this is exit 3, not 'unreachable, nothing changed' (5)."""
    good = bed.healthy("v1")
    bed.publish("v2", behaviour=crashes())
    bed.targets[0].behaviours[good.digest] = Behaviour(prepare_error=TargetUnreachable("target local: cannot pull"))
    try:
        outcome = bed.deploy("v2")
    except RolloutError as error:
        pytest.fail(f"deploy raised {type(error).__name__} (exit {error.exit_code}) with v2 left running: {error}")
    assert outcome.exit_code == EXIT_UNRECOVERED and outcome.message.startswith("REVERT FAILED")
    assert bed.ledger.unfinished("web") == []


def test_apply_failing_on_the_second_target_reverts_both(pair: Bed) -> None:
    good = pair.healthy("v1")
    pair.publish("v2", behaviour=Behaviour(apply_error=RuntimeError("name conflict\nwith details")), on=("b",))
    outcome = pair.deploy("v2")

    assert outcome.exit_code == EXIT_REVERTED
    a, b = pair.targets
    assert a.applied() == b.applied() == [good.digest, fake_digest("v2"), good.digest]
    assert a.image == b.image == good.image
    rows = {r.target: r for r in pair.ledger.targets(outcome.entry.id)}
    assert rows["a"].outcome == "applied"
    assert (rows["b"].outcome, rows["b"].detail) == ("failed", "apply failed: name conflict")
    # Nothing was verified once an apply had failed.
    assert fake_digest("v2") not in [d for call, d in a.calls if call == "watch"]


def test_apply_refused_before_any_change_is_not_a_failed_revert(bed: Bed) -> None:
    """A 403 on the patch: the target never changed, so no revert entry and exit 5 with the refusal."""
    good = bed.healthy("v1")
    refusal = NotApplied('target cluster: patch deployment web: forbidden: User "ci" cannot patch resource "deployments"')
    bed.publish("v2", behaviour=Behaviour(apply_error=refusal))
    with pytest.raises(NotApplied) as raised:
        bed.deploy("v2")

    assert raised.value.exit_code == EXIT_UNREACHABLE
    assert "cannot patch" in str(raised.value)
    assert bed.targets[0].image == good.image and bed.targets[0].stopped == 0
    newest = bed.ledger.history("web")[0]
    assert newest.kind == L.DEPLOY and newest.status == L.FAILED and "cannot patch" in (newest.error or "")
    assert [e.kind for e in bed.ledger.history("web")].count(L.REVERT) == 0
    assert bed.ledger.current("web") == bed.ledger.get(good.id)
    assert bed.ledger.unfinished("web") == []


def test_apply_refused_on_one_target_reverts_only_the_targets_that_changed(pair: Bed) -> None:
    good = pair.healthy("v1")
    pair.publish("v2", behaviour=Behaviour(apply_error=NotApplied("admission webhook denied the request", 5)), on=("b",))
    outcome = pair.deploy("v2")

    assert outcome.exit_code == EXIT_REVERTED
    a, b = pair.targets
    assert a.image == b.image == good.image
    assert b.applied() == [good.digest, fake_digest("v2")]  # the revert never touched b
    assert a.applied() == [good.digest, fake_digest("v2"), good.digest]
    assert outcome.revert is not None
    assert {r.target for r in pair.ledger.targets(outcome.revert.id)} == {"a"}
    rows = {r.target: r.outcome for r in pair.ledger.targets(outcome.entry.id)}
    assert rows == {"a": "applied", "b": "refused"}


def test_one_target_failing_verification_reverts_all_moved_targets(pair: Bed) -> None:
    good = pair.healthy("v1")
    pair.publish("v2", behaviour=crashes("readiness probe failed"), on=("a",))
    outcome = pair.deploy("v2")

    assert outcome.exit_code == EXIT_REVERTED
    assert [t.digest for t in pair.targets] == [good.digest, good.digest]
    rows = {r.target: r.outcome for r in pair.ledger.targets(outcome.entry.id)}
    assert rows == {"a": "failed", "b": "healthy"}
    assert outcome.revert is not None
    assert {r.target for r in pair.ledger.targets(outcome.revert.id)} == {"a", "b"}
    assert outcome.entry.error == "a: readiness probe failed"


def test_a_target_that_cannot_be_watched_is_not_healthy(bed: Bed) -> None:
    good = bed.healthy("v1")
    bed.publish("v2", behaviour=Behaviour(watch_error=RuntimeError("event stream refused")))
    try:
        outcome = bed.deploy("v2")
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"deploy raised {type(error).__name__}: {error}; entry left {bed.history()[-1].status}")
    assert outcome.exit_code == EXIT_REVERTED
    assert bed.targets[0].digest == good.digest


# -- refused before anything changes --------------------------------------------


def test_retagged_release_is_refused(bed: Bed) -> None:
    bed.healthy("v1", label="original")
    bed.publish("v1", label="repushed")
    with pytest.raises(RetagRefused) as caught:
        bed.deploy("v1")
    assert caught.value.exit_code == EXIT_USAGE
    assert fake_digest("original") in str(caught.value) and fake_digest("repushed") in str(caught.value)
    assert "--allow-retag" in str(caught.value)
    assert len(bed.history()) == 1
    assert bed.targets[0].applied() == [fake_digest("original")]


def test_allow_retag_accepts_the_new_digest(bed: Bed) -> None:
    bed.healthy("v1", label="original")
    bed.publish("v1", label="repushed")
    outcome = bed.deploy("v1", allow_retag=True)
    assert outcome.exit_code == EXIT_OK and outcome.entry.digest == fake_digest("repushed")
    assert bed.targets[0].digest == fake_digest("repushed")


def test_same_tag_same_digest_is_not_a_retag(bed: Bed) -> None:
    bed.healthy("v1")
    assert bed.deploy("v1").exit_code == EXIT_OK


def test_tag_and_digest_that_disagree_are_refused(bed: Bed) -> None:
    bed.publish("v1")
    with pytest.raises(UserError, match="not the digest given"):
        bed.orchestrator().deploy(parse(f"{IMAGE}:v1@{fake_digest('something else')}"))
    assert bed.history() == [] and bed.targets[0].calls == []


def test_tag_and_matching_digest_deploy(bed: Bed) -> None:
    bed.publish("v1")
    assert bed.orchestrator().deploy(parse(f"{IMAGE}:v1@{fake_digest('v1')}")).exit_code == EXIT_OK


def test_image_from_another_repository_is_refused(bed: Bed) -> None:
    with pytest.raises(UserError, match=f"not in app web's repository {IMAGE}"):
        bed.orchestrator().deploy(parse("127.0.0.1:5000/shop/api:v1"))
    assert bed.resolver.asked == [] and bed.history() == []


@pytest.mark.parametrize("error", [unreachable("b"), ConnectionError("engine socket gone")],
                         ids=["TargetUnreachable", "any exception"])
def test_unreachable_target_at_start_changes_nothing(pair: Bed, error: Exception) -> None:
    pair.publish("v1")
    pair.targets[1].unreachable = error
    with pytest.raises(TargetUnreachable) as caught:
        pair.deploy("v1")
    assert caught.value.exit_code == EXIT_UNREACHABLE
    assert "\n" not in str(caught.value)
    assert pair.history() == []
    assert all(not t.applied() for t in pair.targets)


def test_prepare_failing_fails_the_entry_and_moves_nothing(pair: Bed) -> None:
    good = pair.healthy("v1")
    pair.publish("v2", behaviour=Behaviour(prepare_error=TargetUnreachable("target b: cannot pull")), on=("b",))
    with pytest.raises(TargetUnreachable) as caught:
        pair.deploy("v2")
    assert caught.value.exit_code == EXIT_UNREACHABLE
    failed = pair.history()[-1]
    assert (failed.tag, failed.status, failed.error) == ("v2", L.FAILED, "target b: cannot pull")
    assert pair.ledger.targets(failed.id) == []
    assert all(t.applied() == [good.digest] for t in pair.targets)
    assert len(pair.history()) == 2  # no revert entry: nothing had moved


def test_prepare_failing_unexpectedly_does_not_leave_the_entry_in_progress(bed: Bed) -> None:
    bed.publish("v1", behaviour=Behaviour(prepare_error=OSError("disk full")))
    with pytest.raises(RolloutError):
        bed.deploy("v1")
    assert bed.ledger.unfinished("web") == []
    assert bed.targets[0].applied() == []


def test_unknown_tag_records_nothing(bed: Bed) -> None:
    with pytest.raises(UserError, match="not found"):
        bed.deploy("v404")
    assert bed.history() == []


# -- manual revert --------------------------------------------------------------


def test_revert_defaults_to_the_healthy_entry_before_with_another_digest(bed: Bed) -> None:
    first = bed.healthy("v1", label="A")
    bed.healthy("v2", label="B")
    current = bed.healthy("v2-alias", label="B")  # same content under another tag
    outcome = bed.orchestrator().revert()

    assert outcome.exit_code == EXIT_OK
    entry = outcome.entry
    assert (entry.kind, entry.status, entry.digest) == (L.REVERT, L.HEALTHY, first.digest)
    assert (entry.reverts_to, entry.previous_id, entry.tag) == (first.id, current.id, "v1")
    assert entry.reason == f"revert to #{first.id} requested"
    assert bed.targets[0].digest == first.digest


def test_revert_to_a_chosen_entry(bed: Bed) -> None:
    first = bed.healthy("v1")
    bed.healthy("v2")
    bed.healthy("v3")
    outcome = bed.orchestrator().revert(first, reason="v2 and v3 leak memory")
    assert outcome.exit_code == EXIT_OK and outcome.entry.reason == "v2 and v3 leak memory"
    assert bed.targets[0].digest == first.digest


def test_revert_to_a_never_healthy_entry_is_refused(bed: Bed) -> None:
    bed.healthy("v1")
    bed.publish("v2", behaviour=crashes())
    failed = bed.deploy("v2").entry
    before = bed.history()
    with pytest.raises(UserError, match=f"entry #{failed.id} was never healthy"):
        bed.orchestrator().revert(failed)
    assert bed.history() == before


def test_revert_with_nothing_to_go_back_to(bed: Bed) -> None:
    with pytest.raises(UserError, match="no healthy entry yet"):
        bed.orchestrator().revert()
    bed.healthy("v1")
    with pytest.raises(UserError, match="no earlier healthy entry"):
        bed.orchestrator().revert()


def test_revert_to_another_apps_entry_is_refused(bed: Bed) -> None:
    other = bed.ledger.record(L.NewEntry(app="api", repository=IMAGE, tag="v1", digest=fake_digest("api")))
    with pytest.raises(UserError, match="belongs to app api"):
        bed.orchestrator().revert(other)


def test_manual_revert_that_fails_goes_back_to_where_it_was(bed: Bed) -> None:
    first = bed.healthy("v1")
    current = bed.healthy("v2")
    bed.targets[0].behaviours[first.digest] = crashes()
    outcome = bed.orchestrator().revert(first)
    assert outcome.exit_code == EXIT_REVERTED
    assert outcome.revert is not None and outcome.revert.reverts_to == current.id
    assert bed.targets[0].digest == current.digest


# -- another rollout took the lock over ----------------------------------------


def deploy_holding_the_lock(bed: Bed, tag: str, verifier: object = scripted_verifier,
                            targets: list[FakeTarget] | None = None, reporter: RecordingReporter | None = None) -> Outcome:
    """Deploy as the CLI does: inside lock.held, whose ledger guard notices a take-over."""
    orchestrator = Orchestrator(bed.app, bed.ledger, bed.resolver, targets or bed.targets,  # type: ignore[arg-type]
                                verifier, reporter or bed.reporter)  # type: ignore[arg-type]
    with lock.held(bed.ledger, "web"):
        return orchestrator.deploy(parse(f"{IMAGE}:{tag}"))


def test_a_lost_lease_stops_before_the_next_write_and_leaves_the_entry_to_the_new_holder(bed: Bed) -> None:
    first = bed.healthy("v1")
    bed.publish("v2", behaviour=crashes())

    def verifier_during_which_the_lease_is_lost(watch, policy, progress):  # type: ignore[no-untyped-def]
        take_over(bed.ledger)
        return scripted_verifier(watch, policy, progress)

    with pytest.raises(LeaseLost, match=r"another rollout took over the lock on web during #2 \(ledger status now: verifying\)"):
        deploy_holding_the_lock(bed, "v2", verifier_during_which_the_lease_is_lost)
    entry = bed.ledger.get(2)
    # Not failed, not reverted: the crash verdict was not written and no revert was started,
    # so the new holder's recovery finds the entry unfinished and puts v1 back itself.
    assert entry.status == L.VERIFYING
    assert [e.id for e in bed.history()] == [first.id, entry.id]
    assert bed.targets[0].stopped == 0 and bed.targets[0].applied() == [fake_digest("v1"), fake_digest("v2")]
    assert [held.holder for held in lock.read(bed.ledger, "web")] == ["ops@other"], "the new holder keeps its lock"
    recovered = bed.orchestrator().recover()
    assert recovered is not None and recovered.exit_code == EXIT_OK
    assert bed.targets[0].image == image("v1")


def test_a_lost_lease_names_our_entry_even_after_the_new_holder_recorded_its_own(bed: Bed) -> None:
    bed.healthy("v1")
    bed.publish("v2", behaviour=crashes())

    def verifier_during_which_another_rollout_takes_over_and_recovers(watch, policy, progress):  # type: ignore[no-untyped-def]
        take_over(bed.ledger)
        other = bed.ledger.reopen()
        other.set_status(2, L.INTERRUPTED, error="interrupted: recovered by ops@other")
        other.record(L.NewEntry(app="web", repository=IMAGE, tag="v1", digest=fake_digest("v1"), kind=L.REVERT))
        other.close()
        return scripted_verifier(watch, policy, progress)

    with pytest.raises(LeaseLost, match=r"during #2 \(ledger status now: interrupted\)"):
        deploy_holding_the_lock(bed, "v2", verifier_during_which_another_rollout_takes_over_and_recovers)
    assert bed.ledger.get(3).status == L.PENDING, "the new holder's entry is left to it"


def test_a_lease_lost_during_a_pull_changes_no_target(bed: Bed) -> None:
    bed.healthy("v1")
    bed.publish("v2")

    class TakenOverWhilePulling(FakeTarget):
        def prepare(self, release: Release) -> None:
            super().prepare(release)
            take_over(bed.ledger)

    target = TakenOverWhilePulling("local")
    target.digest, target.image = bed.targets[0].digest, bed.targets[0].image
    with pytest.raises(LeaseLost, match=r"during #2 \(ledger status now: applying\)"):
        deploy_holding_the_lock(bed, "v2", targets=[target])
    assert target.applied() == [] and target.image == image("v1")
    assert bed.ledger.get(2).status == L.APPLYING


def test_a_lease_lost_during_a_pause_between_batches_leaves_the_next_batch_alone(pair: Bed) -> None:
    pair.app = app_config(("a", "b"), rollout={"strategy": "rolling", "batch_size": 1, "pause": 0.1})
    pair.healthy("v1")
    pair.publish("v2")

    class TakenOverWhilePausing(RecordingReporter):
        def info(self, message: str) -> None:
            super().info(message)
            if "pausing" in message:
                take_over(pair.ledger)

    with pytest.raises(LeaseLost):
        deploy_holding_the_lock(pair, "v2", reporter=TakenOverWhilePausing())
    a, b = pair.targets
    assert a.image == image("v2") and b.image == image("v1"), "the second batch was not touched"
    assert pair.ledger.get(2).status == L.VERIFYING


def test_a_lease_lost_before_a_recovery_changes_nothing(bed: Bed) -> None:
    bed.healthy("v1")
    bed.publish("v2")
    unfinished = bed.ledger.record(L.NewEntry(app="web", repository=IMAGE, tag="v2", digest=fake_digest("v2")))
    with pytest.raises(LeaseLost):
        with lock.held(bed.ledger, "web"):
            take_over(bed.ledger)
            bed.orchestrator().recover()
    assert bed.ledger.get(unfinished.id).status == L.PENDING
    assert len(bed.history()) == 2


@pytest.mark.parametrize("refusal", [NotApplied("target local: patch refused: forbidden", 5),
                                     TargetUnreachable("target local: cannot pull the healthy release")])
def test_a_recovery_whose_revert_cannot_start_is_a_failed_revert(bed: Bed, refusal: Exception) -> None:
    """Recovery puts back the last healthy release over an unverified one: if that cannot even start,
    the app is not on a healthy release (exit 3, revert_failed), never "nothing changed" (5)."""
    good = bed.healthy("v1")
    bed.publish("v2")
    unfinished = bed.ledger.record(L.NewEntry(app="web", repository=IMAGE, tag="v2", digest=fake_digest("v2")))
    target = bed.targets[0]
    target.image, target.digest = image("v2"), fake_digest("v2")  # the dead rollout had moved it
    if isinstance(refusal, NotApplied):
        target.behaviours[good.digest] = Behaviour(apply_error=refusal)
    else:
        target.behaviours[good.digest] = Behaviour(prepare_error=refusal)

    recovered = bed.orchestrator().recover()

    assert recovered is not None and recovered.exit_code == EXIT_UNRECOVERED
    assert recovered.message.startswith("REVERT FAILED")
    assert bed.ledger.get(unfinished.id).status == L.INTERRUPTED
    assert recovered.entry.kind == L.REVERT and recovered.entry.status == L.FAILED
    assert bed.ledger.unfinished("web") == []
    assert target.image == image("v2")


def test_a_ledger_that_stops_answering_mid_rollout_stops_it_widening(pair: Bed) -> None:
    """Once the ledger's server is away (writes waiting, LedgerBackend.writes_waiting), no further
    batch moves: the release fails and the batch already moved goes back."""
    pair.app = app_config(("a", "b"), rollout={"strategy": "rolling", "batch_size": 1, "pause": 0})
    pair.healthy("v1")
    pair.publish("v2")
    real = pair.ledger

    class AwayAfterTheFirstBatch:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def writes_waiting(self) -> bool:
            return any(t.image == image("v2") for t in pair.targets)

    pair.ledger = AwayAfterTheFirstBatch()  # type: ignore[assignment]
    outcome = pair.deploy("v2")

    a, b = pair.targets
    assert outcome.exit_code == EXIT_REVERTED
    assert "not moving the next batch (b)" in (outcome.entry.error or "")
    assert a.image == image("v1") and b.image == image("v1")
    assert fake_digest("v2") not in b.applied(), "the second batch was never touched"
