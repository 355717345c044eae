"""Kubernetes pods as real clusters keep them: pods that restarted long before a rollout,
pods that linger while terminating, evicted pods that stay listed, and container logs.
`rollout` runs against the API simulator whose kubelet runs pods on the real Docker engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from kube_sim.harness import RunningSimulator, running_simulator, wait_for
from support.images import APP_IMAGE, digest_of
from support.kube import KubeApp

HOLD = "rollout-test/hold"  # a finalizer nobody removes but the test


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory, docker_client: Any, registry: str) -> Iterator[RunningSimulator]:
    # A short restart back-off so the tests can make pods restart quickly.
    with running_simulator(tmp_path_factory.mktemp("kube-pods"), "docker", ["--backoff-base", "1", "--backoff-cap", "2"]) as sim:
        yield sim


class Cluster(KubeApp):
    """One Deployment (container `app`, 2 replicas, maxSurge 1, maxUnavailable 0) and a rollout.toml for it."""

    def __init__(self, root: Path, sim: RunningSimulator) -> None:
        app = {"name": "app", "image": f"{APP_IMAGE}:good1", "env": [{"name": "PORT", "value": "8080"}]}
        super().__init__(root, sim, {"terminationGracePeriodSeconds": 5, "containers": [app]}, prefix="p", replicas=2,
                         strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
        self.write_config()

    def pods(self) -> list[dict[str, Any]]:
        return json.loads(self.kubectl("get", "pods", "-l", f"app={self.name}", "-o", "json"))["items"]

    def app_image(self) -> str:
        return self.images()["app"]

    def remove(self) -> None:
        for pod in self.pods():
            if pod["metadata"].get("finalizers"):
                self.sim.kubectl("patch", "pod", pod["metadata"]["name"], "--type=json",
                                 "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]')
        self.sim.kubectl("delete", "deployment", self.name, "--wait=false")


@pytest.fixture
def cluster(kube: RunningSimulator, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path, kube)
    yield made
    made.remove()


def app_status(pod: dict[str, Any]) -> dict[str, Any]:
    return next((s for s in pod["status"].get("containerStatuses") or [] if s["name"] == "app"), {})


def restart_each_pod(cluster: Cluster, docker_client: Any, times: int) -> dict[str, int]:
    """Kills every pod's app container `times` times (an OOM kill, a node hiccup: what weeks of
    running bring), each time waiting for the kubelet to restart it and the pod to be ready again.
    Returns restartCount per pod uid."""
    for _ in range(times):
        for pod in cluster.pods():
            before = app_status(pod)["restartCount"]
            docker_client.containers.get(app_status(pod)["containerID"].removeprefix("docker://")).kill()
            uid = pod["metadata"]["uid"]

            def restarted_and_ready() -> bool:
                now = next(p for p in cluster.pods() if p["metadata"]["uid"] == uid)
                return app_status(now).get("restartCount", 0) > before and bool(app_status(now).get("ready"))

            wait_for(restarted_and_ready, timeout=60, what="the killed container to be restarted and ready")
    return {p["metadata"]["uid"]: app_status(p)["restartCount"] for p in cluster.pods()}


def test_re_deploying_what_runs_on_pods_that_restarted_before_is_healthy(cluster: Cluster, docker_client: Any) -> None:
    """An idempotent CI re-run on long-lived pods: their old restarts are not this rollout's."""
    assert cluster.run("deploy", "web:good1").returncode == 0
    counts = restart_each_pod(cluster, docker_client, times=2)  # max_restarts is 2
    assert all(count >= 2 for count in counts.values())
    result = cluster.run("deploy", "web:good1", "--force")  # a re-deploy, not the no-op of what already runs
    assert result.returncode == 0, result.stderr
    newest = cluster.history()[0]
    assert (newest["kind"], newest["status"]) == ("deploy", "healthy")
    assert cluster.app_image() == f"{APP_IMAGE}@{digest_of(docker_client, 'good1')}"
    assert {p["metadata"]["uid"] for p in cluster.pods()} == set(counts)  # the same pods kept running


