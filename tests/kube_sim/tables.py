"""Server-side printing (`Accept: ...;as=Table`), which `kubectl get` asks for."""

from __future__ import annotations

import time
from typing import Any, Callable

from .resources import (CONTROLLERREVISIONS, DAEMONSETS, DEPLOYMENTS, EVENTS, NAMESPACES, NODES, PODS, REPLICASETS,
                        STATEFULSETS, ResourceType)
from .selectors import LabelSelector

Obj = dict[str, Any]


def wants_table(accept: str) -> bool:
    return any("as=Table" in part and "g=meta.k8s.io" in part for part in accept.split(","))


def human_duration(seconds: float) -> str:
    """kubectl's HumanDuration rendering of an age."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d"


def _age(obj: Obj) -> str:
    from .store import parse_rfc3339

    created = obj.get("metadata", {}).get("creationTimestamp")
    return human_duration(time.time() - parse_rfc3339(created)) if created else "<unknown>"


def _images(obj: Obj) -> tuple[str, str]:
    containers = ((obj.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
    return ",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers)


def _deployment_row(obj: Obj) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    names, images = _images(obj)
    return [
        obj["metadata"]["name"],
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        _age(obj),
        names,
        images,
        str(LabelSelector.from_api(spec.get("selector"))),
    ]


def _replicaset_row(obj: Obj) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    names, images = _images(obj)
    return [
        obj["metadata"]["name"],
        spec.get("replicas", 0),
        status.get("replicas", 0),
        status.get("readyReplicas", 0),
        _age(obj),
        names,
        images,
        str(LabelSelector.from_api(spec.get("selector"))),
    ]


def pod_status_reason(pod: Obj) -> str:
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase", "Pending")
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            reason = state["terminated"].get("reason") or f"ExitCode:{state['terminated'].get('exitCode')}"
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    return reason


def _pod_row(obj: Obj) -> list[Any]:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    containers = (obj.get("spec") or {}).get("containers") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(s.get("restartCount", 0) for s in statuses)
    restart_text = str(restarts)
    finished = [
        s["lastState"]["terminated"].get("finishedAt")
        for s in statuses
        if (s.get("lastState") or {}).get("terminated", {}).get("finishedAt")
    ]
    if restarts and finished:
        from .store import parse_rfc3339

        restart_text += f" ({human_duration(time.time() - parse_rfc3339(max(finished)))} ago)"
    status = obj.get("status") or {}
    return [
        obj["metadata"]["name"],
        f"{ready}/{len(containers)}",
        pod_status_reason(obj),
        restart_text,
        _age(obj),
        status.get("podIP") or "<none>",
        (obj.get("spec") or {}).get("nodeName") or "<none>",
        "<none>",
        "<none>",
    ]


def _statefulset_row(obj: Obj) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    names, images = _images(obj)
    return [obj["metadata"]["name"], f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}", _age(obj), names, images]


def _daemonset_row(obj: Obj) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    names, images = _images(obj)
    selector = ((spec.get("template") or {}).get("spec") or {}).get("nodeSelector") or {}
    return [
        obj["metadata"]["name"],
        status.get("desiredNumberScheduled", 0),
        status.get("currentNumberScheduled", 0),
        status.get("numberReady", 0),
        status.get("updatedNumberScheduled", 0),
        status.get("numberAvailable", 0),
        ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>",
        _age(obj),
        names,
        images,
        str(LabelSelector.from_api(spec.get("selector"))),
    ]


def _controllerrevision_row(obj: Obj) -> list[Any]:
    owner = next((r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
    controller = f"{owner['kind'].lower()}.{owner['apiVersion'].split('/')[0]}/{owner['name']}" if owner else "<none>"
    return [obj["metadata"]["name"], controller, obj.get("revision", 0), _age(obj)]


def _node_row(obj: Obj) -> list[Any]:
    ready = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
    version = ((obj.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")
    return [obj["metadata"]["name"], "Ready" if ready.get("status") == "True" else "NotReady", "<none>", _age(obj), version]


def _namespace_row(obj: Obj) -> list[Any]:
    return [obj["metadata"]["name"], (obj.get("status") or {}).get("phase", "Active"), _age(obj)]


def _event_row(obj: Obj) -> list[Any]:
    from .store import parse_rfc3339

    involved = obj.get("involvedObject") or {}
    last = obj.get("lastTimestamp") or obj["metadata"].get("creationTimestamp")
    return [
        human_duration(time.time() - parse_rfc3339(last)) if last else "<unknown>",
        obj.get("type", ""),
        obj.get("reason", ""),
        f"{(involved.get('kind') or '').lower()}/{involved.get('name', '')}",
        obj.get("message", ""),
    ]


def _column(name: str, kind: str = "string", priority: int = 0, fmt: str = "") -> Obj:
    return {"name": name, "type": kind, "format": fmt, "description": name, "priority": priority}


_NAME = _column("Name", fmt="name")
TABLES: dict[str, tuple[list[Obj], Callable[[Obj], list[Any]]]] = {
    DEPLOYMENTS.key: (
        [_NAME, _column("Ready"), _column("Up-to-date", "integer"), _column("Available", "integer"), _column("Age"),
         _column("Containers", priority=1), _column("Images", priority=1), _column("Selector", priority=1)],
        _deployment_row,
    ),
    REPLICASETS.key: (
        [_NAME, _column("Desired", "integer"), _column("Current", "integer"), _column("Ready", "integer"), _column("Age"),
         _column("Containers", priority=1), _column("Images", priority=1), _column("Selector", priority=1)],
        _replicaset_row,
    ),
    PODS.key: (
        [_NAME, _column("Ready"), _column("Status"), _column("Restarts"), _column("Age"), _column("IP", priority=1),
         _column("Node", priority=1), _column("Nominated Node", priority=1), _column("Readiness Gates", priority=1)],
        _pod_row,
    ),
    # pkg/printers/internalversion/printers.go: the columns kubectl shows for each kind.
    STATEFULSETS.key: (
        [_NAME, _column("Ready"), _column("Age"), _column("Containers", priority=1), _column("Images", priority=1)],
        _statefulset_row,
    ),
    DAEMONSETS.key: (
        [_NAME, _column("Desired", "integer"), _column("Current", "integer"), _column("Ready", "integer"),
         _column("Up-to-date", "integer"), _column("Available", "integer"), _column("Node Selector"), _column("Age"),
         _column("Containers", priority=1), _column("Images", priority=1), _column("Selector", priority=1)],
        _daemonset_row,
    ),
    CONTROLLERREVISIONS.key: (
        [_NAME, _column("Controller"), _column("Revision", "integer"), _column("Age")],
        _controllerrevision_row,
    ),
    NODES.key: ([_NAME, _column("Status"), _column("Roles"), _column("Age"), _column("Version")], _node_row),
    NAMESPACES.key: ([_NAME, _column("Status"), _column("Age")], _namespace_row),
    EVENTS.key: (
        [_column("Last Seen"), _column("Type"), _column("Reason"), _column("Object"), _column("Message")],
        _event_row,
    ),
}


def _row_object(rt: ResourceType, obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return {"kind": rt.kind, "apiVersion": rt.api_version, **obj}
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def to_table(rt: ResourceType, body: Obj, include: str) -> Obj:
    """A list (or a single object) as a meta.k8s.io/v1 Table."""
    columns, render = TABLES[rt.key]
    items = body["items"] if "items" in body else [body]
    rows = []
    for item in items:
        row: Obj = {"cells": render(item)}
        embedded = _row_object(rt, item, include)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    meta = {k: v for k, v in body.get("metadata", {}).items() if k in ("resourceVersion", "continue", "remainingItemCount")}
    if "items" not in body:
        meta = {"resourceVersion": body["metadata"].get("resourceVersion", "")}
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns, "rows": rows}
