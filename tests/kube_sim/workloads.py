"""The StatefulSet and DaemonSet controllers and their ControllerRevisions, following
kube-controller-manager (pkg/controller/statefulset: stateful_set_control.go,
stateful_set_utils.go, stateful_set_status_updater.go; pkg/controller/daemon:
daemon_controller.go, update.go; pkg/controller/history/controller_history.go) closely enough
that `kubectl rollout status/history/undo` see what they see on a real cluster.

Modelled: one ControllerRevision per distinct pod template (`data` is the strategic-merge patch
`{"spec": {"template": {..., "$patch": "replace"}}}` that `kubectl rollout undo` applies; an equal
older revision is reused with the next revision number; owner annotations copied, so
`kubernetes.io/change-cause` shows in `rollout history`; revisionHistoryLimit); the
`controller-revision-hash` pod label (the revision's name for StatefulSet pods, its hash for
DaemonSet pods). StatefulSets: pods `<name>-<ordinal>`, OrderedReady creation (each pod waits for
its predecessors to be Running and Ready) or Parallel, RollingUpdate from the highest ordinal down
to `partition`, one pod at a time, each replaced only once the one above is healthy, and the
controller blocking on a pod that is not Running and Ready (so a crash-looping pod of a bad
revision is never replaced by itself: the upstream "forced rollback" caveat); OnDelete. DaemonSets:
one pod per node (nodeSelector honoured), RollingUpdate deleting old pods while at most
maxUnavailable nodes lack an available pod (unavailable old pods go at once; maxSurge 0), failed
pods replaced, OnDelete. Not modelled: volumeClaimTemplates (stored, no PVCs), maxUnavailable for
StatefulSets (feature gate off in 1.31), DaemonSet maxSurge > 0, taints and tolerations.
"""

from __future__ import annotations

import copy
import json
import random
import re
from typing import Any

from .controllers import (_ALPHABET, controlled_by, owner_reference, pod_available, pod_ready_since, record_event,
                          resolve_int_or_percent, template_hash)
from .deletion import delete_object
from .resources import CONTROLLERREVISIONS, DAEMONSETS, NODES, PODS, STATEFULSETS, ResourceType
from .selectors import LabelSelector
from .store import Obj, Store

REVISION_HASH = "controller-revision-hash"  # apps/v1 ControllerRevisionHashLabelKey
POD_NAME = "statefulset.kubernetes.io/pod-name"
POD_INDEX = "apps.kubernetes.io/pod-index"


# --- ControllerRevisions (pkg/controller/history) ------------------------------------------------


def revision_data(obj: Obj) -> Obj:
    """getPatch (statefulset stateful_set_utils.go, daemon update.go): the template, replacing."""
    template = copy.deepcopy(obj["spec"]["template"])
    template["$patch"] = "replace"
    return {"spec": {"template": template}}


