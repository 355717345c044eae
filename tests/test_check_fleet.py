"""`rollout check` of many apps at once (issue 17 point 8), against a real token-auth registry.

The apps are checked concurrently (rollout.check.CHECK_WORKERS at a time) through one
registry client: the registry must still see what a one-by-one check costs it (its rate
limit): one manifest HEAD per image plus the one anonymous HEAD that learns the registry's
challenge, no GET, one token per repository. The targets are in-memory stand-ins running
the recorded digest (what the registry costs does not depend on them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout import check as checking
from rollout.config import AppConfig, HealthPolicy, TargetConfig
from rollout.ledger import HEALTHY, Ledger, NewEntry
from rollout.registry import RegistryClient
from rollout.targets import Running
from support.proxy import Fault, RegistryProxy, start_proxy
from support.registry_server import RegistryProcess, push_random_image, start_registry
from support.token_server import TokenServer, start_token_server

APPS = 12


class RunsDigest:
    """A target whose container runs `digest`, active."""

    def __init__(self, image: str, digest: str) -> None:
        self.image, self.digest = image, digest

    def running(self) -> Running:
        return Running(f"{self.image}@{self.digest}", self.digest, active=True)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TokenServer, RegistryProcess, dict[str, str]]]:
    """A token-auth registry (anonymous pull tokens, like Docker Hub) holding APPS repositories."""
    root = tmp_path_factory.mktemp("fleet")
    with start_token_server(root, users={}, allow_anonymous=True) as token, \
            start_registry(root, auth="token", token=token) as registry:
        digests = {f"fleet/app-{i:02d}": push_random_image(registry.base_url, f"fleet/app-{i:02d}", "v1",
                                                            auth=token.bearer_auth(f"fleet/app-{i:02d}"))
                   for i in range(APPS)}
        yield token, registry, digests


@pytest.fixture()
def proxy(fleet: tuple[TokenServer, RegistryProcess, dict[str, str]]) -> Iterator[RegistryProxy]:
    with start_proxy(fleet[1].host) as started:
        yield started


def apps_and_ledger(tmp_path: Path, host: str, digests: dict[str, str]) -> tuple[list[AppConfig], Ledger]:
    ledger = Ledger(tmp_path / "ledger.db")
    apps = []
    for number, (repository, digest) in enumerate(sorted(digests.items())):
        app = AppConfig(name=f"app{number:02d}", registry=host, repository=repository, health=HealthPolicy(),
                        targets=(TargetConfig(name="t", kind="docker", settings={}, health=HealthPolicy()),))
        entry = ledger.record(NewEntry(app=app.name, repository=app.image, tag="v1", digest=digest))
        ledger.set_status(entry.id, HEALTHY)
        apps.append(app)
    return apps, ledger


def test_many_unchanged_apps_cost_one_head_each_and_one_token_per_repository(
    tmp_path: Path, fleet: tuple[TokenServer, RegistryProcess, dict[str, str]], proxy: RegistryProxy
) -> None:
    token, _registry, digests = fleet
    apps, ledger = apps_and_ledger(tmp_path, proxy.host, digests)
    threads: set[int] = set()

    def open_target(_config: object, app: AppConfig) -> RunsDigest:
        threads.add(threading.get_ident())
        return RunsDigest(app.image, ledger_digests[app.name])

    ledger_digests = {app.name: digests[app.repository] for app in apps}
    tokens_before = token.token_requests
    try:
        reports = checking.check(apps, config_path=None, ledger=ledger, registry=RegistryClient(), open_target=open_target)
    finally:
        ledger.close()
    assert [r.app for r in reports] == [a.name for a in apps], "reports come in the order of the apps"
    assert all(not r.changes and not r.errors for r in reports), [r.changes + r.errors for r in reports]
    assert [r.tag_digest for r in reports] == [digests[a.repository] for a in apps]
    assert checking.check_exit_code(reports) == 0
    # One HEAD per image, plus the single anonymous one refused with the registry's challenge:
    # concurrent apps wait for that first contact instead of each being refused once.
    assert proxy.count("HEAD", "manifest") == APPS + 1
    assert proxy.count("GET", "manifest") == 0
    assert token.token_requests - tokens_before == APPS, "one token per repository"
    assert len(threads) > 1, "the apps were looked at from several threads"


def test_the_registry_is_asked_for_several_apps_at_once_after_the_first_contact(
    tmp_path: Path, fleet: tuple[TokenServer, RegistryProxy, dict[str, str]], proxy: RegistryProxy
) -> None:
    """Each manifest HEAD held 0.5 s by the proxy: once the first contact has learnt the challenge, the
    workers ask together (a one-by-one check, or workers queued behind the first contact's lock,
    would have one or two in flight)."""
    _token, _registry, digests = fleet
    apps, ledger = apps_and_ledger(tmp_path, proxy.host, digests)
    proxy.inject(Fault("delay", kind="manifest", method="HEAD", times=None, delay=0.5))
    client = RegistryClient()
    in_flight, peak, lock = [0], [0], threading.Lock()
    send = client._session.request  # the one session every thread shares: count requests inside it

    def counted(*args: object, **kwargs: object) -> object:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            return send(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                in_flight[0] -= 1

    client._session.request = counted  # type: ignore[method-assign]
    running = {app.name: digests[app.repository] for app in apps}
    try:
        reports = checking.check(apps, config_path=None, ledger=ledger, registry=client,
                                 open_target=lambda _c, app: RunsDigest(app.image, running[app.name]))
    finally:
        ledger.close()
        proxy.clear_faults()
    assert checking.check_exit_code(reports) == 0
    assert checking.CHECK_WORKERS // 2 < peak[0] <= checking.CHECK_WORKERS, f"at most {peak[0]} request(s) in flight"
    assert proxy.count("HEAD", "manifest") == APPS + 1


def test_a_repushed_tag_and_an_unreachable_registry_are_reported_per_app_among_many(
    tmp_path: Path, fleet: tuple[TokenServer, RegistryProcess, dict[str, str]], proxy: RegistryProxy
) -> None:
    token, registry, digests = fleet
    apps, ledger = apps_and_ledger(tmp_path, proxy.host, digests)
    moved = apps[3]
    new_digest = push_random_image(registry.base_url, moved.repository, "v2",
                                   auth=token.bearer_auth(moved.repository))
    # app 3's ledger says v1 is new_digest: the registry's v1 is now "another" digest to it.
    entry = ledger.record(NewEntry(app=moved.name, repository=moved.image, tag="v1", digest=new_digest))
    ledger.set_status(entry.id, HEALTHY)
    gone = AppConfig(name="gone", registry="127.0.0.1:9", repository="x/y", health=HealthPolicy(),
                     targets=apps[0].targets)
    entry = ledger.record(NewEntry(app="gone", repository=gone.image, tag="v1", digest=new_digest))
    ledger.set_status(entry.id, HEALTHY)
    running = {app.name: digests[app.repository] for app in apps} | {moved.name: new_digest, "gone": new_digest}
    try:
        reports = checking.check([*apps, gone], config_path=None, ledger=ledger,
                                 registry=RegistryClient(attempts=1, timeout=2.0),
                                 open_target=lambda _c, app: RunsDigest(app.image, running[app.name]))
    finally:
        ledger.close()
    by_app = {r.app: r for r in reports}
    assert by_app[moved.name].changes == [
        f"tag v1 now points at {digests[moved.repository]}, not {new_digest} (#{entry.id - 1})"]
    assert by_app["gone"].errors and "127.0.0.1:9" in by_app["gone"].errors[0]
    assert all(not r.changes and not r.errors for r in reports if r.app not in (moved.name, "gone"))
    assert checking.check_exit_code(reports) == 5
