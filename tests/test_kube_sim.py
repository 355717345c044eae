"""The Kubernetes API simulator, driven by the real kubectl (which picks its 1.31 client
from the simulator's /version) and by raw HTTP: every command must behave and exit as on a
real cluster. Pods' fate comes from the table kubelet here; see test_kube_sim_docker.py
for the Docker kubelet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from kube_sim.harness import RunningSimulator, running_simulator, wait_for
from support.bed import need

IMAGE = "127.0.0.1:5000/kube-sim-test/app"
RULES = [
    "--rule", "crash=crashloop",
    "--rule", "pullfail=pull-error",
    "--rule", "neverready=never-ready",
    "--rule", "slow=ready:0.5",
    "--rule", "termdeaf=ready:0:600",  # ignores SIGTERM: killed when its grace period ends
    "--backoff-base", "0.5",
    "--backoff-cap", "1",
    "--bookmark-interval", "0.5",
]


@pytest.fixture(scope="module", autouse=True)
def kubectl_present() -> None:
    need(shutil.which("kubectl") is not None, "kubectl")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSimulator]:
    with running_simulator(tmp_path_factory.mktemp("kube-sim"), "table", RULES) as running:
        yield running


def deployment_manifest(name: str, image: str, replicas: int = 2, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
            **spec,
        },
    }


def create(sim: RunningSimulator, tmp_path: Path, manifest: dict[str, Any]) -> str:
    path = tmp_path / f"{manifest['metadata']['name']}.yaml"
    path.write_text(json.dumps(manifest))
    result = sim.kubectl("create", "-f", str(path), "--validate=false")
    assert result.returncode == 0, result.stderr
    return result.stdout


def get_json(sim: RunningSimulator, *what: str) -> dict[str, Any]:
    result = sim.kubectl("get", *what, "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def pods_of(sim: RunningSimulator, app: str) -> list[dict[str, Any]]:
    return get_json(sim, "pods", "-l", f"app={app}")["items"]


def images_of_pods(sim: RunningSimulator, app: str) -> set[str]:
    return {p["spec"]["containers"][0]["image"] for p in pods_of(sim, app)}


# --- discovery and unknown things ---------------------------------------------------


def test_kubectl_sees_a_1_31_server_with_the_modelled_resources(sim: RunningSimulator) -> None:
    version = sim.kubectl("version", "-o", "json")
    assert version.returncode == 0, version.stderr
    versions = json.loads(version.stdout)
    assert versions["serverVersion"]["gitVersion"] == "v1.31.0"
    assert versions["clientVersion"]["minor"] == "31"  # the dispatcher picked the matching client
    resources = sim.kubectl("api-resources", "--no-headers")
    assert resources.returncode == 0, resources.stderr
    names = {line.split()[0] for line in resources.stdout.splitlines()}
    assert {"deployments", "replicasets", "pods", "events", "namespaces"} <= names


def test_unknown_resources_are_404_not_fake_successes(sim: RunningSimulator) -> None:
    result = sim.kubectl("get", "services")
    assert result.returncode == 1
    assert 'the server doesn\'t have a resource type "services"' in result.stderr
    code, body = sim.request("GET", "/api/v1/namespaces/default/services")
    assert code == 404 and body["reason"] == "NotFound"
    code, _ = sim.request("GET", "/apis/batch/v1")
    assert code == 404
    code, body = sim.request("GET", "/apis/apps/v1/namespaces/default/deployments/nope")
    assert code == 404 and body["message"] == 'deployments.apps "nope" not found'
    missing = sim.kubectl("get", "deployment", "nope")
    assert missing.returncode == 1
    assert 'Error from server (NotFound): deployments.apps "nope" not found' in missing.stderr


# --- create, get, rollout status ----------------------------------------------------


def test_create_from_file_defaults_like_the_api_server_and_rolls_out(sim: RunningSimulator, tmp_path: Path) -> None:
    out = create(sim, tmp_path, deployment_manifest("created", f"{IMAGE}:v1", replicas=3))
    assert out.strip() == "deployment.apps/created created"
    status = sim.kubectl("rollout", "status", "deployment/created", "--timeout=60s")
    assert status.returncode == 0, status.stderr
    assert 'deployment "created" successfully rolled out' in status.stdout
    deployment = get_json(sim, "deployment", "created")
    spec = deployment["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert (spec["revisionHistoryLimit"], spec["progressDeadlineSeconds"]) == (10, 600)
    assert spec["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    status_fields = deployment["status"]
    assert status_fields["observedGeneration"] == deployment["metadata"]["generation"] == 1
    assert (status_fields["replicas"], status_fields["updatedReplicas"], status_fields["availableReplicas"]) == (3, 3, 3)
    reasons = {c["type"]: c["reason"] for c in status_fields["conditions"]}
    assert reasons == {"Available": "MinimumReplicasAvailable", "Progressing": "NewReplicaSetAvailable"}
    pods = pods_of(sim, "created")
    assert len(pods) == 3
    assert all(p["status"]["phase"] == "Running" for p in pods)
    replicasets = get_json(sim, "replicasets", "-l", "app=created")["items"]
    assert len(replicasets) == 1
    hash_label = replicasets[0]["metadata"]["labels"]["pod-template-hash"]
    assert replicasets[0]["metadata"]["name"] == f"created-{hash_label}"


def test_creating_twice_is_already_exists(sim: RunningSimulator, tmp_path: Path) -> None:
    manifest = deployment_manifest("twice", f"{IMAGE}:v1")
    create(sim, tmp_path, manifest)
    again = sim.kubectl("create", "-f", str(tmp_path / "twice.yaml"), "--validate=false")
    assert again.returncode == 1
    assert 'deployments.apps "twice" already exists' in again.stderr


def test_a_selector_that_does_not_match_the_template_is_invalid(sim: RunningSimulator, tmp_path: Path) -> None:
    manifest = deployment_manifest("mismatch", f"{IMAGE}:v1")
    manifest["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    path = tmp_path / "mismatch.yaml"
    path.write_text(json.dumps(manifest))
    result = sim.kubectl("create", "-f", str(path), "--validate=false")
    assert result.returncode == 1
    assert 'The Deployment "mismatch" is invalid' in result.stderr
    assert "`selector` does not match template `labels`" in result.stderr


def test_create_deployment_command_names_the_container_after_the_image(sim: RunningSimulator) -> None:
    result = sim.kubectl("create", "deployment", "quick", f"--image={IMAGE}:v1", "--replicas=2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "deployment.apps/quick created"
    deployment = get_json(sim, "deployment", "quick")
    assert deployment["spec"]["selector"] == {"matchLabels": {"app": "quick"}}
    assert deployment["spec"]["template"]["spec"]["containers"][0]["name"] == "app"
    status = sim.kubectl("rollout", "status", "deployment/quick", "--timeout=60s")
    assert status.returncode == 0, status.stderr
    table = sim.kubectl("get", "deployment", "quick")
    assert table.returncode == 0
    assert table.stdout.split("\n")[1].split()[:4] == ["quick", "2/2", "2", "2"]


# --- rolling updates, history, undo -------------------------------------------------


def test_set_image_history_and_undo(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("web", f"{IMAGE}:v1", replicas=3))
    assert sim.kubectl("rollout", "status", "deployment/web", "--timeout=60s").returncode == 0
    set_image = sim.kubectl("set", "image", "deployment/web", f"app={IMAGE}:slow-v2")
    assert set_image.returncode == 0, set_image.stderr
    assert set_image.stdout.strip() == "deployment.apps/web image updated"
    assert sim.kubectl("annotate", "deployment/web", "kubernetes.io/change-cause=ship v2").returncode == 0
    status = sim.kubectl("rollout", "status", "deployment/web", "--timeout=30s")
    assert status.returncode == 0, status.stderr
    # It watched a real rolling update (which stage it first sees depends on how fast kubectl starts).
    assert "Waiting for deployment \"web\" rollout to finish" in status.stdout, status.stdout
    wait_for(lambda: images_of_pods(sim, "web") == {f"{IMAGE}:slow-v2"}, what="the replaced pods to go")

    history = sim.kubectl("rollout", "history", "deployment/web")
    assert history.returncode == 0, history.stderr
    rows = [line.split(None, 1) for line in history.stdout.splitlines()[2:] if line.strip()]
    assert rows == [["1", "<none>"], ["2", "ship v2"]]

    undo = sim.kubectl("rollout", "undo", "deployment/web")
    assert undo.returncode == 0, undo.stderr
    assert undo.stdout.strip() == "deployment.apps/web rolled back"
    assert sim.kubectl("rollout", "status", "deployment/web", "--timeout=30s").returncode == 0
    # As on a real cluster, the replaced pods stay listed (Terminating) until their containers stopped.
    wait_for(lambda: images_of_pods(sim, "web") == {f"{IMAGE}:v1"}, what="the replaced pods to go")
    # The old ReplicaSet is reused and becomes revision 3.
    history = sim.kubectl("rollout", "history", "deployment/web")
    assert [line.split()[0] for line in history.stdout.splitlines()[2:] if line.strip()] == ["2", "3"]
    assert len(get_json(sim, "replicasets", "-l", "app=web")["items"]) == 2

    missing = sim.kubectl("rollout", "undo", "deployment/web", "--to-revision=99")
    assert missing.returncode == 1
    assert "unable to find specified revision 99 in history" in missing.stderr


def test_crashlooping_rollout_exceeds_its_progress_deadline(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("crashy", f"{IMAGE}:v1", progressDeadlineSeconds=3))
    assert sim.kubectl("rollout", "status", "deployment/crashy", "--timeout=60s").returncode == 0
    assert sim.kubectl("set", "image", "deployment/crashy", f"app={IMAGE}:crash").returncode == 0
    status = sim.kubectl("rollout", "status", "deployment/crashy", "--timeout=60s")
    assert status.returncode == 1
    assert 'error: deployment "crashy" exceeded its progress deadline' in status.stderr
    deployment = get_json(sim, "deployment", "crashy")
    progressing = next(c for c in deployment["status"]["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "ProgressDeadlineExceeded")
    # The old pods keep serving: maxUnavailable 25% of 2 rounds down to 0.
    assert deployment["status"]["availableReplicas"] == 2
    crashing = [p for p in pods_of(sim, "crashy") if p["spec"]["containers"][0]["image"].endswith(":crash")]
    assert crashing
    statuses = [p["status"]["containerStatuses"][0] for p in crashing]
    wait_for(
        lambda: any(
            s["status"]["containerStatuses"][0]["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
            for s in pods_of(sim, "crashy")
            if s["spec"]["containers"][0]["image"].endswith(":crash")
        ),
        what="a CrashLoopBackOff pod",
    )
    assert all(not s["ready"] for s in statuses)
    assert max(s["restartCount"] for s in statuses) >= 1
    assert any(s["lastState"].get("terminated", {}).get("exitCode") == 1 for s in statuses)


def test_rollout_status_times_out_like_kubectl_on_a_never_ready_image(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("stuck", f"{IMAGE}:neverready", replicas=1))
    status = sim.kubectl("rollout", "status", "deployment/stuck", "--timeout=2s")
    assert status.returncode == 1
    assert "timed out waiting for the condition" in status.stderr
    pod = pods_of(sim, "stuck")[0]
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ContainersNotReady")


def test_an_image_that_cannot_be_pulled_shows_err_image_pull_then_back_off(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("nopull", f"{IMAGE}:pullfail", replicas=1))

    def waiting_reasons() -> set[str]:
        return {
            p["status"].get("containerStatuses", [{}])[0].get("state", {}).get("waiting", {}).get("reason", "")
            for p in pods_of(sim, "nopull")
        }

    wait_for(lambda: "ErrImagePull" in waiting_reasons(), what="ErrImagePull")
    wait_for(lambda: "ImagePullBackOff" in waiting_reasons(), what="ImagePullBackOff")
    pod = pods_of(sim, "nopull")[0]
    assert pod["status"]["phase"] == "Pending"
    assert pod["status"]["containerStatuses"][0]["imageID"] == ""
    table = sim.kubectl("get", "pods", "-l", "app=nopull", "--no-headers")
    assert table.stdout.split()[2] in ("ErrImagePull", "ImagePullBackOff")


def test_scale_changes_replicas_and_pods_follow(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("scaled", f"{IMAGE}:v1", replicas=1))
    result = sim.kubectl("scale", "deployment/scaled", "--replicas=4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "deployment.apps/scaled scaled"
    assert sim.kubectl("rollout", "status", "deployment/scaled", "--timeout=60s").returncode == 0
    assert len(pods_of(sim, "scaled")) == 4
    assert sim.kubectl("scale", "deployment/scaled", "--replicas=1").returncode == 0
    wait_for(lambda: len(pods_of(sim, "scaled")) == 1, what="scale down to 1 pod")
    code, scale = sim.request("GET", "/apis/apps/v1/namespaces/default/deployments/scaled/scale")
    assert code == 200
    assert (scale["kind"], scale["spec"]["replicas"], scale["status"]["selector"]) == ("Scale", 1, "app=scaled")
    stale = sim.kubectl("scale", "deployment/scaled", "--replicas=3", "--current-replicas=2")
    assert stale.returncode == 1
    assert "Expected replicas to be 2, was 1" in stale.stderr


def test_pause_holds_the_rollout_and_resume_releases_it(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("paused", f"{IMAGE}:v1", replicas=1))
    assert sim.kubectl("rollout", "status", "deployment/paused", "--timeout=60s").returncode == 0
    assert sim.kubectl("rollout", "pause", "deployment/paused").returncode == 0
    assert sim.kubectl("set", "image", "deployment/paused", f"app={IMAGE}:v2").returncode == 0
    wait_for(
        lambda: next(c for c in get_json(sim, "deployment", "paused")["status"]["conditions"] if c["type"] == "Progressing")["reason"]
        == "DeploymentPaused",
        what="the DeploymentPaused condition",
    )
    assert len(get_json(sim, "replicasets", "-l", "app=paused")["items"]) == 1
    undo = sim.kubectl("rollout", "undo", "deployment/paused", "--to-revision=1")
    assert undo.returncode == 1
    assert "you cannot rollback a paused deployment" in undo.stderr
    assert sim.kubectl("rollout", "resume", "deployment/paused").returncode == 0
    assert sim.kubectl("rollout", "status", "deployment/paused", "--timeout=60s").returncode == 0
    wait_for(lambda: images_of_pods(sim, "paused") == {f"{IMAGE}:v2"}, what="the replaced pods to go")


def test_revision_history_limit_removes_the_oldest_replicasets(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("limited", f"{IMAGE}:v1", replicas=1, revisionHistoryLimit=1))
    for tag in ("v2", "v3", "v4"):
        assert sim.kubectl("set", "image", "deployment/limited", f"app={IMAGE}:{tag}").returncode == 0
        assert sim.kubectl("rollout", "status", "deployment/limited", "--timeout=60s").returncode == 0
    wait_for(lambda: len(get_json(sim, "replicasets", "-l", "app=limited")["items"]) == 2, what="history cleanup")
    history = sim.kubectl("rollout", "history", "deployment/limited")
    assert [line.split()[0] for line in history.stdout.splitlines()[2:] if line.strip()] == ["3", "4"]


def test_recreate_scales_the_old_replicaset_down_before_the_new_one_up(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("recreated", f"{IMAGE}:v1", replicas=2, strategy={"type": "Recreate"}))
    assert sim.kubectl("rollout", "status", "deployment/recreated", "--timeout=60s").returncode == 0
    assert sim.kubectl("set", "image", "deployment/recreated", f"app={IMAGE}:v2").returncode == 0
    assert sim.kubectl("rollout", "status", "deployment/recreated", "--timeout=60s").returncode == 0
    wait_for(lambda: images_of_pods(sim, "recreated") == {f"{IMAGE}:v2"}, what="the replaced pods to go")
    events = get_json(sim, "events", "--field-selector", "involvedObject.name=recreated")["items"]
    scaling = [e["message"] for e in sorted(events, key=lambda e: e["metadata"]["name"]) if e["reason"] == "ScalingReplicaSet"]
    assert len(scaling) == 3
    assert scaling[1].startswith("Scaled down replica set recreated-") and scaling[1].endswith("from 2 to 0")
    assert scaling[2].startswith("Scaled up replica set recreated-") and scaling[2].endswith("from 0 to 2")


def test_without_history_the_revision_still_counts_up(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("nohistory", f"{IMAGE}:v1", replicas=1, revisionHistoryLimit=0))
    for tag in ("v2", "v3"):
        assert sim.kubectl("set", "image", "deployment/nohistory", f"app={IMAGE}:{tag}").returncode == 0
        assert sim.kubectl("rollout", "status", "deployment/nohistory", "--timeout=60s").returncode == 0
    wait_for(lambda: len(get_json(sim, "replicasets", "-l", "app=nohistory")["items"]) == 1, what="old ReplicaSets removed")
    deployment = get_json(sim, "deployment", "nohistory")
    assert deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    undo = sim.kubectl("rollout", "undo", "deployment/nohistory")
    assert undo.returncode == 1
    assert 'no rollout history found for deployment "nohistory"' in undo.stderr


def test_a_failed_request_leaves_the_connection_usable(sim: RunningSimulator) -> None:
    import http.client
    import urllib.parse

    address = urllib.parse.urlsplit(sim.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    body = json.dumps({"metadata": {"name": "x"}})
    connection.request("POST", "/apis/batch/v1/namespaces/default/cronjobs", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 404
    response.read()
    connection.request("GET", "/version")
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["minor"] == "31"
    connection.close()


# --- patch types --------------------------------------------------------------------


def test_strategic_merge_patch_merges_containers_by_name(sim: RunningSimulator, tmp_path: Path) -> None:
    manifest = deployment_manifest("sidecar", f"{IMAGE}:v1", replicas=1)
    manifest["spec"]["template"]["spec"]["containers"].append({"name": "proxy", "image": f"{IMAGE}:proxy"})
    create(sim, tmp_path, manifest)
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": f"{IMAGE}:v2"}]}}}}
    result = sim.kubectl("patch", "deployment", "sidecar", "-p", json.dumps(patch))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "deployment.apps/sidecar patched"
    containers = get_json(sim, "deployment", "sidecar")["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("app", f"{IMAGE}:v2"), ("proxy", f"{IMAGE}:proxy")]
    # Once the rollout settles nothing else writes the object, so the same patch is a no-op.
    assert sim.kubectl("rollout", "status", "deployment/sidecar", "--timeout=60s").returncode == 0
    again = sim.kubectl("patch", "deployment", "sidecar", "-p", json.dumps(patch))
    assert again.stdout.strip() == "deployment.apps/sidecar patched (no change)"
    merge = sim.kubectl("patch", "deployment", "sidecar", "--type=merge", "-p", json.dumps(patch))
    assert merge.returncode == 0
    containers = get_json(sim, "deployment", "sidecar")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["app"]  # a JSON merge patch replaces lists
    ops = [{"op": "replace", "path": "/spec/replicas", "value": 2}]
    assert sim.kubectl("patch", "deployment", "sidecar", "--type=json", "-p", json.dumps(ops)).returncode == 0
    assert get_json(sim, "deployment", "sidecar")["spec"]["replicas"] == 2
    bad = [{"op": "replace", "path": "/spec/nothing/here", "value": 1}]
    failed = sim.kubectl("patch", "deployment", "sidecar", "--type=json", "-p", json.dumps(bad))
    assert failed.returncode == 1


def test_generation_counts_spec_changes_only(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("gen", f"{IMAGE}:v1", replicas=1))
    assert sim.kubectl("annotate", "deployment/gen", "note=metadata only").returncode == 0
    assert get_json(sim, "deployment", "gen")["metadata"]["generation"] == 1
    assert sim.kubectl("scale", "deployment/gen", "--replicas=2").returncode == 0
    wait_for(lambda: get_json(sim, "deployment", "gen")["status"].get("observedGeneration") == 2, what="observedGeneration 2")
    assert get_json(sim, "deployment", "gen")["metadata"]["generation"] == 2


# --- concurrency and watch ----------------------------------------------------------


def test_a_stale_resource_version_is_a_conflict(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("occ", f"{IMAGE}:v1", replicas=1))
    stale = get_json(sim, "deployment", "occ")
    assert sim.kubectl("scale", "deployment/occ", "--replicas=2").returncode == 0
    stale["spec"]["replicas"] = 5
    path = tmp_path / "stale.json"
    path.write_text(json.dumps(stale))
    replaced = sim.kubectl("replace", "-f", str(path), "--validate=false")
    assert replaced.returncode == 1
    assert "the object has been modified; please apply your changes to the latest version and try again" in replaced.stderr
    code, body = sim.request("PUT", "/apis/apps/v1/namespaces/default/deployments/occ", stale)
    assert (code, body["reason"]) == (409, "Conflict")
    patch = {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]}, "spec": {"replicas": 5}}
    code, _ = sim.request("PATCH", "/apis/apps/v1/namespaces/default/deployments/occ", patch, "application/merge-patch+json")
    assert code == 409
    assert get_json(sim, "deployment", "occ")["spec"]["replicas"] == 2


def test_watch_resumes_from_a_resource_version_with_bookmarks(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("watched", f"{IMAGE}:v1", replicas=1))
    start = get_json(sim, "deployment", "watched")["metadata"]["resourceVersion"]
    assert sim.kubectl("annotate", "deployment/watched", "step=one").returncode == 0
    assert sim.kubectl("annotate", "--overwrite", "deployment/watched", "step=two").returncode == 0
    events = sim.watch(
        "/apis/apps/v1/namespaces/default/deployments?watch=true&fieldSelector=metadata.name%3Dwatched"
        f"&resourceVersion={start}&timeoutSeconds=8&allowWatchBookmarks=true"
    )
    modified = [e for e in events if e["type"] == "MODIFIED"]
    steps = [e["object"]["metadata"].get("annotations", {}).get("step") for e in modified]
    assert "one" in steps and "two" in steps and steps.index("one") < steps.index("two")
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in modified]
    assert versions == sorted(versions) and versions[0] > int(start)
    assert all(e["type"] != "ADDED" for e in events)  # resuming does not replay the object
    assert any(e["type"] == "BOOKMARK" for e in events)
    # Without a resourceVersion, a watch starts with the current state.
    fresh = sim.watch("/apis/apps/v1/namespaces/default/deployments?watch=1&fieldSelector=metadata.name%3Dwatched&timeoutSeconds=1")
    assert [e["type"] for e in fresh][:1] == ["ADDED"]


def test_watches_for_kubectl_get_w_carry_table_rows(sim: RunningSimulator, tmp_path: Path) -> None:
    import urllib.request

    create(sim, tmp_path, deployment_manifest("tablewatch", f"{IMAGE}:v1", replicas=1))
    request = urllib.request.Request(
        sim.url + "/apis/apps/v1/namespaces/default/deployments?watch=1&fieldSelector=metadata.name%3Dtablewatch&timeoutSeconds=1",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        events = [json.loads(line) for line in response.read().decode().splitlines() if line.strip()]
    first = events[0]["object"]
    assert first["kind"] == "Table"
    assert [c["name"] for c in first["columnDefinitions"]][:2] == ["Name", "Ready"]
    assert first["rows"][0]["cells"][0] == "tablewatch"


def test_a_watch_from_a_compacted_resource_version_is_gone(tmp_path: Path) -> None:
    with running_simulator(tmp_path, "table", ["--event-log-size", "20"]) as small:
        for index in range(30):
            code, _ = small.request("POST", "/api/v1/namespaces", {"metadata": {"name": f"ns-{index}"}})
            assert code == 201
        events = small.watch("/api/v1/namespaces?watch=true&resourceVersion=2&timeoutSeconds=1")
        assert events[0]["type"] == "ERROR"
        assert events[0]["object"]["code"] == 410
        listing = small.kubectl("get", "namespaces", "--no-headers")
        assert len(listing.stdout.splitlines()) == 34


def test_label_and_field_selectors(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("sel-a", f"{IMAGE}:v1", replicas=1))
    create(sim, tmp_path, deployment_manifest("sel-b", f"{IMAGE}:v1", replicas=1))
    code, body = sim.request("GET", "/apis/apps/v1/namespaces/default/deployments?labelSelector=app%20in%20(sel-a,sel-b)")
    assert sorted(i["metadata"]["name"] for i in body["items"]) == ["sel-a", "sel-b"]
    code, body = sim.request("GET", "/apis/apps/v1/namespaces/default/deployments?fieldSelector=metadata.name%3Dsel-b")
    assert [i["metadata"]["name"] for i in body["items"]] == ["sel-b"]
    code, body = sim.request("GET", "/apis/apps/v1/namespaces/default/deployments?fieldSelector=spec.replicas%3D1")
    assert (code, body["reason"]) == (400, "BadRequest")
    wait_for(lambda: pods_of(sim, "sel-a"), what="sel-a pods")
    code, body = sim.request("GET", "/api/v1/namespaces/default/pods?labelSelector=app%3Dsel-a&fieldSelector=status.phase%3DRunning")
    assert code == 200
    assert {i["metadata"]["labels"]["app"] for i in body["items"]} <= {"sel-a"}


def test_deleting_a_deployment_removes_its_replicasets_and_pods(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("doomed", f"{IMAGE}:v1", replicas=2))
    assert sim.kubectl("rollout", "status", "deployment/doomed", "--timeout=60s").returncode == 0
    result = sim.kubectl("delete", "deployment", "doomed")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'deployment.apps "doomed" deleted'
    wait_for(lambda: not pods_of(sim, "doomed"), timeout=60, what="pods to go")
    # The garbage collector deletes the ReplicaSets too (their pods may go first).
    wait_for(lambda: get_json(sim, "replicasets", "-l", "app=doomed")["items"] == [], timeout=60,
             what="the ReplicaSets to go")


def test_events_record_what_the_controllers_and_kubelet_did(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("noisy", f"{IMAGE}:v1", replicas=1))
    assert sim.kubectl("rollout", "status", "deployment/noisy", "--timeout=60s").returncode == 0
    events = get_json(sim, "events", "--field-selector", "involvedObject.name=noisy")["items"]
    assert any(e["reason"] == "ScalingReplicaSet" and "Scaled up replica set noisy-" in e["message"] for e in events)


# --- the official Python client, as rollout's Kubernetes target uses it ---------------


def test_the_python_client_reads_patches_lists_and_watches(sim: RunningSimulator, tmp_path: Path) -> None:
    from kubernetes import client, config, watch

    create(sim, tmp_path, deployment_manifest("pyclient", f"{IMAGE}:v1", replicas=2))
    api_client = config.new_client_from_config(config_file=str(sim.kubeconfig))
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    deployment = apps.read_namespaced_deployment("pyclient", "default")
    assert deployment.spec.template.spec.containers[0].image == f"{IMAGE}:v1"
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": f"{IMAGE}:v2"}]}}}}
    patched = apps.patch_namespaced_deployment("pyclient", "default", patch)
    assert patched.metadata.generation == 2
    seen_complete = False
    for event in watch.Watch().stream(
        apps.list_namespaced_deployment,
        "default",
        field_selector="metadata.name=pyclient",
        resource_version=patched.metadata.resource_version,
        timeout_seconds=20,
    ):
        status = event["object"].status
        if status.observed_generation == 2 and status.updated_replicas == 2 and status.available_replicas == 2 and (status.replicas or 0) == 2:
            seen_complete = True
            break
    assert seen_complete
    replicasets = apps.list_namespaced_replica_set("default", label_selector="app=pyclient").items
    assert sorted(rs.metadata.annotations["deployment.kubernetes.io/revision"] for rs in replicasets) == ["1", "2"]
    pods = wait_for(
        lambda: [p for p in core.list_namespaced_pod("default", label_selector="app=pyclient").items if p.spec.containers[0].image.endswith(":v2")],
        what="v2 pods",
    )
    # containerd's form: the repository in full, then the digest.
    assert pods[0].status.container_statuses is None or pods[0].status.container_statuses[0].image_id.startswith(f"{IMAGE}@sha256:")
    from kubernetes.client.rest import ApiException

    with pytest.raises(ApiException) as raised:
        apps.read_namespaced_deployment("missing", "default")
    assert raised.value.status == 404


# --- the Docker kubelet: real engine, real registry, the test bed's images -------------

DOCKER_ARGS = ["--backoff-base", "1", "--backoff-cap", "2"]


@pytest.fixture(scope="module")
def docker_sim(tmp_path_factory: pytest.TempPathFactory, docker_client: Any, registry: str) -> Iterator[RunningSimulator]:
    with running_simulator(tmp_path_factory.mktemp("kube-sim-docker"), "docker", DOCKER_ARGS) as running:
        yield running


def container_state(sim: RunningSimulator, app: str) -> dict[str, Any]:
    pods = pods_of(sim, app)
    return pods[0]["status"].get("containerStatuses", [{}])[0] if pods else {}


def test_docker_kubelet_runs_pods_on_the_engine_and_reports_the_pulled_digest(
    docker_sim: RunningSimulator, registry: str, docker_client: Any
) -> None:
    image = f"{registry}/rollout-test/app:checked"
    assert docker_sim.kubectl("create", "deployment", "dgood", f"--image={image}", "--replicas=2").returncode == 0
    status = docker_sim.kubectl("rollout", "status", "deployment/dgood", "--timeout=60s")
    assert status.returncode == 0, status.stderr
    pods = pods_of(docker_sim, "dgood")
    image_ids = {p["status"]["containerStatuses"][0]["imageID"] for p in pods}
    assert len(image_ids) == 1
    image_id = image_ids.pop()
    assert image_id.startswith(f"{registry}/rollout-test/app@sha256:")  # containerd's form
    container_id = pods[0]["status"]["containerStatuses"][0]["containerID"].removeprefix("docker://")
    container = docker_client.containers.get(container_id)
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"
    assert container.attrs["State"]["Health"]["Status"] == "healthy"
    # Pinning the Deployment to the digest it reported rolls out to that exact image.
    pinned = image_id
    assert docker_sim.kubectl("set", "image", "deployment/dgood", f"app={pinned}").returncode == 0
    assert docker_sim.kubectl("rollout", "status", "deployment/dgood", "--timeout=60s").returncode == 0
    assert {p["status"]["containerStatuses"][0]["imageID"] for p in pods_of(docker_sim, "dgood")} == {image_id}


def test_docker_kubelet_crashing_image_misses_the_deadline_and_undo_recovers(
    docker_sim: RunningSimulator, registry: str, tmp_path: Path
) -> None:
    manifest = deployment_manifest("dcrash", f"{registry}/rollout-test/app:good1", replicas=1, progressDeadlineSeconds=6)
    create(docker_sim, tmp_path, manifest)
    assert docker_sim.kubectl("rollout", "status", "deployment/dcrash", "--timeout=60s").returncode == 0
    assert docker_sim.kubectl("set", "image", "deployment/dcrash", f"app={registry}/rollout-test/app:crash").returncode == 0
    status = docker_sim.kubectl("rollout", "status", "deployment/dcrash", "--timeout=90s")
    assert status.returncode == 1
    assert 'deployment "dcrash" exceeded its progress deadline' in status.stderr

    def crashing() -> dict[str, Any]:
        for pod in pods_of(docker_sim, "dcrash"):
            state = pod["status"].get("containerStatuses", [{}])[0]
            if state.get("image", "").endswith(":crash") and state.get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff":
                return state
        return {}

    state = wait_for(crashing, timeout=30, what="CrashLoopBackOff")
    assert state["restartCount"] >= 1
    assert state["lastState"]["terminated"]["exitCode"] == 1
    assert docker_sim.kubectl("rollout", "undo", "deployment/dcrash").returncode == 0
    assert docker_sim.kubectl("rollout", "status", "deployment/dcrash", "--timeout=60s").returncode == 0
    wait_for(lambda: images_of_pods(docker_sim, "dcrash") == {f"{registry}/rollout-test/app:good1"}, what="only good1 pods")


def test_docker_kubelet_unpullable_and_never_ready_images(docker_sim: RunningSimulator, registry: str) -> None:
    missing = f"{registry}/rollout-test/app:kube-sim-no-such-tag"
    assert docker_sim.kubectl("create", "deployment", "dmissing", f"--image={missing}").returncode == 0
    assert docker_sim.kubectl("create", "deployment", "dnever", f"--image={registry}/rollout-test/app:never-ready").returncode == 0
    assert docker_sim.kubectl("create", "deployment", "dsick", f"--image={registry}/rollout-test/app:unhealthy-check").returncode == 0
    wait_for(
        lambda: container_state(docker_sim, "dmissing").get("state", {}).get("waiting", {}).get("reason") == "ImagePullBackOff",
        timeout=30,
        what="ImagePullBackOff",
    )
    wait_for(lambda: container_state(docker_sim, "dnever").get("started"), timeout=30, what="never-ready to start")
    wait_for(lambda: container_state(docker_sim, "dsick").get("started"), timeout=30, what="unhealthy-check to start")
    status = docker_sim.kubectl("rollout", "status", "deployment/dnever", "--timeout=3s")
    assert status.returncode == 1 and "timed out waiting for the condition" in status.stderr
    for app in ("dnever", "dsick"):
        state = container_state(docker_sim, app)
        assert state["state"].get("running") and not state["ready"]


def test_stopping_the_simulator_removes_its_containers(tmp_path: Path, docker_client: Any, registry: str) -> None:
    with running_simulator(tmp_path, "docker", DOCKER_ARGS) as sim:
        assert sim.kubectl("create", "deployment", "dstop", f"--image={registry}/rollout-test/app:good1").returncode == 0
        assert sim.kubectl("rollout", "status", "deployment/dstop", "--timeout=60s").returncode == 0
        owner = f"kube-sim-{sim.process.pid}"
        assert docker_client.containers.list(filters={"label": f"kube-sim.owner={owner}"})
    assert sim.process.returncode == 0
    assert docker_client.containers.list(all=True, filters={"label": f"kube-sim.owner={owner}"}) == []


# --- who may write what, and pulls that fail (kubectl against RBAC, admission, pull rules) ---

POLICY_IMAGE = "127.0.0.1:5000/kube-sim-test/app"
READER_TOKEN = "reader-token"


@pytest.fixture(scope="module")
def policy_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSimulator]:
    directory = tmp_path_factory.mktemp("kube-sim-policy")
    rbac = {"users": [{"token": READER_TOKEN, "name": "reader", "rules": [
        {"apiGroups": ["apps"], "resources": ["deployments", "replicasets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    ]}]}
    admission = {"webhooks": [{"name": "images.policy.example", "deny_image_containing": ":unsigned",
                               "message": "image is not signed by the release key"}]}
    (directory / "rbac.json").write_text(json.dumps(rbac))
    (directory / "admission.json").write_text(json.dumps(admission))
    args = ["--rbac", str(directory / "rbac.json"), "--admission", str(directory / "admission.json"),
            "--rule", "flaky=pull-transient", "--backoff-base", "1", "--backoff-cap", "2"]
    with running_simulator(directory, "table", args) as running:
        yield running


def test_rbac_refuses_what_no_rule_allows_with_the_api_servers_message(policy_sim: RunningSimulator, tmp_path: Path) -> None:
    create(policy_sim, tmp_path, deployment_manifest("guarded", f"{POLICY_IMAGE}:v1", replicas=1))
    reader = "--as=reader"  # kubectl sends no bearer token over plain HTTP; impersonation it does send
    assert policy_sim.kubectl(reader, "get", "deployment", "guarded").returncode == 0
    denied = policy_sim.kubectl(reader, "set", "image", "deployment/guarded", f"app={POLICY_IMAGE}:v2")
    assert denied.returncode == 1
    assert ('deployments.apps "guarded" is forbidden: User "reader" cannot patch resource "deployments" in API group'
            ' "apps" in the namespace "default"') in denied.stderr
    denied = policy_sim.kubectl(reader, "scale", "deployment/guarded", "--replicas=2")
    assert denied.returncode == 1 and 'cannot patch resource "deployments/scale"' in denied.stderr
    nobody = policy_sim.kubectl("--as=nobody", "get", "deployments")  # a user no rule names may do nothing
    assert nobody.returncode == 1 and ('deployments.apps is forbidden: User "nobody" cannot list resource "deployments"'
                                       ' in API group "apps" in the namespace "default"') in nobody.stderr
    status, body = policy_sim.request("GET", "/api/v1/namespaces/default/pods")  # no token: unrestricted, as before
    assert status == 200 and body["kind"] == "PodList"
    deployment = get_json(policy_sim, "deployment", "guarded")
    assert deployment["metadata"]["generation"] == 1 and deployment["spec"]["replicas"] == 1


def test_an_admission_webhook_denial_reaches_kubectl_and_changes_nothing(policy_sim: RunningSimulator, tmp_path: Path) -> None:
    create(policy_sim, tmp_path, deployment_manifest("screened", f"{POLICY_IMAGE}:v1", replicas=1))
    before = get_json(policy_sim, "deployment", "screened")
    denied = policy_sim.kubectl("set", "image", "deployment/screened", f"app={POLICY_IMAGE}:unsigned")
    assert denied.returncode == 1
    assert ('deployments.apps "screened" is forbidden: admission webhook "images.policy.example" denied the request:'
            " image is not signed by the release key") in denied.stderr
    assert get_json(policy_sim, "deployment", "screened") == before
    manifest = deployment_manifest("unsigned", f"{POLICY_IMAGE}:unsigned", replicas=1)
    (tmp_path / "unsigned.json").write_text(json.dumps(manifest))
    refused = policy_sim.kubectl("create", "-f", str(tmp_path / "unsigned.json"), "--validate=false")
    assert refused.returncode == 1 and 'admission webhook "images.policy.example" denied the request' in refused.stderr


def test_annotations_beyond_the_api_servers_size_limit_are_invalid(policy_sim: RunningSimulator, tmp_path: Path) -> None:
    create(policy_sim, tmp_path, deployment_manifest("annotated", f"{POLICY_IMAGE}:v1", replicas=1))
    patch = {"metadata": {"annotations": {"example.com/a": "x" * 130000, "example.com/b": "y" * 130000,
                                          "example.com/c": "z" * 3000}}}
    (tmp_path / "patch.json").write_text(json.dumps(patch))
    refused = policy_sim.kubectl("patch", "deployment", "annotated", "--type=merge", "--patch-file", str(tmp_path / "patch.json"))
    assert refused.returncode == 1
    assert ('The Deployment "annotated" is invalid: metadata.annotations: Too long: must have at most 262144 bytes'
            in refused.stderr)
    status, body = policy_sim.request("PATCH", "/apis/apps/v1/namespaces/default/deployments/annotated", patch,
                                      "application/merge-patch+json")
    assert status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"] == [{"reason": "FieldValueTooLong", "field": "metadata.annotations",
                                          "message": "Too long: must have at most 262144 bytes"}]


def test_a_pull_that_fails_once_heals_after_the_kubelets_back_off(policy_sim: RunningSimulator, tmp_path: Path) -> None:
    create(policy_sim, tmp_path, deployment_manifest("flaky", f"{POLICY_IMAGE}:flaky", replicas=1))
    rolled = policy_sim.kubectl("rollout", "status", "deployment/flaky", "--timeout=60s")
    assert rolled.returncode == 0, rolled.stderr
    [pod] = pods_of(policy_sim, "flaky")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    events = get_json(policy_sim, "events", "--field-selector", f"involvedObject.name={pod['metadata']['name']}")["items"]
    reasons = [e["reason"] for e in events]
    assert "Failed" in reasons and reasons.count("Pulled") == 1 and "Started" in reasons


def test_pull_policy_never_without_the_image_is_err_image_never_pull(policy_sim: RunningSimulator, tmp_path: Path) -> None:
    manifest = deployment_manifest("nopullnever", f"{POLICY_IMAGE}:absent", replicas=1)
    manifest["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Never"
    create(policy_sim, tmp_path, manifest)

    def waiting() -> dict[str, Any]:
        pods = pods_of(policy_sim, "nopullnever")
        statuses = pods[0]["status"].get("containerStatuses") if pods else None
        return (statuses[0]["state"].get("waiting") or {}) if statuses else {}

    state = wait_for(lambda: waiting().get("reason") == "ErrImageNeverPull" and waiting(), what="ErrImageNeverPull")
    assert state["message"] == f'Container image "{POLICY_IMAGE}:absent" is not present with pull policy of Never'
    table = policy_sim.kubectl("get", "pods", "-l", "app=nopullnever", "--no-headers")
    assert table.stdout.split()[2] == "ErrImageNeverPull"


def test_a_patch_raises_generation_at_once_and_observed_generation_follows(policy_sim: RunningSimulator, tmp_path: Path) -> None:
    # pkg/registry/apps/deployment/strategy.go PrepareForUpdate: generation + 1 on a spec change,
    # never on metadata or status; the controller sets observedGeneration when it has seen it.
    create(policy_sim, tmp_path, deployment_manifest("generations", f"{POLICY_IMAGE}:v1", replicas=1))
    path = "/apis/apps/v1/namespaces/default/deployments/generations"
    wait_for(lambda: get_json(policy_sim, "deployment", "generations")["status"].get("observedGeneration") == 1,
             what="observedGeneration 1")
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": f"{POLICY_IMAGE}:v2"}]}}}}
    status, patched = policy_sim.request("PATCH", path, patch, "application/strategic-merge-patch+json")
    assert status == 200
    # The answer to the PATCH is the stored object: the controller has not seen it yet.
    assert patched["metadata"]["generation"] == 2 and patched["status"]["observedGeneration"] == 1
    wait_for(lambda: get_json(policy_sim, "deployment", "generations")["status"].get("observedGeneration") == 2,
             what="observedGeneration 2")
    status, _ = policy_sim.request("PATCH", path, {"metadata": {"labels": {"team": "web"}}}, "application/merge-patch+json")
    assert status == 200
    status, _ = policy_sim.request("PATCH", path + "/status", {"status": {"observedGeneration": 2}},
                                   "application/merge-patch+json")
    assert status == 200
    assert get_json(policy_sim, "deployment", "generations")["metadata"]["generation"] == 2


# --- pod lifecycle: logs, graceful deletion, finalizers, restart counts, imageID ----------


def wait_for_pod(sim: RunningSimulator, app: str, condition: Any, what: str) -> dict[str, Any]:
    return wait_for(lambda: next((p for p in pods_of(sim, app) if condition(p)), None), what=what)


def test_kubectl_logs_reads_the_current_and_the_previous_container(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("logged", f"{IMAGE}:crash", replicas=1))
    pod = wait_for_pod(sim, "logged", lambda p: (p["status"].get("containerStatuses") or [{}])[0].get("restartCount", 0) >= 1,
                       "a restart")
    name = pod["metadata"]["name"]
    # A crash-looping container's log is the one of the container that died (validateContainerLogStatus).
    current = sim.kubectl("logs", name)
    assert current.returncode == 0, current.stderr
    assert f"{IMAGE}:crash: exited with code 1" in current.stdout
    previous = sim.kubectl("logs", name, "--previous", "--tail=1")
    assert previous.returncode == 0, previous.stderr
    assert previous.stdout.count("\n") == 1 and "exited with code 1" in previous.stdout
    code, text = sim.request("GET", f"/api/v1/namespaces/default/pods/{name}/log?container=app&tailLines=1")
    assert code == 200 and text.count("\n") == 1
    code, body = sim.request("GET", f"/api/v1/namespaces/default/pods/{name}/log?container=nope")
    assert (code, body["message"]) == (400, f"container nope is not valid for pod {name}")

    create(sim, tmp_path, deployment_manifest("fresh", f"{IMAGE}:v1", replicas=1))
    assert sim.kubectl("rollout", "status", "deployment/fresh", "--timeout=60s").returncode == 0
    fresh = pods_of(sim, "fresh")[0]["metadata"]["name"]
    assert "started (ready)" in sim.kubectl("logs", f"deployment/fresh").stdout
    none = sim.kubectl("logs", fresh, "--previous")
    assert none.returncode == 1
    assert f'previous terminated container "app" in pod "{fresh}" not found' in none.stderr

    create(sim, tmp_path, deployment_manifest("unpulled", f"{IMAGE}:pullfail", replicas=1))
    waiting = wait_for_pod(sim, "unpulled", lambda p: p["spec"].get("nodeName"), "a scheduled pod")["metadata"]["name"]
    wait_for(lambda: "is waiting to start" in sim.kubectl("logs", waiting).stderr, what="the kubelet's waiting message")


def test_a_deleted_pod_is_terminating_for_its_grace_period(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("graceful", f"{IMAGE}:termdeaf", replicas=1))
    assert sim.kubectl("rollout", "status", "deployment/graceful", "--timeout=60s").returncode == 0
    name = pods_of(sim, "graceful")[0]["metadata"]["name"]
    # A grace period long enough that the pod is still Terminating when the next kubectl runs on a
    # loaded machine (3 s was not: the pod was already gone).
    deleted = sim.kubectl("delete", "pod", name, "--wait=false", "--grace-period=15")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == f'pod "{name}" deleted'
    table = sim.kubectl("get", "pods", "-l", "app=graceful", "--no-headers")
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith(name))
    assert row[2] == "Terminating"
    pod = get_json(sim, "pod", name)
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 15 and pod["metadata"]["deletionTimestamp"]
    # The ReplicaSet replaces it at once: a terminating pod is no replica any more.
    wait_for(lambda: len([p for p in pods_of(sim, "graceful") if not p["metadata"].get("deletionTimestamp")]) == 1,
             what="a replacement pod")
    # The container ignores SIGTERM: it is killed when the grace period ends, then the pod goes.
    wait_for(lambda: name not in {p["metadata"]["name"] for p in pods_of(sim, "graceful")}, timeout=60,
             what="the pod to go")


def test_a_finalizer_holds_a_deleted_object_until_it_is_removed(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, deployment_manifest("held", f"{IMAGE}:v1", replicas=1))
    assert sim.kubectl("rollout", "status", "deployment/held", "--timeout=60s").returncode == 0
    name = pods_of(sim, "held")[0]["metadata"]["name"]
    assert sim.kubectl("patch", "pod", name, "--type=merge", "-p", '{"metadata":{"finalizers":["example.com/hold"]}}').returncode == 0
    # Clients cannot delete by writing deletionTimestamp (rest/update.go, objectmeta.go).
    forged = sim.kubectl("patch", "pod", name, "--type=merge", "-p", '{"metadata":{"deletionTimestamp":"2030-01-01T00:00:00Z"}}')
    assert forged.returncode == 1 and "metadata.deletionTimestamp" in forged.stderr and "field is immutable" in forged.stderr
    assert sim.kubectl("delete", "pod", name, "--wait=false").returncode == 0
    # Its container stopped and the kubelet deleted it (grace period 0), yet the finalizer keeps it listed.
    held = wait_for_pod(sim, "held", lambda p: p["metadata"]["name"] == name and p["metadata"].get("deletionGracePeriodSeconds") == 0,
                        "the kubelet's final delete")
    assert held["metadata"]["deletionTimestamp"] and held["status"]["phase"] in ("Succeeded", "Failed")
    assert "Terminating" in sim.kubectl("get", "pod", name, "--no-headers").stdout
    more = sim.kubectl("patch", "pod", name, "--type=merge", "-p", '{"metadata":{"finalizers":["example.com/hold","example.com/more"]}}')
    assert more.returncode == 1 and "no new finalizers can be added if the object is being deleted" in more.stderr
    moved = sim.kubectl("patch", "pod", name, "--type=merge", "-p", '{"metadata":{"deletionTimestamp":"2030-01-01T00:00:00Z"}}')
    assert moved.returncode == 0 and get_json(sim, "pod", name)["metadata"]["deletionTimestamp"] == held["metadata"]["deletionTimestamp"]
    released = sim.kubectl("patch", "pod", name, "--type=json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
    assert released.returncode == 0, released.stderr
    gone = sim.kubectl("get", "pod", name)
    assert gone.returncode == 1 and f'pods "{name}" not found' in gone.stderr


def test_image_ids_name_the_repository_in_full_like_containerd() -> None:
    from kube_sim.kubelet import normalized_repository

    assert normalized_repository("nginx") == "docker.io/library/nginx"
    assert normalized_repository("user/web") == "docker.io/user/web"
    assert normalized_repository("127.0.0.1:5000/rollout-test/app") == "127.0.0.1:5000/rollout-test/app"
    assert normalized_repository("localhost/app") == "localhost/app"


def test_docker_kubelet_restart_count_rises_when_the_next_container_is_created(
    docker_sim: RunningSimulator, registry: str, docker_client: Any
) -> None:
    """restartCount is the count of the newest container, given when it is created
    (kuberuntime_container.go): while a crashed container waits out its back-off, the count is
    still that of the container that died. The engine's container names carry the attempt."""
    assert docker_sim.kubectl("create", "deployment", "dcount", f"--image={registry}/rollout-test/app:crash").returncode == 0

    def backing_off() -> dict[str, Any]:
        state = container_state(docker_sim, "dcount")
        if state.get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff" and state.get("restartCount", 0) >= 1:
            return state
        return {}

    state = wait_for(backing_off, timeout=60, what="CrashLoopBackOff after a restart")
    died = docker_client.containers.get(state["lastState"]["terminated"]["containerID"].removeprefix("docker://"))
    assert died.name.endswith(f"-app-{state['restartCount']}")  # the attempt of the container that died

