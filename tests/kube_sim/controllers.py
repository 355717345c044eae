"""The Deployment and ReplicaSet controllers, following kube-controller-manager's logic
(pkg/controller/deployment: rolling.go, recreate.go, sync.go, progress.go; and
pkg/controller/replicaset) closely enough that kubectl's rollout commands see the same
status fields, conditions and revision annotations as on a real cluster."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import threading
import time
from typing import Any

from .deletion import delete_object
from .resources import DAEMONSETS, DEPLOYMENTS, EVENTS, PODS, REPLICASETS, STATEFULSETS, ResourceType
from .selectors import LabelSelector
from .store import Obj, Store, now_rfc3339, parse_rfc3339

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
# Deployment annotations the controller does not copy onto its ReplicaSets.
SKIPPED_ANNOTATIONS = {
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
}
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
MAX_INT32 = 2**31 - 1


# --- small helpers ------------------------------------------------------------------


def template_hash(template: Obj, collision_count: int = 0) -> str:
    """A stable short hash of a pod template, rendered like rand.SafeEncodeString."""
    canonical = json.dumps(template, sort_keys=True) + (str(collision_count) if collision_count else "")
    number = int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:4], "big")
    return "".join(_ALPHABET[ord(digit) % len(_ALPHABET)] for digit in str(number))


def _without_hash(template: Obj) -> Obj:
    clean = copy.deepcopy(template)
    labels = (clean.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    return clean


def resolve_int_or_percent(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        fraction = int(value[:-1]) * total / 100
        return math.ceil(fraction) if round_up else math.floor(fraction)
    return int(value or 0)


def surge_and_unavailable(d: Obj) -> tuple[int, int]:
    """ResolveFenceposts: maxSurge rounds up, maxUnavailable down, never both zero."""
    replicas = d["spec"].get("replicas", 1)
    rolling = (d["spec"].get("strategy") or {}).get("rollingUpdate") or {}
    surge = resolve_int_or_percent(rolling.get("maxSurge", "25%"), replicas, round_up=True)
    unavailable = resolve_int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def is_rolling(d: Obj) -> bool:
    return (d["spec"].get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"


def max_unavailable(d: Obj) -> int:
    replicas = d["spec"].get("replicas", 1)
    if not is_rolling(d) or replicas == 0:
        return 0
    return min(surge_and_unavailable(d)[1], replicas)


def max_surge(d: Obj) -> int:
    return surge_and_unavailable(d)[0] if is_rolling(d) else 0


def revision_of(rs: Obj) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def spec_replicas(rs: Obj) -> int:
    return rs["spec"].get("replicas", 0) or 0


def status_of(obj: Obj, field: str) -> int:
    return (obj.get("status") or {}).get(field, 0) or 0


def has_progress_deadline(d: Obj) -> bool:
    deadline = d["spec"].get("progressDeadlineSeconds")
    return deadline is not None and deadline != MAX_INT32


def controlled_by(obj: Obj, owner: Obj) -> bool:
    return any(
        ref.get("controller") and ref.get("uid") == owner["metadata"]["uid"]
        for ref in obj["metadata"].get("ownerReferences") or []
    )


def owner_reference(owner: Obj, rt: ResourceType) -> Obj:
    return {
        "apiVersion": rt.api_version,
        "kind": rt.kind,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def get_condition(status: Obj, kind: str) -> Obj | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def new_condition(kind: str, status: str, reason: str, message: str) -> Obj:
    now = now_rfc3339()
    return {"type": kind, "status": status, "lastUpdateTime": now, "lastTransitionTime": now, "reason": reason, "message": message}


def set_condition(status: Obj, condition: Obj) -> None:
    """SetDeploymentCondition: same status and reason is a no-op; same status keeps the transition time."""
    current = get_condition(status, condition["type"])
    if current is not None and current["status"] == condition["status"] and current["reason"] == condition["reason"]:
        return
    if current is not None and current["status"] == condition["status"]:
        condition["lastTransitionTime"] = current["lastTransitionTime"]
    others = [c for c in status.get("conditions") or [] if c.get("type") != condition["type"]]
    status["conditions"] = others + [condition]


def remove_condition(status: Obj, kind: str) -> None:
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != kind]


_last_nanos = 0


def _unique_nanos() -> int:
    global _last_nanos
    _last_nanos = max(time.time_ns(), _last_nanos + 1)
    return _last_nanos


def record_event(store: Store, rt: ResourceType, obj: Obj, event_type: str, reason: str, message: str, component: str) -> None:
    meta = obj["metadata"]
    now = now_rfc3339()
    event = {
        "kind": "Event",
        "apiVersion": "v1",
        # Named like the real recorder (name + hex nanoseconds), so names sort by time.
        "metadata": {"name": f"{meta['name']}.{_unique_nanos():x}", "namespace": meta.get("namespace", "default")},
        "involvedObject": {
            "kind": rt.kind,
            "namespace": meta.get("namespace", ""),
            "name": meta["name"],
            "uid": meta.get("uid", ""),
            "apiVersion": rt.api_version,
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "type": event_type,
        "eventTime": None,
        "reportingComponent": component,
        "reportingInstance": "",
    }
    store.create(EVENTS, event)


# --- pods: what counts as ready and available -----------------------------------------


def pod_ready_since(pod: Obj) -> float | None:
    condition = get_condition(pod.get("status") or {}, "Ready")
    if condition is None or condition.get("status") != "True":
        return None
    return parse_rfc3339(condition["lastTransitionTime"])


def pod_available(pod: Obj, min_ready_seconds: int, now: float) -> bool:
    since = pod_ready_since(pod)
    return since is not None and (min_ready_seconds == 0 or since + min_ready_seconds <= now)


def pod_active(pod: Obj) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return phase not in ("Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp")


# --- the ReplicaSet controller ------------------------------------------------------


def _deletion_rank(pod: Obj) -> tuple[Any, ...]:
    """Pods to delete first sort first: unscheduled, pending, not ready, recently ready,
    most restarts, newest (controller.ActivePods ordering)."""
    status = pod.get("status") or {}
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}.get(status.get("phase", "Pending"), 0)
    ready_since = pod_ready_since(pod)
    restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
    created = parse_rfc3339(pod["metadata"]["creationTimestamp"])
    return (
        1 if (pod.get("spec") or {}).get("nodeName") else 0,
        phase_rank,
        1 if ready_since is not None else 0,
        -(ready_since or 0),
        -restarts,
        -created,
    )


def new_pod(rs: Obj) -> Obj:
    template = copy.deepcopy(rs["spec"]["template"])
    meta = template.get("metadata") or {}
    meta.pop("creationTimestamp", None)
    meta["name"] = f"{rs['metadata']['name']}-{''.join(random.choice(_ALPHABET) for _ in range(5))}"
    meta["generateName"] = f"{rs['metadata']['name']}-"
    meta["namespace"] = rs["metadata"]["namespace"]
    meta["ownerReferences"] = [owner_reference(rs, REPLICASETS)]
    spec = template["spec"]
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": {"phase": "Pending", "qosClass": "BestEffort"}}


def sync_replicaset(store: Store, rs: Obj, pods: list[Obj], now: float) -> None:
    namespace = rs["metadata"]["namespace"]
    selector = LabelSelector.from_api(rs["spec"].get("selector"))
    owned = [p for p in pods if controlled_by(p, rs) and selector.matches(p) and pod_active(p)]
    # replica_set.go (syncReplicaSet): a ReplicaSet being deleted manages no pods any more.
    diff = 0 if rs["metadata"].get("deletionTimestamp") else len(owned) - spec_replicas(rs)
    if diff < 0:
        from .objects import default_pod

        for _ in range(-diff):
            pod = new_pod(rs)
            default_pod(pod)
            created = store.create(PODS, pod)
            owned.append(created)
            record_event(store, REPLICASETS, rs, "Normal", "SuccessfulCreate", f"Created pod: {created['metadata']['name']}", "replicaset-controller")
    elif diff > 0:
        doomed = sorted(owned, key=_deletion_rank)[:diff]
        for pod in doomed:
            # The controller deletes with default options: the pod terminates within its grace
            # period, listed with deletionTimestamp meanwhile, and no longer counts as a replica.
            delete_object(store, PODS, pod)
            owned.remove(pod)
            record_event(store, REPLICASETS, rs, "Normal", "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}", "replicaset-controller")
    template_labels = (rs["spec"]["template"].get("metadata") or {}).get("labels") or {}
    min_ready = rs["spec"].get("minReadySeconds", 0) or 0
    new_status: Obj = {
        "replicas": len(owned),
        "fullyLabeledReplicas": sum(
            1 for p in owned if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in template_labels.items())
        ),
        "readyReplicas": sum(1 for p in owned if pod_ready_since(p) is not None),
        "availableReplicas": sum(1 for p in owned if pod_available(p, min_ready, now)),
        "observedGeneration": rs["metadata"].get("generation", 1),
    }
    # The real controller omits zero counts (omitempty), except replicas.
    new_status = {k: v for k, v in new_status.items() if v or k in ("replicas",)}
    if new_status != (rs.get("status") or {}):
        rs_name = rs["metadata"]["name"]

        def write(obj: Obj) -> None:
            obj["status"] = new_status

        store.mutate(REPLICASETS, namespace, rs_name, write)


# --- the Deployment controller ------------------------------------------------------


class DeploymentSync:
    """One reconciliation of one Deployment (syncDeployment)."""

    def __init__(self, store: Store, d: Obj, replicasets: list[Obj], pods: list[Obj], now: float) -> None:
        self.store = store
        self.d = d
        self.now = now
        self.namespace = d["metadata"]["namespace"]
        self.rs_list = [rs for rs in replicasets if controlled_by(rs, d)]
        self.pods = pods
        self.status_before = copy.deepcopy(d.get("status") or {})
        # Conditions set along the way land in this status, which is written at the end.
        self.status = copy.deepcopy(self.status_before)

    # -- finding and creating ReplicaSets --

    def find_new(self) -> Obj | None:
        wanted = _without_hash(self.d["spec"]["template"])
        matches = [rs for rs in self.rs_list if _without_hash(rs["spec"]["template"]) == wanted]
        matches.sort(key=lambda rs: (rs["metadata"]["creationTimestamp"], rs["metadata"]["name"]))
        return matches[0] if matches else None

    def olds(self, new: Obj | None) -> list[Obj]:
        return [rs for rs in self.rs_list if new is None or rs["metadata"]["uid"] != new["metadata"]["uid"]]

    def _replace_rs(self, rs: Obj) -> Obj:
        stored = self.store.replace(REPLICASETS, rs, expected_rv=None)
        self.rs_list = [stored if r["metadata"]["uid"] == stored["metadata"]["uid"] else r for r in self.rs_list]
        return stored

    def _copied_annotations(self) -> dict[str, str]:
        return {k: v for k, v in (self.d["metadata"].get("annotations") or {}).items() if k not in SKIPPED_ANNOTATIONS}

    def new_rs(self, create: bool) -> tuple[Obj | None, list[Obj]]:
        """getAllReplicaSetsAndSyncRevision: the new RS (maybe created) and the old ones."""
        existing = self.find_new()
        olds = self.olds(existing)
        new_revision = max((revision_of(rs) for rs in olds), default=0) + 1
        if existing is not None:
            rs = copy.deepcopy(existing)
            annotations = rs["metadata"].setdefault("annotations", {})
            changed = False
            for key, value in self._copied_annotations().items():
                if annotations.get(key) != value:
                    annotations[key] = value
                    changed = True
            if revision_of(rs) < new_revision:
                old_revision = annotations.get(REVISION)
                if old_revision:
                    history = [h for h in annotations.get(REVISION_HISTORY, "").split(",") if h]
                    annotations[REVISION_HISTORY] = ",".join(history + [old_revision])
                annotations[REVISION] = str(new_revision)
                changed = True
            min_ready = self.d["spec"].get("minReadySeconds", 0)
            if rs["spec"].get("minReadySeconds", 0) != min_ready:
                rs["spec"]["minReadySeconds"] = min_ready
                rs["metadata"]["generation"] = rs["metadata"].get("generation", 1) + 1
                changed = True
            if changed:
                existing = self._replace_rs(rs)
            if has_progress_deadline(self.d) and get_condition(self.status, "Progressing") is None:
                set_condition(self.status, new_condition("Progressing", "True", "FoundNewReplicaSet", f'Found new replica set "{existing["metadata"]["name"]}"'))
            self._sync_revision(revision_of(existing))
            return existing, olds
        if not create:
            return None, olds
        template = copy.deepcopy(self.d["spec"]["template"])
        collision = (self.d.get("status") or {}).get("collisionCount", 0)
        pod_hash = template_hash(_without_hash(template), collision)
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = pod_hash
        selector = copy.deepcopy(self.d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = pod_hash
        annotations = self._copied_annotations()
        annotations[REVISION] = str(new_revision)
        annotations[DESIRED_REPLICAS] = str(self.d["spec"]["replicas"])
        annotations[MAX_REPLICAS] = str(self.d["spec"]["replicas"] + max_surge(self.d))
        rs: Obj = {
            "kind": "ReplicaSet",
            "apiVersion": "apps/v1",
            "metadata": {
                "name": f"{self.d['metadata']['name']}-{pod_hash}",
                "namespace": self.namespace,
                "labels": dict(template["metadata"]["labels"]),
                "annotations": annotations,
                "ownerReferences": [owner_reference(self.d, DEPLOYMENTS)],
                "generation": 1,
            },
            "spec": {
                "replicas": 0,
                "minReadySeconds": self.d["spec"].get("minReadySeconds", 0),
                "selector": selector,
                "template": template,
            },
            "status": {"replicas": 0},
        }
        if not rs["spec"]["minReadySeconds"]:
            del rs["spec"]["minReadySeconds"]
        replicas = self.new_rs_replicas(self.rs_list, None)
        rs["spec"]["replicas"] = replicas
        created = self.store.create(REPLICASETS, rs)
        self.rs_list.append(created)
        if replicas > 0:
            self.event("Normal", "ScalingReplicaSet", f"Scaled up replica set {created['metadata']['name']} from 0 to {replicas}")
        if has_progress_deadline(self.d):
            condition = new_condition("Progressing", "True", "NewReplicaSetCreated", f'Created new replica set "{created["metadata"]["name"]}"')
            set_condition(self.status, condition)
        self._sync_revision(new_revision)
        return created, olds

    def _sync_revision(self, revision: int) -> None:
        annotations = self.d["metadata"].get("annotations") or {}
        if annotations.get(REVISION) != str(revision):

            def write(obj: Obj) -> None:
                obj["metadata"].setdefault("annotations", {})[REVISION] = str(revision)

            self.d = self.store.mutate(DEPLOYMENTS, self.namespace, self.d["metadata"]["name"], write)

    def event(self, event_type: str, reason: str, message: str) -> None:
        record_event(self.store, DEPLOYMENTS, self.d, event_type, reason, message, "deployment-controller")

    # -- scaling --

    def scale_rs(self, rs: Obj, replicas: int) -> Obj:
        current = spec_replicas(rs)
        desired = str(self.d["spec"]["replicas"])
        max_replicas = str(self.d["spec"]["replicas"] + max_surge(self.d))
        annotations = rs["metadata"].get("annotations") or {}
        if current == replicas and annotations.get(DESIRED_REPLICAS) == desired and annotations.get(MAX_REPLICAS) == max_replicas:
            return rs
        updated = copy.deepcopy(rs)
        updated["spec"]["replicas"] = replicas
        updated["metadata"].setdefault("annotations", {})[DESIRED_REPLICAS] = desired
        updated["metadata"]["annotations"][MAX_REPLICAS] = max_replicas
        if current != replicas:
            updated["metadata"]["generation"] = updated["metadata"].get("generation", 1) + 1
        stored = self._replace_rs(updated)
        if current != replicas:
            direction = "up" if replicas > current else "down"
            self.event("Normal", "ScalingReplicaSet", f"Scaled {direction} replica set {rs['metadata']['name']} from {current} to {replicas}")
        return stored

    def new_rs_replicas(self, all_rs: list[Obj], new: Obj | None) -> int:
        replicas = self.d["spec"]["replicas"]
        if not is_rolling(self.d):
            return replicas
        current_new = spec_replicas(new) if new else 0
        current_total = sum(spec_replicas(rs) for rs in all_rs)
        max_total = replicas + max_surge(self.d)
        if current_total >= max_total:
            return current_new
        return current_new + min(max_total - current_total, replicas - current_new)

    def _refresh(self, rs: Obj) -> Obj:
        return next(r for r in self.rs_list if r["metadata"]["uid"] == rs["metadata"]["uid"])

    # -- strategies --

    def rolling(self) -> None:
        new, olds = self.new_rs(create=True)
        assert new is not None
        all_rs = olds + [new]
        if self.reconcile_new(all_rs, new):
            self.sync_rollout_status()
            return
        new = self._refresh(new)
        if self.reconcile_olds(new):
            self.sync_rollout_status()
            return
        if self.complete(self.status):
            self.cleanup()
        self.sync_rollout_status()

    def reconcile_new(self, all_rs: list[Obj], new: Obj) -> bool:
        replicas = self.d["spec"]["replicas"]
        if spec_replicas(new) == replicas:
            return False
        if spec_replicas(new) > replicas:
            self.scale_rs(new, replicas)
            return True
        wanted = self.new_rs_replicas(all_rs, new)
        if wanted == spec_replicas(new):
            return False
        self.scale_rs(new, wanted)
        return True

    def reconcile_olds(self, new: Obj) -> bool:
        olds = sorted(
            [rs for rs in self.olds(new) if spec_replicas(rs) > 0],
            key=lambda rs: (rs["metadata"]["creationTimestamp"], rs["metadata"]["name"]),
        )
        if not olds:
            return False
        all_count = sum(spec_replicas(rs) for rs in self.rs_list)
        min_available = self.d["spec"]["replicas"] - max_unavailable(self.d)
        new_unavailable = spec_replicas(new) - status_of(new, "availableReplicas")
        max_scaled_down = all_count - min_available - new_unavailable
        if max_scaled_down <= 0:
            return False
        # First get rid of old pods that are not available anyway.
        cleaned = 0
        for rs in olds:
            if cleaned >= max_scaled_down:
                break
            unhealthy = spec_replicas(rs) - status_of(rs, "availableReplicas")
            if spec_replicas(rs) == 0 or unhealthy <= 0:
                continue
            step = min(max_scaled_down - cleaned, unhealthy)
            self.scale_rs(rs, spec_replicas(rs) - step)
            cleaned += step
        # Then scale down available old pods while enough pods stay available.
        available = sum(status_of(rs, "availableReplicas") for rs in self.rs_list)
        scaled = 0
        if available > min_available:
            budget = available - min_available
            for rs in olds:
                rs = self._refresh(rs)
                if scaled >= budget:
                    break
                if spec_replicas(rs) == 0:
                    continue
                step = min(spec_replicas(rs), budget - scaled)
                self.scale_rs(rs, spec_replicas(rs) - step)
                scaled += step
        return cleaned + scaled > 0

    def recreate(self) -> None:
        new, olds = self.new_rs(create=False)
        scaled_down = False
        for rs in olds:
            if spec_replicas(rs) > 0:
                self.scale_rs(rs, 0)
                scaled_down = True
        if scaled_down:
            self.sync_rollout_status()
            return
        old_uids = {rs["metadata"]["uid"] for rs in self.olds(new)}
        # recreate.go (oldPodsRunning): pods in a terminal phase (evicted, finished) do not count.
        old_pods_running = any(
            ref.get("uid") in old_uids
            for pod in self.pods
            if (pod.get("status") or {}).get("phase") not in ("Failed", "Succeeded")
            for ref in pod["metadata"].get("ownerReferences") or []
        )
        if old_pods_running:
            self.sync_rollout_status()
            return
        if new is None:
            new, _ = self.new_rs(create=True)
            assert new is not None
        if spec_replicas(new) != self.d["spec"]["replicas"]:
            self.scale_rs(new, self.d["spec"]["replicas"])
        if self.complete(self.status):
            self.cleanup()
        self.sync_rollout_status()

    def is_scaling_event(self) -> bool:
        new = self.find_new()
        if new is None:
            return False
        for rs in self.rs_list:
            if spec_replicas(rs) == 0:
                continue
            desired = (rs["metadata"].get("annotations") or {}).get(DESIRED_REPLICAS)
            if desired is not None and desired != str(self.d["spec"]["replicas"]):
                return True
        return False

    def scale_only(self) -> None:
        """sync(): scaling events and paused deployments, without rolling out."""
        new, olds = self.new_rs(create=False)
        self.scale(new, olds)
        if self.d["spec"].get("paused"):
            self.cleanup()
        self.status = self.calculate_status(new)
        self.write_status()

    def scale(self, new: Obj | None, olds: list[Obj]) -> None:
        replicas = self.d["spec"]["replicas"]
        candidates = ([new] if new else []) + olds
        active = [rs for rs in candidates if spec_replicas(rs) > 0]
        target: Obj | None = None
        if len(active) == 1:
            target = active[0]
        elif not active:
            target = new or (max(olds, key=lambda rs: rs["metadata"]["creationTimestamp"]) if olds else None)
        if target is not None or not active:
            if target is not None and spec_replicas(target) != replicas:
                self.scale_rs(target, replicas)
            return
        if new is not None and spec_replicas(new) == replicas and status_of(new, "availableReplicas") == replicas:
            for rs in olds:
                if spec_replicas(rs) > 0:
                    self.scale_rs(self._refresh(rs), 0)
            return
        # Proportional scaling: spread the difference over the active ReplicaSets by size.
        allowed = replicas + max_surge(self.d)
        total = sum(spec_replicas(rs) for rs in active)
        to_add = allowed - total
        if to_add == 0:
            return
        ordered = sorted(active, key=lambda rs: (-spec_replicas(rs), rs["metadata"]["creationTimestamp"]), reverse=to_add < 0)
        added = 0
        sizes: dict[str, int] = {}
        for rs in ordered:
            share = int(to_add * spec_replicas(rs) / total) if total else 0
            if to_add > 0:
                share = min(share, to_add - added)
            else:
                share = max(share, to_add - added)
            sizes[rs["metadata"]["uid"]] = spec_replicas(rs) + share
            added += share
        if added != to_add and ordered:
            first = ordered[0]["metadata"]["uid"]
            sizes[first] = max(0, sizes[first] + to_add - added)
        for rs in active:
            self.scale_rs(self._refresh(rs), max(0, sizes[rs["metadata"]["uid"]]))

    def cleanup(self) -> None:
        limit = self.d["spec"].get("revisionHistoryLimit")
        if limit is None:
            return
        new = self.find_new()
        cleanable = [
            rs
            for rs in self.olds(new)
            if spec_replicas(rs) == 0
            and status_of(rs, "replicas") == 0
            and (rs.get("status") or {}).get("observedGeneration", 0) >= rs["metadata"].get("generation", 1)
        ]
        excess = len(cleanable) - limit
        if excess <= 0:
            return
        cleanable.sort(key=lambda rs: (revision_of(rs), rs["metadata"]["creationTimestamp"]))
        for rs in cleanable[:excess]:
            self.store.delete(REPLICASETS, self.namespace, rs["metadata"]["name"])
            self.rs_list = [r for r in self.rs_list if r["metadata"]["uid"] != rs["metadata"]["uid"]]

    # -- status --

    def calculate_status(self, new: Obj | None) -> Obj:
        available = sum(status_of(rs, "availableReplicas") for rs in self.rs_list)
        total_spec = sum(spec_replicas(rs) for rs in self.rs_list)
        status: Obj = {
            "observedGeneration": self.d["metadata"].get("generation", 1),
            "replicas": sum(status_of(rs, "replicas") for rs in self.rs_list),
            "updatedReplicas": status_of(new, "replicas") if new else 0,
            "readyReplicas": sum(status_of(rs, "readyReplicas") for rs in self.rs_list),
            "availableReplicas": available,
            "unavailableReplicas": max(0, total_spec - available),
            "conditions": copy.deepcopy(self.status.get("conditions") or []),
        }
        if self.status.get("collisionCount"):
            status["collisionCount"] = self.status["collisionCount"]
        if available >= self.d["spec"]["replicas"] - max_unavailable(self.d):
            set_condition(status, new_condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability."))
        else:
            set_condition(status, new_condition("Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability."))
        return status

    def complete(self, status: Obj) -> bool:
        replicas = self.d["spec"]["replicas"]
        return (
            status.get("updatedReplicas", 0) == replicas
            and status.get("replicas", 0) == replicas
            and status.get("availableReplicas", 0) == replicas
            and status.get("observedGeneration", 0) >= self.d["metadata"].get("generation", 1)
        )

    def progressing(self, status: Obj) -> bool:
        before = self.status_before
        return (
            status.get("updatedReplicas", 0) > before.get("updatedReplicas", 0)
            or status.get("readyReplicas", 0) > before.get("readyReplicas", 0)
            or status.get("availableReplicas", 0) > before.get("availableReplicas", 0)
            or before.get("replicas", 0) - before.get("updatedReplicas", 0)
            > status.get("replicas", 0) - status.get("updatedReplicas", 0)
        )

    def timed_out(self, status: Obj) -> bool:
        condition = get_condition(status, "Progressing")
        if condition is None or condition["reason"] == "NewReplicaSetAvailable":
            return False
        if condition["reason"] == "ProgressDeadlineExceeded":
            return True
        deadline = self.d["spec"]["progressDeadlineSeconds"]
        return parse_rfc3339(condition["lastUpdateTime"]) + deadline < self.now

    def sync_rollout_status(self) -> None:
        new = self.find_new()
        status = self.calculate_status(new)
        if not has_progress_deadline(self.d):
            remove_condition(status, "Progressing")
        current = get_condition(status, "Progressing")
        complete_already = (
            status["replicas"] == status["updatedReplicas"] and current is not None and current["reason"] == "NewReplicaSetAvailable"
        )
        if has_progress_deadline(self.d) and not self.d["spec"].get("paused") and not complete_already:
            new_name = new["metadata"]["name"] if new else ""
            if self.complete(status):
                message = f'ReplicaSet "{new_name}" has successfully progressed.'
                set_condition(status, new_condition("Progressing", "True", "NewReplicaSetAvailable", message))
            elif self.progressing(status):
                message = f'ReplicaSet "{new_name}" is progressing.' if new else f'Deployment "{self.d["metadata"]["name"]}" is progressing.'
                condition = new_condition("Progressing", "True", "ReplicaSetUpdated", message)
                if current is not None and current["status"] == "True":
                    condition["lastTransitionTime"] = current["lastTransitionTime"]
                remove_condition(status, "Progressing")
                status["conditions"].append(condition)
            elif self.timed_out(status):
                message = f'ReplicaSet "{new_name}" has timed out progressing.'
                set_condition(status, new_condition("Progressing", "False", "ProgressDeadlineExceeded", message))
                if current is None or current["reason"] != "ProgressDeadlineExceeded":
                    self.event("Warning", "ProgressDeadlineExceeded", f'Deployment "{self.d["metadata"]["name"]}" has timed out progressing.')
        self.status = status
        self.write_status()

    def write_status(self) -> None:
        status = {k: v for k, v in self.status.items() if v or k in ("conditions", "observedGeneration")}
        for field in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"):
            if not status.get(field):
                status.pop(field, None)
        if status == (self.d.get("status") or {}):
            return

        def write(obj: Obj) -> None:
            obj["status"] = status

        self.d = self.store.mutate(DEPLOYMENTS, self.namespace, self.d["metadata"]["name"], write)

    def paused_conditions(self) -> None:
        """checkPausedConditions: Progressing Unknown while paused, and on resume."""
        if not has_progress_deadline(self.d):
            return
        condition = get_condition(self.status, "Progressing")
        paused = bool(self.d["spec"].get("paused"))
        if paused and (condition is None or condition["reason"] != "DeploymentPaused"):
            set_condition(self.status, new_condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused"))
        elif not paused and condition is not None and condition["reason"] == "DeploymentPaused":
            set_condition(self.status, new_condition("Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed"))

    def run(self) -> None:
        if self.d["metadata"].get("deletionTimestamp"):
            return
        self.paused_conditions()
        if self.d["spec"].get("paused") or self.is_scaling_event():
            self.scale_only()
        elif is_rolling(self.d):
            self.rolling()
        else:
            self.recreate()


# --- the loop -----------------------------------------------------------------------


class ControllerManager:
    """Runs the controllers (Deployment, StatefulSet, DaemonSet, ReplicaSet: workloads.py for the middle two) whenever the store changes, and at least every tick so
    that time-based transitions (minReadySeconds, progress deadlines) happen."""

    def __init__(self, store: Store, tick: float = 0.25) -> None:
        self.store = store
        self.tick = tick
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="controller-manager", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def shutdown(self) -> None:
        self.stop.set()
        with self.store.lock:
            self.store.changed.notify_all()
        self.thread.join(timeout=5)

    def reconcile_once(self) -> None:
        with self.store.lock:
            now = time.time()
            deployments, _ = self.store.list(DEPLOYMENTS, None)
            for d in deployments:
                current = self.store.find(DEPLOYMENTS, d["metadata"]["namespace"], d["metadata"]["name"])
                if current is None:
                    continue
                replicasets, _ = self.store.list(REPLICASETS, d["metadata"]["namespace"])
                pods, _ = self.store.list(PODS, d["metadata"]["namespace"])
                DeploymentSync(self.store, current, replicasets, pods, now).run()
            from .workloads import sync_daemonset, sync_statefulset

            for rt, sync in ((STATEFULSETS, sync_statefulset), (DAEMONSETS, sync_daemonset)):
                workloads, _ = self.store.list(rt, None)
                for workload in workloads:
                    current = self.store.find(rt, workload["metadata"]["namespace"], workload["metadata"]["name"])
                    if current is None or current["metadata"].get("deletionTimestamp"):
                        continue
                    pods, _ = self.store.list(PODS, workload["metadata"]["namespace"])
                    sync(self.store, current, pods, now)
            replicasets, _ = self.store.list(REPLICASETS, None)
            for rs in replicasets:
                current = self.store.find(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"])
                if current is None:
                    continue
                pods, _ = self.store.list(PODS, rs["metadata"]["namespace"])
                sync_replicaset(self.store, current, pods, now)

    def _loop(self) -> None:
        seen = -1
        while not self.stop.is_set():
            try:
                self.reconcile_once()
            except Exception as error:  # a bug here must not kill the cluster silently
                print(f"kube-sim controller error: {error!r}", flush=True)
                import traceback

                traceback.print_exc()
            with self.store.lock:
                if self.store.resource_version == seen:
                    self.store.changed.wait(self.tick)
                seen = self.store.resource_version
