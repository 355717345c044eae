"""End to end on StatefulSets and DaemonSets (`workload = "statefulset" | "daemonset"`): `rollout
deploy` against the API simulator, whose kubelet runs pods on the real Docker engine pulling from
the real registry, and whose StatefulSet and DaemonSet controllers follow kube-controller-manager's
(tests/kube_sim/workloads.py). The simulator has two nodes, so a DaemonSet runs two pods."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest

from kube_sim.harness import RunningSimulator, running_simulator, wait_for
from support.cli import run_rollout
from support.errors import one_line_error
from support.images import APP_IMAGE, REGISTRY, digest_of
from support.kube import KubeApp
from support.proxy import Fault, start_proxy

WORKLOADS = ("statefulset", "daemonset")


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory, docker_client: Any, registry: str) -> Iterator[RunningSimulator]:
    # Kubernetes' real back-off (10 s, doubling): rollout must not need to wait it out.
    with running_simulator(tmp_path_factory.mktemp("kube"), "docker", ["--nodes", "2"]) as sim:
        yield sim


@pytest.fixture(autouse=True)
def workloads_removed_after_each_test(kube: RunningSimulator) -> Iterator[None]:
    # Pods left running load the machine for every later test (the kubelet inspects them all).
    created_before = len(Workload.created)
    yield
    for kind, name in Workload.created[created_before:]:
        kube.kubectl("delete", kind, name, "--wait=false")
    del Workload.created[created_before:]


class Workload(KubeApp):
    """A StatefulSet (2 replicas unless told) or DaemonSet (one pod on each of the 2 nodes) whose one
    container `app` runs the app's image at tag good1, and a rollout.toml moving it."""

    created: list[tuple[str, str]] = []

    def __init__(self, root: Path, sim: RunningSimulator, workload: str, *, image: str = APP_IMAGE, replicas: int = 2,
                 strategy: dict[str, Any] | None = None, pull_policy: str = "IfNotPresent") -> None:
        self.image = image
        app = {"name": "app", "image": f"{image}:good1", "imagePullPolicy": pull_policy,
               "env": [{"name": "PORT", "value": "8080"}]}
        # A short grace period: StatefulSet pods are replaced one after the other, each once the last is gone.
        pod_spec = {"containers": [app], "terminationGracePeriodSeconds": 2}
        super().__init__(root, sim, pod_spec, replicas=replicas, strategy=strategy, workload=workload,
                         ready_within="120s")
        Workload.created.append((workload, self.name))
        self.write_config(image, timeout=150, stable=2)

    def pods(self) -> dict[str, str]:
        """Pod name -> the image its `app` container runs, for the workload's live pods."""
        pods = json.loads(self.kubectl("get", "pods", "-l", f"app={self.name}", "-o", "json"))["items"]
        return {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in pods
                if not p["metadata"].get("deletionTimestamp")}


def pinned(docker_client: Any, tag: str, image: str = APP_IMAGE) -> str:
    return f"{image}@{digest_of(docker_client, tag)}"


@pytest.mark.parametrize("workload", WORKLOADS)
def test_deploy_and_upgrade_pin_the_digest_and_show_in_kubectl_history(
        kube: RunningSimulator, tmp_path: Path, docker_client: Any, workload: str) -> None:
    project = Workload(tmp_path, kube, workload)
    for tag in ("good2", "good3"):
        result = project.run("deploy", f"web:{tag}")
        assert result.returncode == 0, result.stderr
        assert project.images() == {"app": pinned(docker_client, tag)}
        # Healthy means kubectl agrees the rollout is complete, and every pod runs the release.
        assert kube.kubectl("rollout", "status", f"{workload}/{project.name}", "--timeout=5s").returncode == 0
        assert set(project.pods().values()) == {pinned(docker_client, tag)}
    assert len(project.pods()) == 2
    upgrade, first = project.history()
    annotations = project.deployment()["metadata"]["annotations"]
    assert annotations["rollout/ledger-id"] == str(upgrade["id"])
    # The controller copies the annotations onto the ControllerRevision `rollout history` lists.
    history = kube.kubectl("rollout", "history", f"{workload}/{project.name}").stdout
    assert f"(ledger #{first['id']})" in history and f"(ledger #{upgrade['id']})" in history
    status = project.status()
    assert status["digest"] == digest_of(docker_client, "good3") and status["in_sync"] is True


