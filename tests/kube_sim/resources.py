"""The resource types the simulator serves, and the discovery documents describing them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0",
    "gitCommit": "9edcffcde5595e8a5b1a35f88c421764e575afce",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T07:28:49Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}

ALL_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS = ("get", "patch", "update")


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    # Field labels a fieldSelector may use besides metadata.name / metadata.namespace.
    field_labels: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def dotted_group(self) -> str:
        return f".{self.group}" if self.group else ""

    @property
    def qualified(self) -> str:
        """How error messages name the resource: `deployments.apps`, `pods`."""
        return f"{self.plural}{self.dotted_group}"

    def details(self, name: str) -> dict[str, Any]:
        details: dict[str, Any] = {"name": name, "kind": self.plural}
        if self.group:
            details["group"] = self.group
        return details


NAMESPACES = ResourceType("", "v1", "namespaces", "namespace", "Namespace", False, ("ns",), (), ("status",), ("status.phase",))
PODS = ResourceType(
    "", "v1", "pods", "pod", "Pod", True, ("po",), ("all",), ("status", "log"),
    ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "status.phase", "status.podIP"),
)
EVENTS = ResourceType(
    "", "v1", "events", "event", "Event", True, ("ev",), (), (),
    (
        "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
        "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
        "reason", "reportingComponent", "source", "type",
    ),
)
DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "deployment", "Deployment", True, ("deploy",), ("all",), ("status", "scale"))
REPLICASETS = ResourceType("apps", "v1", "replicasets", "replicaset", "ReplicaSet", True, ("rs",), ("all",), ("status", "scale"), ("status.replicas",))
STATEFULSETS = ResourceType("apps", "v1", "statefulsets", "statefulset", "StatefulSet", True, ("sts",), ("all",), ("status", "scale"))
DAEMONSETS = ResourceType("apps", "v1", "daemonsets", "daemonset", "DaemonSet", True, ("ds",), ("all",), ("status",))
CONTROLLERREVISIONS = ResourceType("apps", "v1", "controllerrevisions", "controllerrevision", "ControllerRevision", True)
# Nodes exist for DaemonSets (one pod per node); all of them are served by the one kubelet.
NODES = ResourceType("", "v1", "nodes", "node", "Node", False, ("no",), (), ("status",), ("spec.unschedulable",))

RESOURCE_TYPES = (NAMESPACES, NODES, PODS, EVENTS, DEPLOYMENTS, REPLICASETS, STATEFULSETS, DAEMONSETS, CONTROLLERREVISIONS)
GROUP_VERSIONS = {"v1": "", "apps/v1": "apps"}


def find_resource(group: str, version: str, plural: str) -> ResourceType | None:
    for rt in RESOURCE_TYPES:
        if rt.group == group and rt.version == version and rt.plural == plural:
            return rt
    return None


def _resource_entry(rt: ResourceType) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": list(ALL_VERBS),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    return entry


def _subresource_entry(rt: ResourceType, sub: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": f"{rt.plural}/{sub}",
        "singularName": "",
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": ["get"] if sub == "log" else list(SUBRESOURCE_VERBS),  # pods/log is read-only
    }
    if sub == "scale":
        entry.update(group="autoscaling", version="v1", kind="Scale")
    return entry


def resource_list(group_version: str) -> dict[str, Any] | None:
    """The APIResourceList at /api/v1 or /apis/apps/v1."""
    if group_version not in GROUP_VERSIONS:
        return None
    group = GROUP_VERSIONS[group_version]
    resources: list[dict[str, Any]] = []
    for rt in RESOURCE_TYPES:
        if rt.group != group:
            continue
        resources.append(_resource_entry(rt))
        resources.extend(_subresource_entry(rt, sub) for sub in rt.subresources)
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def core_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _apps_group() -> dict[str, Any]:
    version = {"groupVersion": "apps/v1", "version": "v1"}
    return {"name": "apps", "versions": [version], "preferredVersion": version}


def group_list() -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_apps_group()]}


def group(name: str) -> dict[str, Any] | None:
    if name != "apps":
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_apps_group()}