def test_a_revert_to_pods_that_restarted_before_is_healthy(cluster: Cluster, docker_client: Any) -> None:
    """A failed rollout keeps the old pods up; the revert scales their ReplicaSet back and those
    pods, with the restarts they had, are the release it reverts to."""
    assert cluster.run("deploy", "web:good1").returncode == 0
    counts = restart_each_pod(cluster, docker_client, times=2)
    result = cluster.run("deploy", "web:crash")
    assert result.returncode == 1, result.stderr  # failed and reverted; not "REVERT FAILED" (3)
    revert, failed, good = cluster.history()[:3]
    assert (revert["kind"], revert["status"], revert["reverts_to"]) == ("revert", "healthy", good["id"])
    assert failed["status"] == "failed"
    assert cluster.app_image() == f"{APP_IMAGE}@{digest_of(docker_client, 'good1')}"
    # The reused ReplicaSet's pods survived with their restart counts, as on a real cluster.
    survivors = {p["metadata"]["uid"]: app_status(p)["restartCount"] for p in cluster.pods() if p["metadata"]["uid"] in counts}
    assert survivors and all(survivors[uid] >= counts[uid] for uid in survivors)


def test_terminating_pods_are_not_drift(cluster: Cluster, docker_client: Any) -> None:
    """Right after a healthy deploy the replaced pods are still listed while they terminate (here
    held by a finalizer, as a real cluster's may be): status must not report them as drift."""
    assert cluster.run("deploy", "web:good1").returncode == 0
    old = [p["metadata"]["name"] for p in cluster.pods()]
    for name in old:
        cluster.kubectl("patch", "pod", name, "--type=merge", "-p", json.dumps({"metadata": {"finalizers": [HOLD]}}))
    assert cluster.run("deploy", "web:good2").returncode == 0
    terminating = [p for p in cluster.pods() if p["metadata"]["name"] in old]
    assert len(terminating) == len(old) and all(p["metadata"].get("deletionTimestamp") for p in terminating)
    state = cluster.status()
    assert state["in_sync"] is True and state["digest"] == digest_of(docker_client, "good2")


def test_evicted_pods_stay_listed_and_are_not_drift(cluster: Cluster, docker_client: Any) -> None:
    assert cluster.run("deploy", "web:good1").returncode == 0
    evicted = cluster.pods()[0]["metadata"]["name"]
    # What the kubelet's eviction manager writes (pkg/kubelet/eviction): phase Failed, reason Evicted.
    status = {"status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory. "}}
    cluster.kubectl("patch", "pod", evicted, "--subresource=status", "--type=merge", "-p", json.dumps(status))
    cluster.kubectl("rollout", "status", f"deployment/{cluster.name}", "--timeout=60s")  # replaced
    assert cluster.run("deploy", "web:good2").returncode == 0
    [pod] = [p for p in cluster.pods() if p["metadata"]["name"] == evicted]
    assert (pod["status"]["phase"], pod["status"]["reason"]) == ("Failed", "Evicted")  # still listed
    assert app_status(pod)["imageID"].endswith(digest_of(docker_client, "good1"))
    state = cluster.status()
    assert state["in_sync"] is True and state["digest"] == digest_of(docker_client, "good2")


def test_a_crashing_release_shows_the_log_of_the_container_that_died(cluster: Cluster) -> None:
    assert cluster.run("deploy", "web:good1").returncode == 0
    result = cluster.run("deploy", "web:crash")
    assert result.returncode == 1, result.stderr
    assert "fatal: cannot read /etc/app.conf" in result.stderr  # the crash image's own stderr, via pods/log


def test_restarts_between_the_patch_and_verification_are_the_release_s(cluster: Cluster, docker_client: Any) -> None:
    """Restarts count from the rollout's start (apply, before its PATCH), not from when the watch
    is built: pods that restart in between are judged with those restarts."""
    from rollout import config as configuration
    from rollout.targets import Release, open_target

    assert cluster.run("deploy", "web:good1").returncode == 0
    app = configuration.load(str(cluster.root / "rollout.toml")).app("web")
    target = open_target(app.targets[0], app)
    # The digest that runs already (an idempotent re-run): the same pods keep running.
    release = Release(99, APP_IMAGE, "good1", digest_of(docker_client, "good1"), "rollout: test")
    target.prepare(release)
    target.apply(release)
    restart_each_pod(cluster, docker_client, times=2)  # max_restarts is 2
    watch = target.watch(release)
    try:
        observation = watch.observe()
    finally:
        watch.close()
    assert observation.failed is not None and "restarted 2 times since the rollout started" in observation.failed