@pytest.mark.parametrize("workload", WORKLOADS)
def test_a_crash_looping_release_is_caught_and_reverted(
        kube: RunningSimulator, tmp_path: Path, docker_client: Any, workload: str) -> None:
    project = Workload(tmp_path, kube, workload)
    assert project.run("deploy", "web:good2").returncode == 0
    result = project.run("deploy", "web:crash")
    assert result.returncode == 1, result.stderr
    assert "CrashLoopBackOff" in result.stderr or "restarted" in result.stderr
    revert, failed, good = project.history()
    assert failed["status"] == "failed" and revert["kind"] == "revert" and revert["reverts_to"] == good["id"]
    assert revert["status"] == "healthy"
    # For a StatefulSet the revert had to delete the crash-looping pod itself (forced rollback,
    # named in a warning): the controller waits for it to become Ready before replacing anything.
    if workload == "statefulset":
        assert f"deleted pod {project.name}-1 (not Ready, running the release being reverted)" in result.stderr
    assert project.images() == {"app": pinned(docker_client, "good2")}
    assert set(project.pods().values()) == {pinned(docker_client, "good2")}


def test_a_forward_deploy_leaves_a_not_ready_pod_of_the_current_release_to_the_controller(
        kube: RunningSimulator, tmp_path: Path, docker_client: Any) -> None:
    # A pod that is running but not Ready (a replica replaying its log, a failing readiness probe:
    # here a HEALTHCHECK that stays "starting") may heal: a forward deploy must not delete it, only
    # a revert does (the crash-loop test above). The StatefulSet controller waits for it (OrderedReady).
    project = Workload(tmp_path, kube, "statefulset")
    assert project.run("deploy", "web:good2").returncode == 0
    stuck = f"{project.name}-1"
    project.kubectl("patch", "statefulset", project.name, "-p", json.dumps(
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": f"{APP_IMAGE}:never-ready"}]}}}}))

    def stuck_pod() -> dict[str, Any] | None:
        pods = json.loads(project.kubectl("get", "pods", "-l", f"app={project.name}", "-o", "json"))["items"]
        pod = next((p for p in pods if p["metadata"]["name"] == stuck), None)
        return pod if pod and not pod["metadata"].get("deletionTimestamp") else None

    def started_not_ready() -> dict[str, Any] | None:
        pod = stuck_pod()
        if not pod or pod["spec"]["containers"][0]["image"] != f"{APP_IMAGE}:never-ready":
            return None
        [status] = pod["status"].get("containerStatuses") or [{}]
        return pod if "running" in (status.get("state") or {}) and not status.get("ready") else None

    before = wait_for(started_not_ready, timeout=120, what=f"{stuck} running never-ready, not Ready")
    # Stop the deploy (SIGKILL) right after its patch, once it records the entry as verifying.
    killed = run_rollout("deploy", "web:good3", env={"ROLLOUT_CONFIG": str(project.config),
                                                     "ROLLOUT_TEST_KILL_AT": "status:verifying#1"}, bare=True)
    assert killed.returncode == -9, killed.stderr
    assert project.images() == {"app": pinned(docker_client, "good3")}  # the patch was made
    after = stuck_pod()
    assert after is not None, f"{stuck} was deleted by a forward deploy"
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert "deleted pod" not in killed.stderr
    assert project.pods()[f"{project.name}-0"] == pinned(docker_client, "good2")


@pytest.mark.parametrize("workload", WORKLOADS)
def test_dry_run_names_the_workload_kind(kube: RunningSimulator, tmp_path: Path, workload: str) -> None:
    project = Workload(tmp_path, kube, workload)
    plan = project.run("deploy", "web:good2", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    [target] = json.loads(plan.stdout)["targets"]
    kind = {"statefulset": "StatefulSet", "daemonset": "DaemonSet"}[workload]
    assert target["changes"] == f"{kind} default/{project.name} container app"
    human = project.run("deploy", "web:good2", "--dry-run")
    assert f"changes {kind} default/{project.name} container app" in human.stdout, human.stdout
    assert project.images() == {"app": f"{APP_IMAGE}:good1"}


@pytest.mark.parametrize("workload", WORKLOADS)
def test_an_unpullable_release_is_caught_and_reverted(
        kube: RunningSimulator, tmp_path: Path, docker_client: Any, workload: str) -> None:
    proxy = start_proxy(REGISTRY)
    try:
        image = f"{proxy.host}/rollout-test/app"
        project = Workload(tmp_path, kube, workload, image=image, pull_policy="Always")
        assert project.run("deploy", "web:good2").returncode == 0
        # The registry still resolves the tag for rollout, but the cluster cannot pull the digest.
        proxy.inject(Fault("status", kind="manifest", times=None, status=404,
                           path_contains=digest_of(docker_client, "good3")))
        result = project.run("deploy", "web:good3")
        assert result.returncode == 1, result.stderr
        assert "failed to pull its image again after the kubelet's back-off (ErrImagePull)" in result.stderr
        assert project.images() == {"app": pinned(docker_client, "good2", image)}
        revert = project.history()[0]
        assert (revert["kind"], revert["status"]) == ("revert", "healthy")
    finally:
        proxy.close()


@pytest.mark.parametrize("workload", WORKLOADS)
def test_on_delete_is_refused_before_anything_changes(kube: RunningSimulator, tmp_path: Path, workload: str) -> None:
    project = Workload(tmp_path, kube, workload, strategy={"type": "OnDelete"})

    def spec() -> tuple[Any, ...]:  # (status moves on while its pods start)
        workload = project.deployment()
        return workload["spec"], workload["metadata"].get("annotations"), workload["metadata"]["generation"]

    before = spec()
    result = project.run("deploy", "web:good2")
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "OnDelete" in line]
    assert f"{workload} {project.name} has updateStrategy OnDelete" in line and "RollingUpdate" in line
    assert spec() == before
    assert "Traceback" not in result.stderr


def test_a_partitioned_statefulset_moves_only_the_ordinals_at_or_above_the_partition(
        kube: RunningSimulator, tmp_path: Path, docker_client: Any) -> None:
    project = Workload(tmp_path, kube, "statefulset", replicas=3,
                       strategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 2}})
    good2 = pinned(docker_client, "good2")
    result = project.run("deploy", "web:good2")
    assert result.returncode == 0, result.stderr
    assert project.pods() == {f"{project.name}-0": f"{APP_IMAGE}:good1", f"{project.name}-1": f"{APP_IMAGE}:good1",
                              f"{project.name}-2": good2}
    # Ordinals below the partition keep their revision by design: that is no drift.
    status = project.status()
    assert status["digest"] == digest_of(docker_client, "good2") and status["in_sync"] is True
    # A release crashing on the one ordinal it reaches is caught and reverted the same; the
    # ordinals below the partition were never touched.
    result = project.run("deploy", "web:crash")
    assert result.returncode == 1, result.stderr
    assert (project.history()[0]["kind"], project.history()[0]["status"]) == ("revert", "healthy")
    assert project.pods() == {f"{project.name}-0": f"{APP_IMAGE}:good1", f"{project.name}-1": f"{APP_IMAGE}:good1",
                              f"{project.name}-2": good2}


