"""The simulator's StatefulSet and DaemonSet controllers (tests/kube_sim/workloads.py), driven by
the real kubectl: `rollout status`, `rollout history`, `rollout undo`, `set image`, `get` must
behave and exit as on a real cluster. Pods' fate comes from the table kubelet; three nodes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from kube_sim.harness import RunningSimulator, running_simulator, wait_for
from support.bed import need

IMAGE = "127.0.0.1:5000/kube-sim-test/app"
RULES = ["--rule", "crash=crashloop", "--rule", "slow=ready:0.5", "--backoff-base", "0.5", "--backoff-cap", "1",
         "--nodes", "3"]


@pytest.fixture(scope="module", autouse=True)
def kubectl_present() -> None:
    need(shutil.which("kubectl") is not None, "kubectl")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSimulator]:
    with running_simulator(tmp_path_factory.mktemp("kube-sim"), "table", RULES) as running:
        yield running


def manifest(kind: str, name: str, image: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "app", "image": image}]}},
        **spec,
    }
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "labels": {"app": name}}, "spec": body}


def kubectl(sim: RunningSimulator, *args: str) -> str:
    result = sim.kubectl(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def create(sim: RunningSimulator, tmp_path: Path, body: dict[str, Any]) -> str:
    path = tmp_path / f"{body['metadata']['name']}.json"
    path.write_text(json.dumps(body))
    return kubectl(sim, "create", "-f", str(path), "--validate=false")


def get_json(sim: RunningSimulator, *what: str) -> dict[str, Any]:
    return json.loads(kubectl(sim, "get", *what, "-o", "json"))


def live_pods(sim: RunningSimulator, app: str) -> list[dict[str, Any]]:
    return [p for p in get_json(sim, "pods", "-l", f"app={app}")["items"] if not p["metadata"].get("deletionTimestamp")]


def images(sim: RunningSimulator, app: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in live_pods(sim, app)}


def history_rows(sim: RunningSimulator, what: str) -> list[list[str]]:
    return [line.split(None, 1) for line in kubectl(sim, "rollout", "history", what).splitlines()[2:] if line.strip()]


def deleted_in_order(sim: RunningSimulator, kind: str, name: str) -> list[str]:
    """The pods the controller deleted, oldest event first (event names sort by time)."""
    events = get_json(sim, "events", "--field-selector", f"involvedObject.kind={kind},involvedObject.name={name}")["items"]
    return [e["message"].split()[2] for e in sorted(events, key=lambda e: e["metadata"]["name"])
            if e["reason"] == "SuccessfulDelete"]


# --- StatefulSets --------------------------------------------------------------------------------


def test_statefulset_defaults_ordinals_and_a_rolling_update_from_the_highest_ordinal(
        sim: RunningSimulator, tmp_path: Path) -> None:
    assert create(sim, tmp_path, manifest("StatefulSet", "db", f"{IMAGE}:v1", replicas=3, serviceName="db")).strip() \
        == "statefulset.apps/db created"
    status = sim.kubectl("rollout", "status", "statefulset/db", "--timeout=30s")
    assert status.returncode == 0, status.stderr
    assert "partitioned roll out complete: 3 new pods have been updated..." in status.stdout
    sts = get_json(sim, "statefulset", "db")
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
    assert sts["spec"]["podManagementPolicy"] == "OrderedReady"
    pods = {p["metadata"]["name"]: p for p in live_pods(sim, "db")}
    assert sorted(pods) == ["db-0", "db-1", "db-2"]
    revision = sts["status"]["updateRevision"]
    assert sts["status"]["currentRevision"] == revision and revision.startswith("db-")
    assert {p["metadata"]["labels"]["controller-revision-hash"] for p in pods.values()} == {revision}
    assert pods["db-1"]["metadata"]["labels"]["apps.kubernetes.io/pod-index"] == "1"
    assert pods["db-1"]["spec"]["hostname"] == "db-1" and pods["db-1"]["spec"]["subdomain"] == "db"

    kubectl(sim, "annotate", "statefulset/db", "kubernetes.io/change-cause=ship v2")
    kubectl(sim, "set", "image", "statefulset/db", f"app={IMAGE}:slow-v2")
    status = sim.kubectl("rollout", "status", "statefulset/db", "--timeout=60s")
    assert status.returncode == 0, status.stderr
    assert "Waiting for" in status.stdout  # it watched a real rolling update
    assert images(sim, "db") == {f"db-{n}": f"{IMAGE}:slow-v2" for n in range(3)}
    assert deleted_in_order(sim, "StatefulSet", "db") == ["db-2", "db-1", "db-0"]
    sts = get_json(sim, "statefulset", "db")
    assert sts["status"]["currentRevision"] == sts["status"]["updateRevision"] != revision
    # Annotations are copied when a revision is made: the second one carries the change-cause.
    assert history_rows(sim, "statefulset/db") == [["1", "<none>"], ["2", "ship v2"]]

    undo = sim.kubectl("rollout", "undo", "statefulset/db")
    assert undo.returncode == 0, undo.stderr
    assert undo.stdout.strip() == "statefulset.apps/db rolled back"
    assert sim.kubectl("rollout", "status", "statefulset/db", "--timeout=60s").returncode == 0
    assert set(images(sim, "db").values()) == {f"{IMAGE}:v1"}
    # The equal old revision is reused and renumbered, as controller_history.go does.
    assert [row[0] for row in history_rows(sim, "statefulset/db")] == ["2", "3"]
    assert get_json(sim, "statefulset", "db")["status"]["updateRevision"] == revision
    assert len(get_json(sim, "controllerrevisions", "-l", "app=db")["items"]) == 2


def test_statefulset_partition_keeps_lower_ordinals_on_the_current_revision(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, manifest("StatefulSet", "part", f"{IMAGE}:v1", replicas=3, serviceName="part",
                                   updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}))
    assert sim.kubectl("rollout", "status", "statefulset/part", "--timeout=30s").returncode == 0
    kubectl(sim, "set", "image", "statefulset/part", f"app={IMAGE}:v2")
    status = sim.kubectl("rollout", "status", "statefulset/part", "--timeout=30s")
    assert status.returncode == 0, status.stderr
    assert "partitioned roll out complete: 1 new pods have been updated..." in status.stdout
    assert images(sim, "part") == {"part-0": f"{IMAGE}:v1", "part-1": f"{IMAGE}:v1", "part-2": f"{IMAGE}:v2"}
    sts = get_json(sim, "statefulset", "part")["status"]
    assert (sts["updatedReplicas"], sts["currentReplicas"]) == (1, 2) and sts["currentRevision"] != sts["updateRevision"]
    # A pod below the partition that is deleted comes back on the current revision.
    kubectl(sim, "delete", "pod", "part-0")
    wait_for(lambda: images(sim, "part").get("part-0") == f"{IMAGE}:v1", what="part-0 recreated")
    # Lowering the partition moves the rest.
    kubectl(sim, "patch", "statefulset/part", "-p", '{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}')
    assert sim.kubectl("rollout", "status", "statefulset/part", "--timeout=30s").returncode == 0
    wait_for(lambda: set(images(sim, "part").values()) == {f"{IMAGE}:v2"}, what="all ordinals on v2")


def test_a_crash_looping_pod_blocks_an_ordered_statefulset_until_it_is_deleted(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, manifest("StatefulSet", "stuck", f"{IMAGE}:v1", replicas=2, serviceName="stuck"))
    assert sim.kubectl("rollout", "status", "statefulset/stuck", "--timeout=30s").returncode == 0
    kubectl(sim, "set", "image", "statefulset/stuck", f"app={IMAGE}:crash")
    wait_for(lambda: images(sim, "stuck").get("stuck-1") == f"{IMAGE}:crash", what="stuck-1 on the bad revision")
    # Reverting the template is not enough: the controller waits for stuck-1 to be Ready before
    # touching it (the "Forced rollback" caveat of the StatefulSet documentation).
    kubectl(sim, "rollout", "undo", "statefulset/stuck")
    assert sim.kubectl("rollout", "status", "statefulset/stuck", "--timeout=3s").returncode == 1
    assert images(sim, "stuck") == {"stuck-0": f"{IMAGE}:v1", "stuck-1": f"{IMAGE}:crash"}
    kubectl(sim, "delete", "pod", "stuck-1")
    assert sim.kubectl("rollout", "status", "statefulset/stuck", "--timeout=30s").returncode == 0
    wait_for(lambda: images(sim, "stuck") == {"stuck-0": f"{IMAGE}:v1", "stuck-1": f"{IMAGE}:v1"}, what="stuck-1 back")


def test_on_delete_statefulsets_replace_no_pod_and_kubectl_says_so(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, manifest("StatefulSet", "manual", f"{IMAGE}:v1", replicas=1, serviceName="manual",
                                   updateStrategy={"type": "OnDelete"}))
    wait_for(lambda: images(sim, "manual") == {"manual-0": f"{IMAGE}:v1"}, what="manual-0")
    status = sim.kubectl("rollout", "status", "statefulset/manual", "--timeout=5s")
    assert status.returncode == 1
    assert "rollout status is only available for RollingUpdate strategy type" in status.stderr
    kubectl(sim, "set", "image", "statefulset/manual", f"app={IMAGE}:v2")
    wait_for(lambda: get_json(sim, "statefulset", "manual")["status"].get("observedGeneration") == 2, what="observed")
    assert images(sim, "manual") == {"manual-0": f"{IMAGE}:v1"}
    kubectl(sim, "delete", "pod", "manual-0")
    wait_for(lambda: images(sim, "manual") == {"manual-0": f"{IMAGE}:v2"}, what="manual-0 on the new template")


def test_statefulset_spec_fields_other_than_the_mutable_ones_are_forbidden(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, manifest("StatefulSet", "frozen", f"{IMAGE}:v1", replicas=1, serviceName="frozen"))
    result = sim.kubectl("patch", "statefulset/frozen", "-p", '{"spec":{"serviceName":"other"}}')
    assert result.returncode == 1
    assert "updates to statefulset spec for fields other than 'replicas'" in result.stderr


# --- DaemonSets ----------------------------------------------------------------------------------


def test_daemonset_runs_one_pod_per_node_and_rolls_with_history_and_undo(sim: RunningSimulator, tmp_path: Path) -> None:
    assert create(sim, tmp_path, manifest("DaemonSet", "agent", f"{IMAGE}:v1")).strip() == "daemonset.apps/agent created"
    status = sim.kubectl("rollout", "status", "daemonset/agent", "--timeout=30s")
    assert status.returncode == 0, status.stderr
    assert 'daemon set "agent" successfully rolled out' in status.stdout
    nodes = [n["metadata"]["name"] for n in get_json(sim, "nodes")["items"]]
    assert len(nodes) == 3
    pods = live_pods(sim, "agent")
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(nodes)
    ds = get_json(sim, "daemonset", "agent")
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    assert (ds["status"]["desiredNumberScheduled"], ds["status"]["numberAvailable"]) == (3, 3)
    [revision] = get_json(sim, "controllerrevisions", "-l", "app=agent")["items"]
    assert {p["metadata"]["labels"]["controller-revision-hash"] for p in pods} == {
        revision["metadata"]["labels"]["controller-revision-hash"]}

    kubectl(sim, "set", "image", "daemonset/agent", f"app={IMAGE}:slow-v2")
    kubectl(sim, "annotate", "daemonset/agent", "kubernetes.io/change-cause=ignored: the revision exists already")
    status = sim.kubectl("rollout", "status", "daemonset/agent", "--timeout=60s")
    assert status.returncode == 0, status.stderr
    wait_for(lambda: sorted(images(sim, "agent").values()) == [f"{IMAGE}:slow-v2"] * 3, what="three new pods")
    assert len(deleted_in_order(sim, "DaemonSet", "agent")) == 3
    assert [row[0] for row in history_rows(sim, "daemonset/agent")] == ["1", "2"]
    assert kubectl(sim, "rollout", "undo", "daemonset/agent").strip() == "daemonset.apps/agent rolled back"
    assert sim.kubectl("rollout", "status", "daemonset/agent", "--timeout=60s").returncode == 0
    wait_for(lambda: sorted(images(sim, "agent").values()) == [f"{IMAGE}:v1"] * 3, what="back on v1")
    assert [row[0] for row in history_rows(sim, "daemonset/agent")] == ["2", "3"]


def test_a_crash_looping_daemonset_stops_at_max_unavailable_and_undo_recovers_by_itself(
        sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, manifest("DaemonSet", "crashy", f"{IMAGE}:v1"))
    assert sim.kubectl("rollout", "status", "daemonset/crashy", "--timeout=30s").returncode == 0
    kubectl(sim, "set", "image", "daemonset/crashy", f"app={IMAGE}:crash")
    wait_for(lambda: f"{IMAGE}:crash" in images(sim, "crashy").values(), what="a pod on the bad revision")
    status = sim.kubectl("rollout", "status", "daemonset/crashy", "--timeout=3s")
    assert status.returncode == 1 and "1 out of 3 new pods have been updated" in status.stdout
    # maxUnavailable 1: the two other nodes keep their available old pod.
    assert sorted(images(sim, "crashy").values()) == [f"{IMAGE}:crash", f"{IMAGE}:v1", f"{IMAGE}:v1"]
    # Unlike an OrderedReady StatefulSet, the controller replaces an unavailable old pod at once.
    kubectl(sim, "rollout", "undo", "daemonset/crashy")
    assert sim.kubectl("rollout", "status", "daemonset/crashy", "--timeout=30s").returncode == 0
    wait_for(lambda: sorted(images(sim, "crashy").values()) == [f"{IMAGE}:v1"] * 3, what="back on v1")


def test_deleting_a_workload_removes_its_pods_and_revisions(sim: RunningSimulator, tmp_path: Path) -> None:
    create(sim, tmp_path, manifest("DaemonSet", "gone", f"{IMAGE}:v1"))
    create(sim, tmp_path, manifest("StatefulSet", "gone-db", f"{IMAGE}:v1", replicas=1, serviceName="gone-db"))
    wait_for(lambda: len(live_pods(sim, "gone")) == 3 and len(live_pods(sim, "gone-db")) == 1, what="pods")
    kubectl(sim, "delete", "daemonset/gone", "statefulset/gone-db")
    wait_for(lambda: not get_json(sim, "pods", "-l", "app in (gone,gone-db)")["items"], what="pods gone")
    assert get_json(sim, "controllerrevisions", "-l", "app in (gone,gone-db)")["items"] == []
