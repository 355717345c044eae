"""In-memory object store with one global resourceVersion counter and an event log.

Every write bumps the counter and appends (rv, type, resource, object) to the log, so a
watch from resourceVersion N can replay what happened after N, and answer 410 Gone when N
has already been compacted away, as a real API server does.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ApiError
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector

Obj = dict[str, Any]

# How many events a watch can look back on before it gets 410 Gone.
DEFAULT_EVENT_LOG_SIZE = 20000


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()


@dataclass
class WatchEvent:
    resource_version: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: ResourceType
    obj: Obj
    # The object before this change, so a filtered watch can turn a MODIFIED that moves
    # an object into or out of its selector into ADDED / DELETED.
    previous: Obj | None = None


@dataclass
class Store:
    objects: dict[tuple[str, str, str], Obj] = field(default_factory=dict)
    log: list[WatchEvent] = field(default_factory=list)
    # Watches before this resourceVersion cannot be served any more (compacted).
    oldest_watchable: int = 1
    resource_version: int = 1
    event_log_size: int = DEFAULT_EVENT_LOG_SIZE
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    # --- reads -------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        with self.lock:
            obj = self.objects.get((rt.key, namespace, name))
            if obj is None:
                raise ApiError.not_found(rt, name)
            return copy.deepcopy(obj)

    def find(self, rt: ResourceType, namespace: str, name: str) -> Obj | None:
        with self.lock:
            obj = self.objects.get((rt.key, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
    ) -> tuple[list[Obj], int]:
        with self.lock:
            items = [
                copy.deepcopy(obj)
                for (key, ns, _), obj in sorted(self.objects.items(), key=lambda kv: kv[0])
                if key == rt.key
                and (namespace is None or ns == namespace)
                and (labels is None or labels.matches(obj))
                and (fields is None or fields.matches(obj))
            ]
            return items, self.resource_version

    # --- writes ------------------------------------------------------------------

    def _bump(self, event_type: str, rt: ResourceType, obj: Obj, previous: Obj | None = None) -> None:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        self.log.append(WatchEvent(self.resource_version, event_type, rt, copy.deepcopy(obj), previous))
        if len(self.log) > self.event_log_size:
            drop = len(self.log) - max(1, self.event_log_size // 2)
            self.oldest_watchable = self.log[drop].resource_version
            del self.log[:drop]
        self.changed.notify_all()

    def create(self, rt: ResourceType, obj: Obj) -> Obj:
        with self.lock:
            meta = obj.setdefault("metadata", {})
            namespace = meta.get("namespace", "") if rt.namespaced else ""
            key = (rt.key, namespace, meta["name"])
            if key in self.objects:
                raise ApiError.already_exists(rt, meta["name"])
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_rfc3339())
            stored = copy.deepcopy(obj)
            self._bump("ADDED", rt, stored)
            self.objects[key] = stored
            return copy.deepcopy(stored)

    def replace(self, rt: ResourceType, obj: Obj, expected_rv: str | None) -> Obj:
        """Stores obj in place of the current object; a stale expected_rv is a 409."""
        with self.lock:
            meta = obj["metadata"]
            namespace = meta.get("namespace", "") if rt.namespaced else ""
            key = (rt.key, namespace, meta["name"])
            current = self.objects.get(key)
            if current is None:
                raise ApiError.not_found(rt, meta["name"])
            if expected_rv and expected_rv != current["metadata"]["resourceVersion"]:
                raise ApiError.conflict(rt, meta["name"])
            # Identity fields are owned by the server.
            for owned in ("uid", "creationTimestamp"):
                meta[owned] = current["metadata"][owned]
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            if obj == current:
                return copy.deepcopy(current)  # a no-op write does not bump resourceVersion
            stored = copy.deepcopy(obj)
            self._bump("MODIFIED", rt, stored, current)
            self.objects[key] = stored
            return copy.deepcopy(stored)

    def mutate(self, rt: ResourceType, namespace: str, name: str, change: Callable[[Obj], None]) -> Obj:
        """Read-modify-write under the lock, for controllers and the kubelet."""
        with self.lock:
            obj = self.get(rt, namespace, name)
            change(obj)
            return self.replace(rt, obj, expected_rv=None)

    def delete(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        with self.lock:
            key = (rt.key, namespace if rt.namespaced else "", name)
            current = self.objects.pop(key, None)
            if current is None:
                raise ApiError.not_found(rt, name)
            self._bump("DELETED", rt, current)
            return copy.deepcopy(current)

    # --- watch -------------------------------------------------------------------

    def events_after(self, resource_version: int) -> list[WatchEvent]:
        """Events newer than resource_version; raises 410 Gone if they were compacted."""
        with self.lock:
            if resource_version < self.oldest_watchable - 1:
                raise ApiError.gone(resource_version, self.oldest_watchable)
            low, high = 0, len(self.log)
            while low < high:
                mid = (low + high) // 2
                if self.log[mid].resource_version <= resource_version:
                    low = mid + 1
                else:
                    high = mid
            return self.log[low:]
