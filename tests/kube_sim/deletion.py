"""Deleting objects as the API server does: graceful deletion of pods, finalizers, and the
garbage collector's cascade.

Sources (Kubernetes 1.31):
- `staging/src/k8s.io/apiserver/pkg/registry/rest/delete.go` (BeforeDelete): a graceful
  delete sets `deletionTimestamp` = now + grace period and `deletionGracePeriodSeconds`; a
  second delete only ever shortens the grace period.
- `pkg/registry/core/pod/strategy.go` (CheckGracefulDelete): a pod's grace period is the
  request's `gracePeriodSeconds`, else `spec.terminationGracePeriodSeconds` (defaulted to
  30); a pod never scheduled to a node, or already Failed/Succeeded, goes at once.
- `staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go` (Delete,
  ShouldDeleteDuringUpdate): an object with finalizers stays, with `deletionTimestamp` set,
  until an update removes its last finalizer; only then (and only once its grace period is
  0) is it removed.
- `pkg/controller/garbagecollector`: dependents of a removed owner are deleted with default
  options (so pods terminate gracefully) or, for `propagationPolicy=Orphan`, lose the owner
  reference.
"""

from __future__ import annotations

import time

from . import resources
from .resources import NAMESPACES, PODS, ResourceType
from .store import Obj, Store

DEFAULT_GRACE_SECONDS = 30


def _rfc3339(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def grace_period(rt: ResourceType, obj: Obj, requested: int | None) -> int:
    """Seconds the object may take to go away; 0 for everything but running pods."""
    if rt != PODS:
        return 0
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if not spec.get("nodeName") or status.get("phase") in ("Failed", "Succeeded"):
        return 0
    if requested is not None:
        return max(0, requested)
    configured = spec.get("terminationGracePeriodSeconds")
    return DEFAULT_GRACE_SECONDS if configured is None else max(0, configured)


def delete_object(store: Store, rt: ResourceType, obj: Obj, requested_grace: int | None = None,
                  orphan: bool = False) -> tuple[Obj, bool]:
    """Deletes obj as a DELETE request would: (the object as it is now, whether it is gone).

    Call with store.lock held. An object that must wait (grace period, finalizers) is stored
    with its deletion fields set and stays listed."""
    meta = obj["metadata"]
    grace = grace_period(rt, obj, requested_grace)
    if meta.get("deletionTimestamp"):
        current = meta.get("deletionGracePeriodSeconds") or 0
        if grace >= current and (current > 0 or meta.get("finalizers")):
            return obj, False  # already on its way out, no sooner than asked
    if grace > 0 or meta.get("finalizers"):
        meta["deletionTimestamp"] = _rfc3339(time.time() + grace)
        meta["deletionGracePeriodSeconds"] = grace
        return store.replace(rt, obj, expected_rv=None), False
    return remove_object(store, rt, obj, orphan), True


def remove_object(store: Store, rt: ResourceType, obj: Obj, orphan: bool = False) -> Obj:
    """Removes obj from storage for good and lets the garbage collector follow its dependents."""
    meta = obj["metadata"]
    deleted = store.delete(rt, meta.get("namespace", "") if rt.namespaced else "", meta["name"])
    collect_garbage(store, deleted, orphan=orphan)
    if rt == NAMESPACES:
        delete_namespace_contents(store, deleted["metadata"]["name"])
    return deleted


def removable_after_update(new: Obj, old: Obj) -> bool:
    """ShouldDeleteDuringUpdate: the update took away the last finalizer of an object whose
    deletion (with no grace period left) was only waiting for it."""
    old_meta, new_meta = old["metadata"], new["metadata"]
    return (not new_meta.get("finalizers") and bool(old_meta.get("deletionTimestamp"))
            and not old_meta.get("deletionGracePeriodSeconds"))


def collect_garbage(store: Store, owner: Obj, orphan: bool) -> None:
    """Deletes (or orphans) everything that owner controlled, recursively, like the GC."""
    uid = owner["metadata"]["uid"]
    for rt in resources.RESOURCE_TYPES:
        items, _ = store.list(rt, None)
        for item in items:
            refs = item["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == uid for ref in refs):
                continue
            namespace = item["metadata"].get("namespace", "")
            if orphan:
                def drop_ref(obj: Obj) -> None:
                    remaining = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                    if remaining:
                        obj["metadata"]["ownerReferences"] = remaining
                    else:
                        obj["metadata"].pop("ownerReferences", None)

                store.mutate(rt, namespace, item["metadata"]["name"], drop_ref)
            else:
                delete_object(store, rt, item)


def delete_namespace_contents(store: Store, namespace: str) -> None:
    for rt in resources.RESOURCE_TYPES:
        if not rt.namespaced:
            continue
        items, _ = store.list(rt, namespace)
        for item in items:
            store.delete(rt, namespace, item["metadata"]["name"])
