"""Kubernetes target, end to end through the official client against the API simulator (table
kubelet: pods' fate from rules) with the real registry resolving tags: patches the API server
refuses (RBAC, admission, 422) change nothing and are not failed reverts; the container rollout
moves is chosen by normalised image names; init containers running the app are reported;
pull errors fail a release only when the kubelet's retry failed too."""

from __future__ import annotations

import json
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from kube_sim.harness import RunningSimulator, running_simulator
from support.bed import need
from support.cli import run_rollout
from support.images import APP_IMAGE, REGISTRY, digest_of
from support.kube import KubeApp

SIDECAR = f"{REGISTRY}/rollout-test/sidecar:v1"
CI_TOKEN = "ci-token"
# What a CI service account typically gets when someone forgot `patch`: read and watch only.
READ_ONLY = {"users": [{"token": CI_TOKEN, "name": "ci", "rules": [
    {"apiGroups": ["apps"], "resources": ["deployments", "replicasets"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
]}]}
# Short back-offs: the pull-error rule waits for the kubelet's retry.
BACKOFF = ["--backoff-base", "1.5", "--backoff-cap", "3"]


@pytest.fixture(scope="module", autouse=True)
def kubectl_present() -> None:
    need(shutil.which("kubectl") is not None, "kubectl")


@pytest.fixture(scope="module")
def digests(docker_client: Any, registry: str) -> dict[str, str]:
    """The registry's digest of each test tag, as the engine reads it from the registry."""
    return {tag: digest_of(docker_client, tag) for tag in ("good1", "good2", "good3")}


@contextmanager
def simulator(directory: Path, *args: str, rbac: dict[str, Any] | None = None,
              admission: dict[str, Any] | None = None) -> Iterator[RunningSimulator]:
    extra = [*BACKOFF, *args]
    for option, content in (("--rbac", rbac), ("--admission", admission)):
        if content is not None:
            path = directory / f"{option.strip('-')}.json"
            path.write_text(json.dumps(content))
            extra += [option, str(path)]
    with running_simulator(directory, "table", extra) as sim:
        yield sim


class Cluster(KubeApp):
    """One Deployment on the simulator and a rollout project pointing at it."""

    def __init__(self, root: Path, sim: RunningSimulator, containers: list[dict[str, Any]],
                 init_containers: list[dict[str, Any]] | None = None, annotations: dict[str, str] | None = None,
                 app_image: str = APP_IMAGE) -> None:
        pod_spec: dict[str, Any] = {"containers": containers}
        if init_containers:
            pod_spec["initContainers"] = init_containers
        super().__init__(root, sim, pod_spec, annotations=annotations or {}, ready_within="60s")
        self.configure(app_image=app_image)

    def configure(self, app_image: str = APP_IMAGE, kubeconfig: Path | None = None, extra: str = "") -> None:
        self.write_config(app_image, stable=1, kubeconfig=kubeconfig, extra=extra)

    def kubeconfig_for(self, token: str) -> Path:
        """The simulator's kubeconfig with another user's bearer token."""
        path = self.root / f"kubeconfig-{token}"
        path.write_text(self.sim.kubeconfig.read_text().replace("kube-sim-ignored-token", token))
        return path


def app_container(image: str = f"{APP_IMAGE}:good1", **extra: Any) -> dict[str, Any]:
    return {"name": "app", "image": image, **extra}


def assert_refused_unchanged(cluster: Cluster, result: subprocess.CompletedProcess[str], before: dict[str, Any],
                             exit_code: int, server_says: str) -> None:
    """A refused apply: the documented exit code, the API server's explanation on one line, no revert, nothing changed."""
    assert result.returncode == exit_code, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rollout: error:")]
    assert len(errors) == 1 and server_says in errors[0], result.stderr
    assert "REVERT" not in result.stderr and "Traceback" not in result.stderr
    assert all(entry["kind"] != "revert" for entry in cluster.history())
    # The API server is the oracle: the very same object (resourceVersion and all) as before.
    assert cluster.deployment() == before


# --- item 7: a refused apply is not a failed revert -----------------------------------------


def test_a_patch_forbidden_by_rbac_changes_nothing_and_is_no_failed_revert(tmp_path: Path, registry: str) -> None:
    with simulator(tmp_path, rbac=READ_ONLY) as sim:
        cluster = Cluster(tmp_path, sim, [app_container()])
        cluster.configure(kubeconfig=cluster.kubeconfig_for(CI_TOKEN))
        before = cluster.deployment()
        result = cluster.run("deploy", "web:good2")
        forbidden = (f'deployments.apps "{cluster.name}" is forbidden: User "ci" cannot patch resource "deployments"'
                     ' in API group "apps" in the namespace "default"')
        assert_refused_unchanged(cluster, result, before, 5, forbidden)
        [entry] = cluster.history()
        assert entry["status"] == "failed" and forbidden in entry["error"]


def test_an_admission_webhook_denial_changes_nothing_and_is_no_failed_revert(tmp_path: Path, digests: dict[str, str]) -> None:
    policy = {"webhooks": [{"name": "images.policy.example", "deny_image_containing": digests["good3"],
                            "message": "image is not signed by the release key"}]}
    with simulator(tmp_path, admission=policy) as sim:
        cluster = Cluster(tmp_path, sim, [app_container()])
        assert cluster.run("deploy", "web:good2").returncode == 0
        before = cluster.deployment()
        result = cluster.run("deploy", "web:good3")
        assert_refused_unchanged(cluster, result, before, 5, 'admission webhook "images.policy.example" denied the'
                                 " request: image is not signed by the release key")
        failed, good = cluster.history()
        assert failed["status"] == "failed" and good["status"] == "healthy"
        assert cluster.images()["app"] == f"{APP_IMAGE}@{digests['good2']}"


def test_a_patch_the_api_server_finds_invalid_is_a_config_error(tmp_path: Path, registry: str) -> None:
    # Annotations just under the API server's 256 KiB limit (a big last-applied-configuration,
    # say): rollout's change-cause pushes them over, and the PATCH is 422 Invalid.
    filler = "x" * (256 * 1024 - 200)
    with simulator(tmp_path) as sim:
        cluster = Cluster(tmp_path, sim, [app_container()], annotations={"example.com/filler": filler})
        before = cluster.deployment()
        result = cluster.run("deploy", "web:good2")
        assert_refused_unchanged(cluster, result, before, 2,
                                 "metadata.annotations: Too long: must have at most 262144 bytes")


# --- item 8: which container ----------------------------------------------------------------


def test_the_container_is_found_by_normalised_repository_name(tmp_path: Path) -> None:
    from rollout import config as configuration
    from rollout.targets import Release, open_target

    with simulator(tmp_path) as sim:
        cluster = Cluster(tmp_path, sim, [app_container("nginx:1.25"), {"name": "log-shipper", "image": SIDECAR}],
                          app_image="nginx")
        status = cluster.run("status", "--json")
        assert status.returncode == 0, status.stderr
        [target] = json.loads(status.stdout)["targets"]
        assert target["error"] is None and target["image"] == "nginx:1.25"
        # Apply through the real client: `app` moves to the digest, the log shipper stays as it was.
        app = configuration.load(str(tmp_path / "rollout.toml")).app("web")
        target_ = open_target(app.targets[0], app)
        release = Release(1, "docker.io/library/nginx", "1.26", "sha256:" + "1" * 64, "rollout: test")
        target_.prepare(release)
        assert target_.apply(release) == "nginx:1.25"
        assert cluster.images() == {"app": f"docker.io/library/nginx@sha256:{'1' * 64}", "log-shipper": SIDECAR}


def test_an_ambiguous_or_missing_container_is_a_config_error(tmp_path: Path, registry: str) -> None:
    with simulator(tmp_path) as sim:
        cluster = Cluster(tmp_path, sim, [app_container(), {"name": "worker", "image": f"{APP_IMAGE}:good1"}])
        before = cluster.deployment()
        result = cluster.run("deploy", "web:good2")
        assert result.returncode == 2 and "app and worker all run" in result.stderr and "set `container`" in result.stderr
        cluster.configure(extra='container = "web"')
        result = cluster.run("deploy", "web:good2")
        assert result.returncode == 2 and "has no container 'web' (it has app, worker)" in result.stderr
        assert cluster.deployment() == before


def test_an_init_container_running_the_app_is_reported_and_warned_about(tmp_path: Path, digests: dict[str, str]) -> None:
    with simulator(tmp_path) as sim:
        migrate = {"name": "migrate", "image": f"{APP_IMAGE}:good1", "command": ["migrate"]}
        cluster = Cluster(tmp_path, sim, [app_container()], init_containers=[migrate])
        result = cluster.run("deploy", "web:good2")
        assert result.returncode == 0, result.stderr
        assert f"init container migrate ({APP_IMAGE}:good1)" in result.stderr
        assert "rollout moves only container app" in result.stderr
        assert cluster.images("initContainers") == {"migrate": f"{APP_IMAGE}:good1"}  # not ours to move
        status = cluster.run("status", "--json")
        [target] = json.loads(status.stdout)["targets"]
        assert target["in_sync"] is True and "init container migrate" in target["warning"]
        assert "init container migrate" in cluster.run("status").stderr


# --- item 11: pull errors -----------------------------------------------------------------


def test_a_pull_that_the_kubelets_retry_fixes_does_not_revert_a_good_release(tmp_path: Path, digests: dict[str, str]) -> None:
    with simulator(tmp_path, "--rule", f"{digests['good2']}=pull-transient") as sim:
        cluster = Cluster(tmp_path, sim, [app_container(), {"name": "sidecar", "image": SIDECAR}])
        result = cluster.run("deploy", "web:good2")
        assert result.returncode == 0, result.stderr
        [entry] = cluster.history()
        assert entry["status"] == "healthy"
        assert cluster.images()["app"] == f"{APP_IMAGE}@{digests['good2']}"
        # It really failed once: the kubelet's event says so.
        events = sim.kubectl("get", "events", "-o", "json")
        assert any(e["message"].startswith(f'Failed to pull image "{APP_IMAGE}@{digests["good2"]}"')
                   for e in json.loads(events.stdout)["items"])


def test_a_pull_that_fails_again_after_the_back_off_is_reverted(tmp_path: Path, digests: dict[str, str]) -> None:
    with simulator(tmp_path, "--rule", f"{digests['good3']}=pull-error") as sim:
        cluster = Cluster(tmp_path, sim, [app_container()])
        assert cluster.run("deploy", "web:good2").returncode == 0
        result = cluster.run("deploy", "web:good3")
        assert result.returncode == 1, result.stderr
        assert "failed to pull its image again after the kubelet's back-off (ErrImagePull)" in result.stderr
        revert, failed, good = cluster.history()
        assert revert["kind"] == "revert" and revert["status"] == "healthy" and failed["status"] == "failed"
        assert cluster.images()["app"] == f"{APP_IMAGE}@{digests['good2']}"


def test_an_image_that_pull_policy_never_cannot_find_fails_at_once(tmp_path: Path, digests: dict[str, str]) -> None:
    with simulator(tmp_path) as sim:
        good1 = f"{APP_IMAGE}@{digests['good1']}"
        # Another Deployment puts good1 on the node; ours then runs it with imagePullPolicy Never.
        Cluster(tmp_path, sim, [app_container(good1)])
        (tmp_path / "never").mkdir()
        cluster = Cluster(tmp_path / "never", sim, [app_container(good1, imagePullPolicy="Never")])
        assert cluster.run("deploy", "web:good1").returncode == 0
        result = cluster.run("deploy", "web:good2")
        assert result.returncode == 1, result.stderr
        assert (f'is in ErrImageNeverPull: Container image "{APP_IMAGE}@{digests["good2"]}" is not present'
                " with pull policy of Never") in result.stderr
        assert cluster.history()[0]["kind"] == "revert"
        assert cluster.images()["app"] == good1


# --- item 5: proxies, as kubectl picks them ----------------------------------------------------


def test_a_cluster_on_loopback_is_never_reached_through_a_proxy(tmp_path: Path, registry: str) -> None:
    """kubectl never proxies loopback; the Python client would send 127.0.0.1 to HTTPS_PROXY/HTTP_PROXY."""
    from support.ports import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with simulator(tmp_path) as sim:
        cluster = Cluster(tmp_path, sim, [app_container()])
        proxied = {"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead}
        run = lambda *args: run_rollout(*args, env={"ROLLOUT_CONFIG": str(cluster.config), **proxied},  # noqa: E731
                                        bare=True, timeout=180)
        result = run("deploy", "web:good2")
        assert result.returncode == 0, result.stderr
        assert cluster.images()["app"].startswith(f"{APP_IMAGE}@sha256:")
        status = run("status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["targets"][0]["in_sync"] is True


# --- a failure before the PATCH changed nothing: not applied, never reverted ----------------------


def open_cluster_target(cluster: Cluster, tag: str, digest: str) -> tuple[Any, Any]:
    """The project's kubernetes target through the real client, and a Release of APP_IMAGE@digest."""
    from rollout import config as configuration
    from rollout.targets import Release, open_target

    app = configuration.load(str(cluster.root / "rollout.toml")).app("web")
    return open_target(app.targets[0], app), Release(1, APP_IMAGE, tag, digest, "rollout: test")


def test_a_patch_that_loses_every_race_changes_nothing_and_is_no_failed_revert(tmp_path: Path, registry: str) -> None:
    """Another writer (an autoscaler, a second pipeline) updates the Deployment between each of
    rollout's reads and its PATCH: every try is 409 Conflict. Nothing changed, so nothing is reverted
    (before: counted as moved, its revert got 409 too: REVERT FAILED, exit 3)."""
    with simulator(tmp_path, "--conflicts", "1000") as sim:
        cluster = Cluster(tmp_path, sim, [app_container()])
        before = cluster.deployment()
        result = cluster.run("deploy", "web:good2")
        assert_refused_unchanged(cluster, result, before, 5, "409 Conflict): another writer keeps updating it")
        [entry] = cluster.history()
        assert entry["status"] == "failed"


def test_a_deployment_deleted_after_prepare_is_not_applied_and_a_config_error(tmp_path: Path,
                                                                              digests: dict[str, str]) -> None:
    from rollout.errors import NotApplied

    with simulator(tmp_path) as sim:
        cluster = Cluster(tmp_path, sim, [app_container()])
        target, release = open_cluster_target(cluster, "good2", digests["good2"])
        target.prepare(release)
        assert sim.kubectl("delete", "deployment", cluster.name).returncode == 0  # someone cleans up meanwhile
        with pytest.raises(NotApplied) as refused:
            target.apply(release)
        assert refused.value.exit_code == 2
        assert "not found in namespace default" in str(refused.value) and "nothing was changed" in str(refused.value)


def test_a_cluster_gone_between_prepare_and_apply_is_not_applied(tmp_path: Path, digests: dict[str, str]) -> None:
    """The read apply makes before patching cannot reach the API server: nothing was sent, exit 5."""
    from rollout.errors import NotApplied

    with simulator(tmp_path) as sim:
        cluster = Cluster(tmp_path, sim, [app_container()])
        target, release = open_cluster_target(cluster, "good2", digests["good2"])
        target.prepare(release)
        sim.process.terminate()
        sim.process.wait(timeout=60)
        with pytest.raises(NotApplied) as refused:
            target.apply(release)
        assert refused.value.exit_code == 5 and "Kubernetes API unreachable" in str(refused.value)


def test_a_patch_whose_answer_is_lost_may_have_changed_the_deployment(tmp_path: Path, digests: dict[str, str]) -> None:
    """The connection breaks after the PATCH was sent: whether it was stored is unknown, so it is
    not NotApplied: the orchestrator counts the target as moved and reverts it."""
    from rollout.errors import NotApplied, TargetUnreachable
    from support.proxy import Fault, start_proxy

    with simulator(tmp_path) as sim:
        cluster = Cluster(tmp_path, sim, [app_container()])
        with start_proxy(sim.url.removeprefix("http://")) as proxy:
            through_proxy = tmp_path / "kubeconfig-proxied"
            through_proxy.write_text(sim.kubeconfig.read_text().replace(sim.url, proxy.base_url))
            cluster.configure(kubeconfig=through_proxy)
            target, release = open_cluster_target(cluster, "good2", digests["good2"])
            target.prepare(release)
            proxy.inject(Fault("reset", kind=None, method="PATCH"))
            with pytest.raises(TargetUnreachable) as lost:
                target.apply(release)
            assert not isinstance(lost.value, NotApplied)


def test_an_init_container_name_that_no_api_server_stores_is_not_printed(tmp_path: Path) -> None:
    """A real API server refuses container names that are no DNS-1123 label (the simulator too), so
    only something that is no real API server could answer one: it must not reach the terminal."""
    from rollout import config as configuration
    from rollout.targets import open_target

    (tmp_path / "rollout.toml").write_text(f"""
[apps.web]
image = "{APP_IMAGE}"
[[apps.web.targets]]
name = "cluster"
kind = "kubernetes"
kubeconfig = "{tmp_path / 'unused-kubeconfig'}"
deployment = "web"
""")
    app = configuration.load(str(tmp_path / "rollout.toml")).app("web")
    target = open_target(app.targets[0], app)
    hostile = "migrate\x1b[2J\nrollout: healthy"
    answer = {"spec": {"template": {"spec": {"containers": [app_container()], "initContainers": [
        {"name": hostile, "image": f"{APP_IMAGE}:good1"}, {"name": "seed", "image": f"{APP_IMAGE}:good1"}]}}}}
    warning = target._init_container_warning(answer, "app")
    assert "\x1b" not in warning and "\n" not in warning and "rollout: healthy" not in warning
    assert "seed (" in warning and "no DNS-1123 label" in warning
