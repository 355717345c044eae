"""What differs between the workloads a kubernetes target moves: Deployment, StatefulSet, DaemonSet.

rollout.targets.kubernetes does everything they share (the image patch, annotations, pods' fast
failures, restart counting, status from pods' imageIDs); a Workload says, for one kind, how to
read, patch and watch it through the official client, what is refused before a change, when its
rollout is complete (as `kubectl rollout status` judges it: k8s.io/kubectl
pkg/polymorphichelpers/rollout_status.go), and which pods run it now and which run the new
template. Objects are the API server's JSON (dicts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

WORKLOADS = ("deployment", "statefulset", "daemonset")
DEFAULT_WORKLOAD = "deployment"


@dataclass(frozen=True)
class Progress:
    """One look at a rollout: done, or why not; `failure` when it will not complete by waiting."""

    done: bool
    detail: str = ""
    failure: str | None = None


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


def owner_uids(obj: dict[str, Any]) -> set[str]:
    """The uids in obj's ownerReferences."""
    return {ref.get("uid") for ref in obj["metadata"].get("ownerReferences") or []}


class Workload:
    """One kind of workload (subclasses: DeploymentKind, StatefulSetKind, DaemonSetKind); `name`
    is the object's name in the target's namespace. `kind` is kubectl's resource name
    ("statefulset"), `api` the client's method suffix ("stateful_set"), `plural` the watch's name,
    `title` the API's Kind ("StatefulSet", as messages and the --dry-run preview name it)."""

    kind = "deployment"
    title = "Deployment"
    api = "deployment"
    plural = "deployments"

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"

    def method(self, apps: Any, verb: str) -> Callable[..., Any]:
        """The AppsV1Api method for verb ("read", "patch", "list") on this kind, e.g. read_namespaced_stateful_set."""
        return getattr(apps, f"{verb}_namespaced_{self.api}")  # type: ignore[no-any-return]

    def refusal(self, obj: dict[str, Any]) -> str | None:
        """Why a deploy cannot be verified on obj as it is (checked before any change), or None."""
        raise NotImplementedError

    def progress(self, obj: dict[str, Any], generation: int) -> Progress:
        """kubectl rollout status's verdict on obj, `generation` being the one our patch produced."""
        raise NotImplementedError

    def counts_for_status(self, obj: dict[str, Any], pod: dict[str, Any]) -> bool:
        """Whether an owned, live pod is meant to run the template (drift is judged on these)."""
        return True

    def owns(self, obj: dict[str, Any], pod: dict[str, Any]) -> bool:
        """Whether the pod is this workload's own (ownerReferences; Deployments: see DeploymentKind)."""
        return obj["metadata"].get("uid") in owner_uids(pod)

    def observed(self, obj: dict[str, Any], generation: int) -> bool:
        """The controller has seen the spec with `generation` (and the object's own)."""
        observed = _status(obj).get("observedGeneration", 0)
        return observed >= max(obj["metadata"].get("generation", 0), generation)


class DeploymentKind(Workload):
    """A Deployment: its pods belong to its ReplicaSets (rollout.targets.kubernetes finds them)."""

    def refusal(self, obj: dict[str, Any]) -> str | None:
        """A paused Deployment (the controller would not roll) or one scaled to 0 (nothing to verify)."""
        spec = obj.get("spec", {})
        if spec.get("paused"):
            return f"deployment {self.name} is paused: `kubectl rollout resume deployment/{self.name}` first"
        if spec.get("replicas", 1) == 0:
            return f"deployment {self.name} is scaled to 0 replicas: nothing would run to verify; scale it up first"
        return None

    def progress(self, obj: dict[str, Any], generation: int) -> Progress:
        """DeploymentStatusViewer: observed, no ProgressDeadlineExceeded, all updated, no old replicas, available."""
        spec, status = obj.get("spec", {}), _status(obj)
        if not self.observed(obj, generation):
            return Progress(False, "waiting for the deployment spec update to be observed")
        for condition in status.get("conditions") or []:
            if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
                return Progress(False, failure=f"deployment {self.name} exceeded its progress deadline")
        replicas = spec.get("replicas", 1)
        updated, total = status.get("updatedReplicas", 0), status.get("replicas", 0)
        available = status.get("availableReplicas", 0)
        if updated < replicas:
            return Progress(False, f"{updated} of {replicas} updated replicas are available")
        if total > updated:
            return Progress(False, f"{total - updated} old replicas are pending termination")
        if available < updated:
            return Progress(False, f"{available} of {updated} updated replicas are available")
        return Progress(True, f"{available}/{replicas} replicas available")


def _on_delete(kind: str, name: str) -> str:
    return (f"{kind} {name} has updateStrategy OnDelete: its controller replaces no pod when the template"
            " changes (only pods someone deletes), so a deploy could not be verified or reverted; set"
            " `updateStrategy: {type: RollingUpdate}` to let rollout move it")


