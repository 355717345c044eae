"""End to end on Kubernetes: `rollout deploy` against the API simulator whose kubelet runs
pods on the real Docker engine, pulling from the real registry."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest

from kube_sim.harness import RunningSimulator, running_simulator
from support.errors import one_line_error
from support.images import APP_IMAGE, REGISTRY, digest_of
from support.kube import KubeApp
from support.ports import free_port
from support.proxy import Fault, start_proxy

SIDECAR = f"{REGISTRY}/rollout-test/sidecar:v1"


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory, docker_client: Any, registry: str) -> Iterator[RunningSimulator]:
    # Kubernetes' real back-off (10 s, doubling): rollout must not need to wait it out.
    with running_simulator(tmp_path_factory.mktemp("kube"), "docker") as sim:
        yield sim


@pytest.fixture(autouse=True)
def deployments_removed_after_each_test(kube: RunningSimulator) -> Iterator[None]:
    # The simulator's kubelet inspects every running container a few times a second: pods left
    # from earlier tests would load the machine more with every test and slow the later ones.
    created_before = len(KubeProject.created)
    yield
    for name in KubeProject.created[created_before:]:
        kube.kubectl("delete", "deployment", name, "--wait=false")
    del KubeProject.created[created_before:]


class KubeProject(KubeApp):
    """Containers `app` (the app's image, tag good1) and `sidecar`, 2 replicas rolled one at a time."""

    created: list[str] = []  # Deployment names, removed after each test

    def __init__(self, root: Path, sim: RunningSimulator, image: str = APP_IMAGE, replicas: int = 2,
                 pull_policy: str = "IfNotPresent", command: list[str] | None = None) -> None:
        self.image = image
        app = {"name": "app", "image": f"{image}:good1", "imagePullPolicy": pull_policy,
               "env": [{"name": "PORT", "value": "8080"}], **({"command": command} if command else {})}
        sidecar = {"name": "sidecar", "image": SIDECAR, "env": [{"name": "PORT", "value": "8081"}]}
        super().__init__(root, sim, {"containers": [app, sidecar]}, replicas=replicas,
                         strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
        KubeProject.created.append(self.name)
        self.write_config()

    def write_config(self, image: str | None = None, **options: Any) -> None:  # type: ignore[override]
        super().write_config(image or self.image, **options)


def events(root: Path, entry_id: int) -> dict[str, datetime]:
    conn = sqlite3.connect(root / "state" / "ledger.db")
    rows = conn.execute("SELECT event, at FROM events WHERE entry_id = ? ORDER BY id", [entry_id]).fetchall()
    return {event: datetime.fromisoformat(at) for event, at in rows}


def test_good_deploy_pins_the_digest_and_shows_in_kubectl_history(kube: RunningSimulator, tmp_path: Path, docker_client: Any) -> None:  # noqa: E501
    project = KubeProject(tmp_path, kube)
    result = project.run("deploy", "web:good2")
    assert result.returncode == 0, result.stderr
    digest = digest_of(docker_client, "good2")
    images = project.images()
    assert images == {"app": f"{APP_IMAGE}@{digest}", "sidecar": SIDECAR}  # sidecar untouched
    annotations = project.deployment()["metadata"]["annotations"]
    [entry] = project.history()
    assert annotations["rollout/ledger-id"] == str(entry["id"])
    assert f"(ledger #{entry['id']})" in annotations["kubernetes.io/change-cause"]
    status = json.loads(project.run("status", "--json").stdout)
    assert status["targets"][0]["digest"] == digest and status["targets"][0]["in_sync"] is True
    history = kube.kubectl("rollout", "history", f"deployment/{project.name}")
    assert f"(ledger #{entry['id']})" in history.stdout
    # Someone moves the Deployment behind rollout's back: status reports the drift.
    assert kube.kubectl("set", "image", f"deployment/{project.name}", f"app={APP_IMAGE}:good1").returncode == 0
    assert kube.kubectl("rollout", "status", f"deployment/{project.name}", "--timeout=60s").returncode == 0
    [target] = json.loads(project.run("status", "--json").stdout)["targets"]
    assert target["digest"] == digest_of(docker_client, "good1") and target["in_sync"] is False
    assert "DRIFT" in project.run("status").stdout


def test_crash_looping_release_is_caught_in_seconds_and_reverted(kube: RunningSimulator, tmp_path: Path, docker_client: Any) -> None:  # noqa: E501
    project = KubeProject(tmp_path, kube)
    assert project.run("deploy", "web:good2").returncode == 0
    result = project.run("deploy", "web:crash")
    assert result.returncode == 1, result.stderr
    # The kubelet restarts a crashed container at once, then backs off (CrashLoopBackOff) after the
    # second crash, while restartCount is 1: the back-off, not max_restarts (2), is what fails it.
    assert "is in CrashLoopBackOff" in result.stderr and "times since the rollout started" not in result.stderr
    revert, failed, good = project.history()
    assert failed["status"] == "failed" and revert["kind"] == "revert" and revert["reverts_to"] == good["id"]
    assert project.images()["app"] == f"{APP_IMAGE}@{digest_of(docker_client, 'good2')}"
    assert kube.kubectl("rollout", "status", f"deployment/{project.name}", "--timeout=5s").returncode == 0
    # From starting to watch the crashing release to deciding to revert.
    failed_events = events(tmp_path, failed["id"])
    detection = (events(tmp_path, revert["id"])["recorded"] - failed_events["status:verifying"]).total_seconds()
    print(f"\nkubernetes crash-loop detection: {detection:.2f}s from verify start to revert start")
    assert detection < 60  # progressDeadlineSeconds defaults to 600: we must not be waiting on it
    history = kube.kubectl("rollout", "history", f"deployment/{project.name}").stdout
    assert f"(ledger #{failed['id']})" in history and f"(ledger #{revert['id']})" in history


def test_unpullable_release_is_caught_and_reverted(kube: RunningSimulator, tmp_path: Path, docker_client: Any) -> None:
    proxy = start_proxy(REGISTRY)
    try:
        image = f"{proxy.host}/rollout-test/app"
        project = KubeProject(tmp_path, kube, image=image, pull_policy="Always")
        assert project.run("deploy", "web:good2").returncode == 0
        # The registry still resolves the tag for rollout, but the cluster cannot pull the digest.
        good3 = digest_of(docker_client, "good3")
        proxy.inject(Fault("status", kind="manifest", times=None, status=404, path_contains=good3))
        result = project.run("deploy", "web:good3")
        assert result.returncode == 1, result.stderr
        # The rule (rollout.targets.kubernetes.PULL_ERROR): the kubelet's retry after its back-off failed too.
        assert "failed to pull its image again after the kubelet's back-off (ErrImagePull)" in result.stderr
        assert project.images()["app"] == f"{image}@{digest_of(docker_client, 'good2')}"
        assert project.history()[0]["kind"] == "revert"
    finally:
        proxy.close()


def test_a_digest_absent_from_the_registry_is_refused_before_anything_changes(kube: RunningSimulator, tmp_path: Path) -> None:  # noqa: E501
    project = KubeProject(tmp_path, kube)
    before = project.images()
    result = project.run("deploy", "web@sha256:" + "0" * 64)
    assert result.returncode == 2, result.stderr
    assert project.images() == before and project.history() == []


def test_never_ready_release_fails_at_the_health_timeout(kube: RunningSimulator, tmp_path: Path) -> None:
    project = KubeProject(tmp_path, kube)
    assert project.run("deploy", "web:good2").returncode == 0  # with the default timeout: two pods to roll
    project.write_config(timeout=8)
    result = project.run("deploy", "web:never-ready")
    assert result.returncode == 1, result.stderr
    assert "not healthy within 8s" in result.stderr
    assert project.images()["app"].endswith(project.history()[-1]["digest"])


def test_paused_or_empty_deployment_is_refused(kube: RunningSimulator, tmp_path: Path) -> None:
    project = KubeProject(tmp_path, kube, replicas=1)
    assert kube.kubectl("rollout", "pause", f"deployment/{project.name}").returncode == 0
    before = project.images()
    result = project.run("deploy", "web:good2")
    assert "is paused" in one_line_error(result, 2, after="progress")
    assert kube.kubectl("rollout", "resume", f"deployment/{project.name}").returncode == 0
    assert kube.kubectl("scale", f"deployment/{project.name}", "--replicas=0").returncode == 0
    result = project.run("deploy", "web:good2")
    assert "scaled to 0" in one_line_error(result, 2, after="progress")
    # Both refused before the Deployment changed: each entry failed, no revert, the image untouched.
    assert [(e["kind"], e["tag"], e["status"]) for e in project.history()] == [
        ("deploy", "good2", "failed"), ("deploy", "good2", "failed")]
    assert project.images() == before


def test_mixed_docker_and_kubernetes_targets_revert_together(kube: RunningSimulator, tmp_path: Path, docker_client: Any) -> None:  # noqa: E501
    container = f"rt-{uuid.uuid4().hex[:8]}"
    port = free_port()
    # The cluster's pods run a start script that refuses good3 (say, a config the cluster has and the
    # docker host has not): the same release is healthy on the docker host and crashes on Kubernetes.
    command = ["sh", "-c", "grep -q good3 /www/version && exit 1; exec httpd -f -p 127.0.0.1:$PORT -h /www"]
    project = KubeProject(tmp_path, kube, command=command)
    project.write_config(extra=f"""
[[apps.web.targets]]
name = "host"
kind = "docker"
container = "{container}"
network = "host"
env = {{ PORT = "{port}" }}
[apps.web.targets.health]
http = "http://127.0.0.1:{port}/health"
""")
    try:
        assert project.run("deploy", "web:good1").returncode == 0
        good1 = f"{APP_IMAGE}@{digest_of(docker_client, 'good1')}"
        result = project.run("deploy", "web:good3")
        assert result.returncode == 1, result.stderr
        assert "[host] running, http 200" in result.stderr  # the docker host alone was fine
        assert project.images()["app"] == good1
        assert docker_client.containers.get(container).attrs["Config"]["Image"] == good1
        assert project.run("status", "--json").returncode == 0
        revert, failed, _ = project.history()
        assert revert["kind"] == "revert" and revert["status"] == "healthy" and failed["status"] == "failed"
    finally:
        for leftover in docker_client.containers.list(all=True, filters={"name": container}):
            leftover.remove(force=True)


def conflicting_target(project: KubeProject, changes: int) -> tuple[Any, list[str]]:
    """The project's target, whose first `changes` reads are each followed by someone else's edit
    of the Deployment (a kubectl annotate), so the patch built from that read gets a real 409."""
    from rollout import config as configuration
    from rollout.targets import open_target

    app = configuration.load(str(project.root / "rollout.toml")).app("web")
    target = open_target(app.targets[0], app)
    read, edits = target._read, []

    def read_then_someone_edits() -> dict[str, Any]:
        deployment = read()
        if len(edits) < changes:
            edits.append(f"edit-{len(edits)}")
            done = project.sim.kubectl("annotate", "--overwrite", f"deployment/{project.name}", f"team/edit={edits[-1]}")
            assert done.returncode == 0, done.stderr
        return deployment

    target._read = read_then_someone_edits
    return target, edits


def test_a_deployment_changed_between_read_and_patch_is_read_again_not_overwritten(
        kube: RunningSimulator, tmp_path: Path, docker_client: Any) -> None:
    from rollout.targets import Release

    project = KubeProject(tmp_path, kube)
    target, edits = conflicting_target(project, changes=2)
    good2 = digest_of(docker_client, "good2")
    before = target.apply(Release(7, APP_IMAGE, "good2", good2, "rollout: test"))
    assert before == f"{APP_IMAGE}:good1" and edits == ["edit-0", "edit-1"]
    deployment = project.deployment()
    # Our image is in, and the edits made meanwhile are still there: the patch was built from a fresh read.
    assert project.images() == {"app": f"{APP_IMAGE}@{good2}", "sidecar": SIDECAR}
    assert deployment["metadata"]["annotations"]["team/edit"] == "edit-1"


def test_a_deployment_that_keeps_changing_is_given_up_on_unchanged(kube: RunningSimulator, tmp_path: Path,
                                                                    docker_client: Any) -> None:
    from rollout.errors import NotApplied
    from rollout.targets import Release
    from rollout.targets.kubernetes import CONFLICT_RETRIES

    project = KubeProject(tmp_path, kube)
    target, edits = conflicting_target(project, changes=CONFLICT_RETRIES)
    # Nothing of rollout's was stored: not applied (exit 5), so the orchestrator reverts nothing.
    with pytest.raises(NotApplied, match=r"\(5 times 409 Conflict\): another writer keeps updating it") as given_up:
        target.apply(Release(7, APP_IMAGE, "good2", digest_of(docker_client, "good2"), "rollout: test"))
    assert given_up.value.exit_code == 5
    assert len(edits) == CONFLICT_RETRIES
    assert project.images()["app"] == f"{APP_IMAGE}:good1"


def test_closing_a_watch_ends_its_streams_at_once_not_at_the_next_event(kube: RunningSimulator, tmp_path: Path,
                                                                         docker_client: Any) -> None:
    """A watch whose streams are idle (nothing changes) must not keep the verdict waiting when
    closed: close() used to wait for the blocked read, i.e. for the next event, which on a
    crash-looping pod is its next restart 10 s later."""
    from rollout import config as configuration
    from rollout.targets import Release, open_target

    project = KubeProject(tmp_path, kube)
    app = configuration.load(str(project.root / "rollout.toml")).app("web")
    target = open_target(app.targets[0], app)
    watch = target.watch(Release(1, APP_IMAGE, "good1", digest_of(docker_client, "good1"), "rollout: test"))
    assert watch.observe().ready  # the deployment is settled: its streams now wait for events that do not come
    closer = threading.Thread(target=watch.close)
    closer.start()
    closer.join(timeout=5)  # a hang guard, not a measurement: without the fix this blocks for ~30 s
    assert not closer.is_alive()
    for thread in watch._threads:
        thread.join(timeout=5)
        assert not thread.is_alive(), thread.name


def test_a_watch_closed_while_its_streams_are_still_opening_ends_at_once(kube: RunningSimulator, tmp_path: Path,
                                                                          docker_client: Any) -> None:
    """Closed straight away, a watch's threads are still listing: the streams they open afterwards
    must not outlive close() (they would block for a whole watch period)."""
    from rollout import config as configuration
    from rollout.targets import Release, open_target

    project = KubeProject(tmp_path, kube)
    app = configuration.load(str(project.root / "rollout.toml")).app("web")
    target = open_target(app.targets[0], app)
    for _ in range(5):
        watch = target.watch(Release(1, APP_IMAGE, "good1", digest_of(docker_client, "good1"), "rollout: test"))
        watch.close()
        for thread in watch._threads:
            thread.join(timeout=5)  # a hang guard, not a measurement
            assert not thread.is_alive(), thread.name
