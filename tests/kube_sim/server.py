"""The HTTP front: discovery, CRUD on resources and subresources, and watch streams."""

from __future__ import annotations

import copy
import json
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from . import objects, patches, resources, tables
from .deletion import delete_object, removable_after_update, remove_object
from .admission import ImagePolicy
from .authorization import Authorizer, request_verb
from .errors import ApiError
from .resources import NAMESPACES, ResourceType
from .selectors import FieldSelector, LabelSelector
from .store import Obj, Store, WatchEvent

_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def random_suffix(length: int = 5) -> str:
    return "".join(random.choice(_NAME_ALPHABET) for _ in range(length))


@dataclass
class Route:
    rt: ResourceType
    namespace: str | None  # None: cluster-scoped, or a list across all namespaces
    name: str | None
    subresource: str | None
    watch_path: bool  # the deprecated /watch/ prefix


def _parse_resource_path(group: str, version: str, parts: list[str]) -> Route:
    watch_path = bool(parts) and parts[0] == "watch"
    if watch_path:
        parts = parts[1:]
    namespace: str | None = None
    if len(parts) >= 3 and parts[0] == "namespaces":
        namespace, parts = parts[1], parts[2:]
        rt = resources.find_resource(group, version, parts[0])
        if rt is None or not rt.namespaced:
            raise ApiError.no_such_resource()
    else:
        if not parts:
            raise ApiError.no_such_resource()
        rt = resources.find_resource(group, version, parts[0])
        if rt is None:
            raise ApiError.no_such_resource()
    name = parts[1] if len(parts) >= 2 else None
    subresource = parts[2] if len(parts) >= 3 else None
    if len(parts) > 3 or (subresource is not None and subresource not in rt.subresources):
        raise ApiError.no_such_resource()
    return Route(rt, namespace, name, subresource, watch_path)