def partition(obj: dict[str, Any]) -> int:
    """A StatefulSet's spec.updateStrategy.rollingUpdate.partition (0 when unset)."""
    rolling = (obj.get("spec", {}).get("updateStrategy") or {}).get("rollingUpdate") or {}
    return int(rolling.get("partition") or 0)


class StatefulSetKind(Workload):
    """A StatefulSet: pods `<name>-<ordinal>`; with a partition only ordinals >= partition move."""

    kind = "statefulset"
    title = "StatefulSet"
    api = "stateful_set"
    plural = "statefulsets"

    def refusal(self, obj: dict[str, Any]) -> str | None:
        """OnDelete (nothing would roll), 0 replicas, or a partition at or above replicas (no pod would update)."""
        spec = obj.get("spec", {})
        if (spec.get("updateStrategy") or {}).get("type") == "OnDelete":
            return _on_delete(self.kind, self.name)
        replicas = spec.get("replicas", 1)
        if replicas == 0:
            return f"statefulset {self.name} is scaled to 0 replicas: nothing would run to verify; scale it up first"
        if partition(obj) >= replicas:
            return (f"statefulset {self.name} has partition {partition(obj)} and {replicas} replicas: no pod would"
                    " run the new release, so there is nothing to verify; lower the partition")
        return None

    def progress(self, obj: dict[str, Any], generation: int) -> Progress:
        """StatefulSetStatusViewer: observed (observedGeneration 0 is not), readyReplicas = replicas,
        then, with a rollingUpdate (the API server always sets one, partition 0), updatedReplicas
        >= replicas - partition; without one, updateRevision = currentRevision."""
        spec, status = obj.get("spec", {}), _status(obj)
        if not status.get("observedGeneration") or not self.observed(obj, generation):
            return Progress(False, "waiting for the statefulset spec update to be observed")
        replicas = spec.get("replicas", 1)
        ready = status.get("readyReplicas", 0)
        if ready < replicas:
            return Progress(False, f"waiting for {replicas - ready} pods to be ready")
        updated = status.get("updatedReplicas", 0)
        if (spec.get("updateStrategy") or {}).get("rollingUpdate") is not None:
            wanted = replicas - partition(obj)
            if updated < wanted:
                return Progress(False, f"{updated} of {wanted} pods updated (partition {partition(obj)})")
            return Progress(True, f"{updated} pods updated, {ready}/{replicas} ready"
                            + (f" (partition {partition(obj)}: ordinals below it keep their revision)" if partition(obj) else ""))
        if status.get("updateRevision") != status.get("currentRevision"):
            return Progress(False, f"{updated} pods at revision {status.get('updateRevision')}")
        return Progress(True, f"{status.get('currentReplicas', 0)} pods at revision {status.get('currentRevision')}")

    def ordinal(self, pod: dict[str, Any]) -> int | None:
        """The pod's ordinal (`<name>-<n>`), None for a pod not named so."""
        match = re.fullmatch(re.escape(self.name) + r"-(\d+)", pod["metadata"].get("name", ""))
        return int(match.group(1)) if match else None

    def counts_for_status(self, obj: dict[str, Any], pod: dict[str, Any]) -> bool:
        """Ordinals below the partition keep the current revision by design: no drift."""
        ordinal = self.ordinal(pod)
        return ordinal is not None and ordinal >= partition(obj)


class DaemonSetKind(Workload):
    """A DaemonSet: one pod per node it should run on."""

    kind = "daemonset"
    title = "DaemonSet"
    api = "daemon_set"
    plural = "daemonsets"

    def refusal(self, obj: dict[str, Any]) -> str | None:
        """OnDelete (nothing would roll), or no node to run on (nothing to verify)."""
        if (obj.get("spec", {}).get("updateStrategy") or {}).get("type") == "OnDelete":
            return _on_delete(self.kind, self.name)
        status = _status(obj)
        if status.get("observedGeneration") and not status.get("desiredNumberScheduled"):
            return f"daemonset {self.name} runs on no node: nothing would run to verify"
        return None

    def progress(self, obj: dict[str, Any], generation: int) -> Progress:
        """DaemonSetStatusViewer: observed, updatedNumberScheduled and numberAvailable = desiredNumberScheduled."""
        status = _status(obj)
        if not self.observed(obj, generation):
            return Progress(False, "waiting for the daemon set spec update to be observed")
        desired = status.get("desiredNumberScheduled", 0)
        updated, available = status.get("updatedNumberScheduled", 0), status.get("numberAvailable", 0)
        if updated < desired:
            return Progress(False, f"{updated} out of {desired} new pods have been updated")
        if available < desired:
            return Progress(False, f"{available} of {desired} updated pods are available")
        return Progress(True, f"{available}/{desired} pods available")


def workload(kind: str, name: str) -> Workload:
    """The Workload for a `workload` setting (one of WORKLOADS) and the object's name."""
    return {"deployment": DeploymentKind, "statefulset": StatefulSetKind, "daemonset": DaemonSetKind}[kind](name)