@pytest.mark.parametrize("workload", WORKLOADS)
def test_init_drafts_a_target_from_the_workload_then_deploys(
        kube: RunningSimulator, tmp_path: Path, docker_client: Any, workload: str) -> None:
    project = Workload(tmp_path, kube, workload)
    config = tmp_path / "drafted" / "rollout.toml"
    config.parent.mkdir()
    result = run_rollout("-c", str(config), "init", f"--from-{workload}", project.name,
                         "--kubeconfig", str(kube.kubeconfig), "--app", "web", cwd=config.parent)
    assert result.returncode == 0, result.stderr
    [target] = tomllib.loads(config.read_text())["apps"]["web"]["targets"]
    assert target == {"name": "cluster", "kind": "kubernetes", "kubeconfig": str(kube.kubeconfig),
                      "namespace": "default", "workload": workload, workload: project.name, "container": "app"}
    result = run_rollout("-c", str(config), "deploy", "web:good2", cwd=config.parent, timeout=300)
    assert result.returncode == 0, result.stderr
    assert project.images() == {"app": pinned(docker_client, "good2")}

    missing = run_rollout("-c", str(tmp_path / "other.toml"), "init", f"--from-{workload}", "nope",
                          "--kubeconfig", str(kube.kubeconfig), cwd=tmp_path)
    assert missing.returncode == 2
    assert f"no {workload} 'nope' in namespace default" in one_line_error(missing, 2)
    assert not (tmp_path / "other.toml").exists()


def test_a_workload_setting_naming_the_wrong_key_is_refused_at_load(tmp_path: Path) -> None:
    config = tmp_path / "rollout.toml"
    config.write_text('[apps.web]\nimage = "r/web"\n[[apps.web.targets]]\nname = "c"\nkind = "kubernetes"\n'
                      'workload = "statefulset"\ndeployment = "db"\n')
    result = run_rollout("-c", str(config), "status", cwd=tmp_path)
    assert result.returncode == 2
    error = one_line_error(result, 2)
    assert "statefulset is missing" in error and str(config) in error
    config.write_text(config.read_text().replace('deployment = "db"', 'statefulset = "db"\ndaemonset = "x"'))
    result = run_rollout("-c", str(config), "status", cwd=tmp_path)
    assert result.returncode == 2
    assert 'daemonset is set but workload is \'statefulset\'' in one_line_error(result, 2)