class Simulator:
    """State shared by the HTTP handlers: the store plus the watch settings."""

    def __init__(self, store: Store, bookmark_interval: float, authorizer: Authorizer | None = None,
                 admission: list[ImagePolicy] | None = None) -> None:
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.authorizer = authorizer or Authorizer()
        self.admission = admission or []
        self.server_address = ""
        self.stopping = threading.Event()
        self.after_delete: list[Any] = []
        # (namespace, pod, container, previous) -> log text, or ApiError: the kubelet's log endpoint.
        self.pod_logs: Callable[[str, str, str, bool], str] | None = None
        # --conflicts N: writes that another writer's update beats (a controller, a second CI job
        # changing the Deployment between the client's read and its write). Guarded by store.lock.
        self.conflicts_left = 0

    def loses_race(self, rt: ResourceType, expected_rv: str | None) -> bool:
        """Whether this write, with its resourceVersion precondition, is one that --conflicts
        makes lose the race: the answer is the registry's own 409 (apiserver
        pkg/registry/generic/registry/store.go, Update: a precondition on a stale
        resourceVersion), the object stays as it was."""
        if not expected_rv or rt.plural != "deployments" or self.conflicts_left <= 0:
            return False
        self.conflicts_left -= 1
        return True


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        super().__init__(address, Handler)
        self.sim = sim
        sim.server_address = f"{address[0]}:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: the tests read kubectl's output, not ours

    # --- plumbing --------------------------------------------------------------------

    @property
    def sim(self) -> Simulator:
        return self.server.sim

    def _send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_text(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> Any:
        raw = self._raw_body
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as error:
            raise ApiError.bad_request(f"error decoding request body: {error}") from None

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        # Read the body before anything can fail: an unread body would be taken for the
        # next request on this keep-alive connection.
        length = int(self.headers.get("Content-Length") or 0)
        self._raw_body = self.rfile.read(length) if length else b""
        parsed = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()}
        try:
            self._route(parsed.path.rstrip("/") or "/", query)
        except ApiError as error:
            if self.command != "GET" or not getattr(self, "_streaming", False):
                self._send_json(error.code, error.status())
        except (BrokenPipeError, ConnectionResetError):
            pass

    # --- routing ---------------------------------------------------------------------

    def _route(self, path: str, query: dict[str, str]) -> None:
        discovery = self._discovery(path)
        if discovery is not None:
            if self.command != "GET":
                raise ApiError.method_not_allowed(self.command)
            if isinstance(discovery, str):
                self._send_text(200, discovery)
            else:
                self._send_json(200, discovery)
            return
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "v1"]:
            route = self._core_route(parts[2:])
        elif len(parts) >= 3 and parts[0] == "apis":
            route = _parse_resource_path(parts[1], parts[2], parts[3:])
        else:
            self._send_text(404, "404 page not found\n")
            return
        self._serve(route, query)

    @staticmethod
    def _core_route(parts: list[str]) -> Route:
        # /api/v1/namespaces/NAME[/status] is the namespace object itself.
        watch_prefix = parts[:1] == ["watch"]
        rest = parts[1:] if watch_prefix else parts
        if rest[:1] == ["namespaces"] and len(rest) in (2, 3) and (len(rest) == 2 or rest[2] in ("status", "finalize")):
            if len(rest) == 3 and rest[2] == "finalize":
                raise ApiError.no_such_resource()
            return Route(NAMESPACES, None, rest[1], rest[2] if len(rest) == 3 else None, watch_prefix)
        return _parse_resource_path("", "v1", parts)

    def _discovery(self, path: str) -> Any:
        if path == "/version":
            return resources.SERVER_VERSION
        if path in ("/healthz", "/readyz", "/livez"):
            return "ok"
        if path == "/api":
            return resources.core_versions(self.sim.server_address)
        if path == "/apis":
            return resources.group_list()
        if path == "/api/v1":
            return resources.resource_list("v1")
        if path.startswith("/apis/"):
            rest = path[len("/apis/"):].split("/")
            if len(rest) == 1:
                found = resources.group(rest[0])
                if found is None:
                    raise ApiError.no_such_resource()
                return found
            if len(rest) == 2:
                found = resources.resource_list("/".join(rest))
                if found is None:
                    raise ApiError.no_such_resource()
                return found
        return None

    def _authorize(self, route: Route, watch: bool) -> None:
        """RBAC: 403 for what the request's user may not do, before anything is read or written."""
        header = self.headers.get("Authorization", "")
        token = header[len("Bearer "):] if header.startswith("Bearer ") else None
        verb = request_verb(self.command, route.name is not None, watch)
        impersonate = self.headers.get("Impersonate-User")
        self.sim.authorizer.check(token, impersonate, verb, route.rt, route.subresource, route.namespace, route.name)

    def _admit(self, route: Route, operation: str, obj: Obj) -> None:
        """Validating admission: after validation, before the object is stored (subresources are not reviewed)."""
        if route.subresource is None:
            for policy in self.sim.admission:
                policy.review(route.rt, operation, obj)

    def _serve(self, route: Route, query: dict[str, str]) -> None:
        method = self.command
        watch = route.watch_path or query.get("watch") in ("true", "1")
        self._authorize(route, watch)
        if route.name is None:
            if method == "GET" and watch:
                self._watch(route, query)
            elif method == "GET":
                self._send_json(200, self._list(route, query))
            elif method == "POST" and (route.namespace is not None or not route.rt.namespaced):
                self._send_json(201, self._create(route, query))
            else:
                raise ApiError.method_not_allowed(method)
            return
        if route.rt.namespaced and route.namespace is None:
            raise ApiError.no_such_resource()
        if route.subresource == "log":
            if method != "GET":
                raise ApiError.method_not_allowed(method)
            self._send_text(200, self._pod_log(route, query))
        elif method == "GET" and watch:
            query["fieldSelector"] = f"metadata.name={route.name}"
            self._watch(route, query)
        elif method == "GET":
            obj = self._get(route)
            if route.subresource is None and tables.wants_table(self.headers.get("Accept", "")):
                obj = tables.to_table(route.rt, obj, query.get("includeObject", "Metadata"))
            self._send_json(200, obj)
        elif method == "PUT":
            self._send_json(200, self._update(route, query))
        elif method == "PATCH":
            self._send_json(200, self._patch(route, query))
        elif method == "DELETE" and route.subresource is None:
            self._send_json(200, self._delete(route, query))
        else:
            raise ApiError.method_not_allowed(method)

    # --- verbs -----------------------------------------------------------------------

    @property
    def store(self) -> Store:
        return self.sim.store

    def _namespace_of(self, route: Route) -> str:
        return route.namespace or ""

    def _require_namespace(self, route: Route) -> None:
        if route.rt.namespaced and self.store.find(NAMESPACES, "", self._namespace_of(route)) is None:
            raise ApiError.not_found(NAMESPACES, self._namespace_of(route))

    def _selectors(self, route: Route, query: dict[str, str]) -> tuple[LabelSelector | None, FieldSelector | None]:
        labels = LabelSelector.parse(query["labelSelector"]) if query.get("labelSelector") else None
        fields = (
            FieldSelector.parse(query["fieldSelector"], route.rt.field_labels, route.rt.kind, route.rt.api_version)
            if query.get("fieldSelector")
            else None
        )
        return labels, fields

    def _get(self, route: Route) -> Obj:
        obj = self.store.get(route.rt, self._namespace_of(route), route.name or "")
        if route.subresource == "scale":
            return objects.to_scale(route.rt, obj)
        return obj

    def _pod_log(self, route: Route, query: dict[str, str]) -> str:
        """GET pods/NAME/log (container, tailLines, previous). The API server picks and checks the
        container (pkg/registry/core/pod/strategy.go, LogLocation); the kubelet serves the text
        or says why there is none (pkg/kubelet/kubelet_pods.go, validateContainerLogStatus)."""
        namespace, name = self._namespace_of(route), route.name or ""
        pod = self.store.get(route.rt, namespace, name)
        spec = pod.get("spec") or {}
        names = [c["name"] for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])]
        container = query.get("container")
        if not container:
            if len(spec.get("containers") or []) != 1:
                raise ApiError.bad_request(f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]")
            container = names[0]
        elif container not in names:
            raise ApiError.bad_request(f"container {container} is not valid for pod {name}")
        if not spec.get("nodeName") or self.sim.pod_logs is None:
            return ""  # LogLocation: a pod not on a node yet has no kubelet to ask, and no logs
        text = self.sim.pod_logs(namespace, name, container, query.get("previous") in ("true", "1"))
        tail = query.get("tailLines")
        if tail:
            if not tail.isdigit():
                raise ApiError.bad_request(f'tailLines: Invalid value: "{tail}": must be greater than or equal to 0')
            lines = text.splitlines(keepends=True)
            text = "".join(lines[len(lines) - int(tail):]) if int(tail) else ""
        return text

    def _list(self, route: Route, query: dict[str, str]) -> Obj:
        labels, fields = self._selectors(route, query)
        items, resource_version = self.store.list(route.rt, route.namespace, labels, fields)
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        meta: dict[str, Any] = {"resourceVersion": str(resource_version)}
        start = int(query.get("continue") or 0) if (query.get("continue") or "0").isdigit() else 0
        limit = int(query.get("limit") or 0)
        if limit > 0 and start + limit < len(items):
            meta["continue"] = str(start + limit)
            meta["remainingItemCount"] = len(items) - start - limit
            items = items[start : start + limit]
        else:
            items = items[start:]
        body = {"kind": f"{route.rt.kind}List", "apiVersion": route.rt.api_version, "metadata": meta, "items": items}
        if tables.wants_table(self.headers.get("Accept", "")):
            return tables.to_table(route.rt, body, query.get("includeObject", "Metadata"))
        return body

    def _check_kind(self, route: Route, body: Any, kind: str, api_version: str) -> None:
        if not isinstance(body, dict):
            raise ApiError.bad_request("the body of the request was in an unknown format")
        if body.get("kind") not in (None, kind) or body.get("apiVersion") not in (None, api_version):
            raise ApiError.bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the expected API version ({api_version})"
                if body.get("apiVersion") not in (None, api_version)
                else f"the kind in the data ({body.get('kind')}) does not match the expected kind ({kind})"
            )
        body["kind"], body["apiVersion"] = kind, api_version

    def _create(self, route: Route, query: dict[str, str]) -> Obj:
        obj = self._read_body()
        if route.subresource is not None:
            raise ApiError.method_not_allowed("POST")
        self._check_kind(route, obj, route.rt.kind, route.rt.api_version)
        meta = obj.setdefault("metadata", {})
        if route.rt.namespaced:
            if meta.get("namespace") not in (None, "", route.namespace):
                raise ApiError.bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = route.namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + random_suffix()
        # rest/create.go (BeforeCreate): clients cannot create an object already being deleted.
        for server_owned in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                             "deletionGracePeriodSeconds", "generation"):
            meta.pop(server_owned, None)
        with self.store.lock:
            self._require_namespace(route)
            objects.prepare_create(route.rt, obj)
            objects.validate(route.rt, obj)
            self._admit(route, "CREATE", obj)
            if query.get("dryRun"):
                existing = self.store.find(route.rt, self._namespace_of(route), meta["name"])
                if existing is not None:
                    raise ApiError.already_exists(route.rt, meta["name"])
                return obj
            return self.store.create(route.rt, obj)

    def _store_update(self, route: Route, new: Obj, old: Obj, expected_rv: str | None, query: dict[str, str]) -> Obj:
        new.setdefault("metadata", {})
        if new["metadata"].get("name") not in (None, route.name):
            raise ApiError.bad_request(
                f"the name of the object ({new['metadata'].get('name')}) does not match the name on the URL ({route.name})"
            )
        new["metadata"]["name"] = route.name
        if route.rt.namespaced:
            if new["metadata"].get("namespace") not in (None, "", route.namespace):
                raise ApiError.bad_request("the namespace of the provided object does not match the namespace sent on the request")
            new["metadata"]["namespace"] = route.namespace
        if expected_rv and expected_rv != old["metadata"]["resourceVersion"]:
            raise ApiError.conflict(route.rt, route.name or "")
        if route.subresource is None and self.sim.loses_race(route.rt, expected_rv):
            raise ApiError.conflict(route.rt, route.name or "")
        if route.subresource == "status":
            new = objects.prepare_status_update(new, old)
        else:
            for server_owned in ("uid", "creationTimestamp", "generation"):
                if server_owned in old["metadata"]:
                    new["metadata"][server_owned] = old["metadata"][server_owned]
            objects.keep_deletion_fields(route.rt, new, old)
            objects.prepare_update(route.rt, new, old)
            objects.validate(route.rt, new, old)
            self._admit(route, "UPDATE", new)
        new["kind"], new["apiVersion"] = route.rt.kind, route.rt.api_version
        if query.get("dryRun"):
            return new
        stored = self.store.replace(route.rt, new, expected_rv)
        if removable_after_update(stored, old):
            remove_object(self.store, route.rt, stored)  # its last finalizer is gone: so is the object
        return stored

    def _update(self, route: Route, query: dict[str, str]) -> Obj:
        body = self._read_body()
        with self.store.lock:
            old = self.store.get(route.rt, self._namespace_of(route), route.name or "")
            if route.subresource == "scale":
                self._check_kind(route, body, "Scale", "autoscaling/v1")
                new = copy.deepcopy(old)
                new["spec"]["replicas"] = (body.get("spec") or {}).get("replicas", 0)
                expected = (body.get("metadata") or {}).get("resourceVersion")
                return objects.to_scale(route.rt, self._store_update(route, new, old, expected, query))
            self._check_kind(route, body, route.rt.kind, route.rt.api_version)
            expected = (body.get("metadata") or {}).get("resourceVersion")
            return self._store_update(route, body, old, expected, query)

    def _patch(self, route: Route, query: dict[str, str]) -> Obj:
        content_type = self.headers.get("Content-Type", "")
        patch = self._read_body()
        if patch is None:
            raise ApiError.bad_request("the body of the request was in an unknown format")
        with self.store.lock:
            old = self.store.get(route.rt, self._namespace_of(route), route.name or "")
            if route.subresource == "scale":
                scale = objects.to_scale(route.rt, old)
                patched_scale = patches.apply_patch(content_type, scale, patch)
                new = copy.deepcopy(old)
                new["spec"]["replicas"] = (patched_scale.get("spec") or {}).get("replicas", 0)
                expected = patched_scale["metadata"].get("resourceVersion")
                return objects.to_scale(route.rt, self._store_update(route, new, old, expected, query))
            new = patches.apply_patch(content_type, old, patch)
            if not isinstance(new, dict):
                raise ApiError(422, "Invalid", "the patch did not produce an object")
            expected = (new.get("metadata") or {}).get("resourceVersion")
            return self._store_update(route, new, old, expected, query)

    def _delete(self, route: Route, query: dict[str, str]) -> Obj:
        options = self._read_body() or {}
        propagation = query.get("propagationPolicy") or options.get("propagationPolicy") or "Background"
        preconditions = options.get("preconditions") or {}
        requested = query.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
        grace = int(requested) if requested not in (None, "") else None
        with self.store.lock:
            obj = self.store.get(route.rt, self._namespace_of(route), route.name or "")
            if preconditions.get("uid") not in (None, obj["metadata"]["uid"]) or preconditions.get(
                "resourceVersion"
            ) not in (None, obj["metadata"]["resourceVersion"]):
                raise ApiError.conflict(route.rt, route.name or "")
            if query.get("dryRun"):
                return obj
            current, gone = delete_object(self.store, route.rt, obj, grace, orphan=propagation == "Orphan")
        if not gone:
            # store.go: a deletion that has to wait (grace period, finalizers) answers with the object.
            return current
        details = {"name": current["metadata"]["name"], "kind": route.rt.plural, "uid": current["metadata"]["uid"]}
        if route.rt.group:
            details["group"] = route.rt.group
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    # --- watch -----------------------------------------------------------------------

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _write_event(self, event_type: str, obj: Obj) -> None:
        table_for = getattr(self, "_table_watch", None)
        if table_for is not None and event_type in ("ADDED", "MODIFIED", "DELETED"):
            # `kubectl get -w` asks for Tables; like the real server, only the first event
            # carries the column definitions.
            obj = tables.to_table(table_for, obj, self._table_include)
            if self._table_columns_sent:
                obj["columnDefinitions"] = []
            self._table_columns_sent = True
        self._write_chunk(json.dumps({"type": event_type, "object": obj}).encode() + b"\n")

    def _bookmark(self, route: Route, resource_version: int, initial_end: bool = False) -> None:
        meta: dict[str, Any] = {"resourceVersion": str(resource_version), "creationTimestamp": None}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        self._write_event("BOOKMARK", {"kind": route.rt.kind, "apiVersion": route.rt.api_version, "metadata": meta})

    def _translate(self, route: Route, event: WatchEvent, labels: LabelSelector | None, fields: FieldSelector | None) -> str | None:
        """The event type this watcher sees, or None if the change is not for it."""
        if event.resource.key != route.rt.key:
            return None
        namespace = event.obj["metadata"].get("namespace")
        if route.rt.namespaced and route.namespace is not None and namespace != route.namespace:
            return None

        def matches(obj: Obj | None) -> bool:
            return obj is not None and (labels is None or labels.matches(obj)) and (fields is None or fields.matches(obj))

        now_matches = matches(event.obj)
        if event.type != "MODIFIED":
            return event.type if now_matches else None
        before = matches(event.previous)
        if now_matches and before:
            return "MODIFIED"
        if now_matches:
            return "ADDED"
        if before:
            return "DELETED"
        return None

    def _watch(self, route: Route, query: dict[str, str]) -> None:
        labels, fields = self._selectors(route, query)
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else 1800 + random.random() * 1800
        deadline = time.monotonic() + timeout
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        requested = query.get("resourceVersion", "")
        send_initial = query.get("sendInitialEvents") == "true"
        if send_initial and (requested not in ("", "0") or query.get("resourceVersionMatch") != "NotOlderThan"):
            if query.get("resourceVersionMatch") != "NotOlderThan":
                raise ApiError(422, "Invalid", "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
        if requested and not requested.isdigit():
            raise ApiError(400, "BadRequest", f'invalid resource version: strconv.ParseUint: parsing "{requested}": invalid syntax')
        initial: list[Obj] = []
        gone: ApiError | None = None
        with self.store.lock:
            if requested in ("", "0") or send_initial:
                initial, last_rv = self.store.list(route.rt, route.namespace, labels, fields)
            else:
                last_rv = int(requested)
                try:
                    self.store.events_after(last_rv)
                except ApiError as error:
                    gone = error
        self._streaming = True
        self._table_watch = route.rt if tables.wants_table(self.headers.get("Accept", "")) else None
        self._table_include = query.get("includeObject", "Metadata")
        self._table_columns_sent = False
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if gone is not None:
                self._write_event("ERROR", gone.status())
                return
            for obj in initial:
                self._write_event("ADDED", obj)
            if send_initial and bookmarks:
                self._bookmark(route, last_rv, initial_end=True)
            self._stream(route, labels, fields, last_rv, deadline, bookmarks)
        finally:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass
            self.close_connection = True

    def _stream(
        self,
        route: Route,
        labels: LabelSelector | None,
        fields: FieldSelector | None,
        last_rv: int,
        deadline: float,
        bookmarks: bool,
    ) -> None:
        next_bookmark = time.monotonic() + self.sim.bookmark_interval
        while not self.sim.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with self.store.lock:
                try:
                    events = self.store.events_after(last_rv)
                except ApiError as error:
                    self._write_event("ERROR", error.status())
                    return
                if not events:
                    self.store.changed.wait(min(remaining, max(0.05, next_bookmark - time.monotonic()), 1.0))
                    events = self.store.events_after(last_rv)
                store_rv = self.store.resource_version
            for event in events:
                event_type = self._translate(route, event, labels, fields)
                if event_type is not None:
                    self._write_event(event_type, event.obj)
                last_rv = event.resource_version
            if bookmarks and time.monotonic() >= next_bookmark:
                self._bookmark(route, max(last_rv, store_rv) if not events else last_rv)
                next_bookmark = time.monotonic() + self.sim.bookmark_interval