def _same_data(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def owned_revisions(store: Store, owner: Obj) -> list[Obj]:
    """The ControllerRevisions `owner` controls, oldest revision first."""
    items, _ = store.list(CONTROLLERREVISIONS, owner["metadata"]["namespace"])
    return sorted((r for r in items if controlled_by(r, owner)), key=lambda r: r.get("revision", 0))


def current_revision(store: Store, owner: Obj, rt: ResourceType, component: str) -> Obj:
    """The revision of owner's template as it is now: the latest if equal, else an equal older one
    bumped to the next number (controller_history.go FindEqualRevisions, then the controllers'
    update of its Revision), else a new one named `<owner>-<hash>` (ControllerRevisionName)."""
    revisions = owned_revisions(store, owner)
    data = revision_data(owner)
    latest = revisions[-1].get("revision", 0) if revisions else 0
    equal = [r for r in revisions if _same_data(r.get("data"), data)]
    namespace = owner["metadata"]["namespace"]
    if equal:
        found = equal[-1]
        if found.get("revision", 0) < latest:
            def bump(obj: Obj) -> None:
                obj["revision"] = latest + 1
            found = store.mutate(CONTROLLERREVISIONS, namespace, found["metadata"]["name"], bump)
        return found
    digest = template_hash(data)
    labels = dict((owner["spec"]["template"].get("metadata") or {}).get("labels") or {})
    labels[REVISION_HASH] = digest
    revision: Obj = {
        "kind": "ControllerRevision",
        "apiVersion": "apps/v1",
        "metadata": {
            "name": f"{owner['metadata']['name']}-{digest}",
            "namespace": namespace,
            "labels": labels,
            # Both controllers copy the owner's annotations (change-cause for `rollout history`).
            "annotations": dict(owner["metadata"].get("annotations") or {}),
            "ownerReferences": [owner_reference(owner, rt)],
        },
        "data": data,
        "revision": latest + 1,
    }
    return store.create(CONTROLLERREVISIONS, revision)


def truncate_history(store: Store, owner: Obj, live: set[str]) -> None:
    """Delete the oldest revisions no pod runs beyond spec.revisionHistoryLimit (truncateHistory)."""
    limit = owner["spec"].get("revisionHistoryLimit", 10)
    dead = [r for r in owned_revisions(store, owner) if r["metadata"]["name"] not in live]
    for revision in dead[:max(0, len(dead) - limit)]:
        delete_object(store, CONTROLLERREVISIONS, revision)


def applied_template(owner: Obj, revision: Obj) -> Obj:
    """ApplyRevision: the pod template a revision holds."""
    template = copy.deepcopy((revision.get("data") or {}).get("spec", {}).get("template") or owner["spec"]["template"])
    template.pop("$patch", None)
    return template


def _pod_from_template(template: Obj, owner: Obj, rt: ResourceType, name: str, labels: dict[str, str]) -> Obj:
    from .objects import default_pod

    meta = copy.deepcopy(template.get("metadata") or {})
    meta.pop("creationTimestamp", None)
    meta["name"] = name
    meta["namespace"] = owner["metadata"]["namespace"]
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    meta["ownerReferences"] = [owner_reference(owner, rt)]
    pod = {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": copy.deepcopy(template["spec"]),
           "status": {"phase": "Pending", "qosClass": "BestEffort"}}
    default_pod(pod)
    return pod


def _running_and_ready(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and pod_ready_since(pod) is not None


def _terminating(pod: Obj) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def _finished(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def _write_status(store: Store, rt: ResourceType, obj: Obj, status: Obj) -> None:
    status = {k: v for k, v in status.items() if v or k in ("replicas", "currentNumberScheduled", "numberMisscheduled",
                                                            "desiredNumberScheduled", "numberReady")}
    if status != (obj.get("status") or {}):
        def write(target: Obj) -> None:
            target["status"] = status
        store.mutate(rt, obj["metadata"]["namespace"], obj["metadata"]["name"], write)


# --- the StatefulSet controller -------------------------------------------------------------------


def _ordinal(set_name: str, pod: Obj) -> int | None:
    match = re.fullmatch(re.escape(set_name) + r"-(\d+)", pod["metadata"]["name"])
    return int(match.group(1)) if match else None


def sync_statefulset(store: Store, sts: Obj, pods: list[Obj], now: float) -> None:
    """One pass of updateStatefulSet (stateful_set_control.go) for the default ordinals."""
    name, spec = sts["metadata"]["name"], sts["spec"]
    selector = LabelSelector.from_api(spec.get("selector"))
    owned = [p for p in pods if controlled_by(p, sts) and selector.matches(p)]
    update = current_revision(store, sts, STATEFULSETS, "statefulset-controller")
    by_name = {r["metadata"]["name"]: r for r in owned_revisions(store, sts)}
    current = by_name.get((sts.get("status") or {}).get("currentRevision", ""), update)
    strategy = spec.get("updateStrategy") or {}
    rolling = strategy.get("type") == "RollingUpdate"
    partition = int((strategy.get("rollingUpdate") or {}).get("partition") or 0) if rolling else 0
    replicas = spec.get("replicas", 1)
    min_ready = spec.get("minReadySeconds", 0) or 0
    monotonic = spec.get("podManagementPolicy", "OrderedReady") != "Parallel"
    slots: list[Obj | None] = [None] * replicas
    condemned: list[Obj] = []
    for pod in owned:
        ordinal = _ordinal(name, pod)
        if ordinal is not None and ordinal < replicas:
            slots[ordinal] = pod
        else:
            condemned.append(pod)

    def event(reason: str, verb: str, pod_name: str) -> None:
        record_event(store, STATEFULSETS, sts, "Normal", reason, f"{verb} Pod {pod_name} in StatefulSet {name} successful",
                     "statefulset-controller")

    def create(ordinal: int) -> Obj:
        # newVersionedStatefulSetPod: below the partition, the current revision's template.
        revision = current if rolling and ordinal < partition else update
        pod_name = f"{name}-{ordinal}"
        pod = _pod_from_template(applied_template(sts, revision), sts, STATEFULSETS, pod_name,
                                 {POD_NAME: pod_name, POD_INDEX: str(ordinal), REVISION_HASH: revision["metadata"]["name"]})
        pod["spec"]["hostname"] = pod_name
        if spec.get("serviceName"):
            pod["spec"]["subdomain"] = spec["serviceName"]
        created = store.create(PODS, pod)
        event("SuccessfulCreate", "create", pod_name)
        return created

    def delete(pod: Obj) -> None:
        delete_object(store, PODS, pod)
        event("SuccessfulDelete", "delete", pod["metadata"]["name"])

    blocked = False
    for ordinal in range(replicas):
        pod = slots[ordinal]
        if pod is None:
            slots[ordinal] = create(ordinal)
            if monotonic:
                blocked = True
                break
            continue
        if _finished(pod) and not _terminating(pod):
            delete(pod)  # failed pods are deleted, then recreated
            if monotonic:
                blocked = True
                break
            continue
        # processReplica: a monotonic set waits for each pod to be Running and Ready (and available).
        if monotonic and (_terminating(pod) or not _running_and_ready(pod) or not pod_available(pod, min_ready, now)):
            blocked = True
            break
    if not blocked:
        for pod in sorted(condemned, key=lambda p: -(_ordinal(name, p) or 0)):
            if _terminating(pod):
                if monotonic:
                    blocked = True
                    break
                continue
            delete(pod)
            if monotonic:
                blocked = True
                break
    if not blocked and rolling:
        # updateStatefulSet: from the highest ordinal down to the partition, one pod at a time.
        for ordinal in range(replicas - 1, partition - 1, -1):
            pod = slots[ordinal]
            if pod is None:
                break
            if (pod["metadata"].get("labels") or {}).get(REVISION_HASH) != update["metadata"]["name"] and not _terminating(pod):
                delete(pod)
                break
            if not _running_and_ready(pod) or _terminating(pod) or not pod_available(pod, min_ready, now):
                break
    pods_now = [p for p in store.list(PODS, sts["metadata"]["namespace"])[0] if controlled_by(p, sts)]
    status: Obj = {"observedGeneration": sts["metadata"].get("generation", 1), "replicas": 0, "readyReplicas": 0,
                   "currentReplicas": 0, "updatedReplicas": 0, "availableReplicas": 0,
                   "currentRevision": current["metadata"]["name"], "updateRevision": update["metadata"]["name"],
                   "collisionCount": 0}
    for pod in pods_now:  # computeReplicaStatus
        status["replicas"] += 1
        if _running_and_ready(pod):
            status["readyReplicas"] += 1
            if pod_available(pod, min_ready, now):
                status["availableReplicas"] += 1
        if not _terminating(pod):
            revision = (pod["metadata"].get("labels") or {}).get(REVISION_HASH)
            status["currentReplicas"] += revision == status["currentRevision"]
            status["updatedReplicas"] += revision == status["updateRevision"]
    # completeRollingUpdate
    if rolling and status["updatedReplicas"] == status["replicas"] and status["readyReplicas"] == status["replicas"]:
        status["currentReplicas"] = status["updatedReplicas"]
        status["currentRevision"] = status["updateRevision"]
    live = {status["currentRevision"], status["updateRevision"]}
    live |= {(p["metadata"].get("labels") or {}).get(REVISION_HASH, "") for p in pods_now}
    truncate_history(store, sts, live)
    fresh = store.find(STATEFULSETS, sts["metadata"]["namespace"], name)
    if fresh is not None:
        _write_status(store, STATEFULSETS, fresh, status)


# --- the DaemonSet controller ---------------------------------------------------------------------


def _node_of(pod: Obj) -> str | None:
    """The node a daemon pod is for: its nodeName, else the node its required affinity names."""
    if (pod.get("spec") or {}).get("nodeName"):
        return pod["spec"]["nodeName"]
    return affinity_node(pod)


def affinity_node(pod: Obj) -> str | None:
    """The node named by a daemon pod's required node affinity (metadata.name In [node]), which the
    DaemonSet controller sets instead of nodeName (daemon/util ReplaceDaemonSetPodNodeNameNodeAffinity)."""
    required = ((((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or []:
        for field in term.get("matchFields") or []:
            if field.get("key") == "metadata.name" and field.get("operator") == "In" and field.get("values"):
                return str(field["values"][0])
    return None


def _should_run(ds: Obj, node: Obj) -> bool:
    """NodeShouldRunDaemonPod, nodeSelector only (no taints modelled)."""
    wanted = ds["spec"]["template"].get("spec", {}).get("nodeSelector") or {}
    labels = node["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items()) and not (node.get("spec") or {}).get("unschedulable")


def sync_daemonset(store: Store, ds: Obj, pods: list[Obj], now: float) -> None:
    """One pass of syncDaemonSet (daemon_controller.go manage, update.go rollingUpdate, updateDaemonSetStatus)."""
    name, spec, namespace = ds["metadata"]["name"], ds["spec"], ds["metadata"]["namespace"]
    selector = LabelSelector.from_api(spec.get("selector"))
    nodes, _ = store.list(NODES, None)
    revision = current_revision(store, ds, DAEMONSETS, "daemonset-controller")
    digest = revision["metadata"]["labels"][REVISION_HASH]
    min_ready = spec.get("minReadySeconds", 0) or 0
    active = [p for p in pods if controlled_by(p, ds) and selector.matches(p) and not _terminating(p)]
    by_node: dict[str, list[Obj]] = {}
    for pod in active:
        by_node.setdefault(_node_of(pod) or "", []).append(pod)

    def event(reason: str, message: str) -> None:
        record_event(store, DAEMONSETS, ds, "Normal", reason, message, "daemonset-controller")

    def delete(pod: Obj) -> None:
        delete_object(store, PODS, pod)
        event("SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}")

    wanted = {n["metadata"]["name"] for n in nodes if _should_run(ds, n)}
    # manage: failed pods go; nodes that should run a pod and have none get one; others lose theirs.
    for node_name, node_pods in list(by_node.items()):
        for pod in list(node_pods):
            if _finished(pod) or node_name not in wanted:
                delete(pod)
                node_pods.remove(pod)
    for node_name in sorted(wanted):
        if by_node.get(node_name):
            continue
        pod_name = f"{name}-{''.join(random.choice(_ALPHABET) for _ in range(5))}"
        pod = _pod_from_template(applied_template(ds, revision), ds, DAEMONSETS, pod_name, {REVISION_HASH: digest})
        pod["metadata"]["generateName"] = f"{name}-"
        pod["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}]}}}
        created = store.create(PODS, pod)
        by_node[node_name] = [created]
        event("SuccessfulCreate", f"Created pod: {pod_name}")

    def updated(pod: Obj) -> bool:
        return (pod["metadata"].get("labels") or {}).get(REVISION_HASH) == digest

    def available(pod: Obj) -> bool:
        return _running_and_ready(pod) and pod_available(pod, min_ready, now)

    strategy = spec.get("updateStrategy") or {}
    if strategy.get("type") == "RollingUpdate":
        # update.go rollingUpdate (maxSurge 0): old pods that are not available go at once; available
        # ones only while fewer than maxUnavailable nodes lack an available pod.
        max_unavailable = max(1, resolve_int_or_percent((strategy.get("rollingUpdate") or {}).get("maxUnavailable", 1),
                                                        len(wanted), True)) if wanted else 1
        unavailable = sum(1 for n in wanted if not any(available(p) for p in by_node.get(n, [])))
        candidates = []
        for node_name in sorted(wanted):
            node_pods = by_node.get(node_name, [])
            old = [p for p in node_pods if not updated(p)]
            if not old or any(updated(p) for p in node_pods):
                continue
            if not available(old[0]):
                delete(old[0])
            else:
                candidates.append(old[0])
        for pod in candidates:
            if unavailable >= max_unavailable:
                break
            delete(pod)
            unavailable += 1
    pods_now = [p for p in store.list(PODS, namespace)[0] if controlled_by(p, ds) and not _terminating(p)]
    first: dict[str, Obj] = {}
    for pod in pods_now:
        first.setdefault(_node_of(pod) or "", pod)
    scheduled = [first[n] for n in wanted if n in first]
    available_count = sum(1 for p in scheduled if available(p))
    status: Obj = {
        "currentNumberScheduled": len(scheduled),
        "numberMisscheduled": sum(1 for n in first if n not in wanted),
        "desiredNumberScheduled": len(wanted),
        "numberReady": sum(1 for p in scheduled if _running_and_ready(p)),
        "observedGeneration": ds["metadata"].get("generation", 1),
        "updatedNumberScheduled": sum(1 for p in scheduled if updated(p)),
        "numberAvailable": available_count,
        "numberUnavailable": len(wanted) - available_count,
    }
    truncate_history(store, ds, {revision["metadata"]["name"]} | {
        f"{name}-{(p['metadata'].get('labels') or {}).get(REVISION_HASH, '')}" for p in pods_now})
    fresh = store.find(DAEMONSETS, namespace, name)
    if fresh is not None:
        _write_status(store, DAEMONSETS, fresh, status)
