"""The three patch types: strategic merge, JSON merge (RFC 7386) and JSON patch (RFC 6902)."""

from __future__ import annotations

import copy
import json
from typing import Any

from .errors import ApiError

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"

# Lists that a strategic merge patch merges item by item, keyed by this field (the
# `patchMergeKey` of the Kubernetes types this simulator serves). Other lists are replaced.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "volumes": "name",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
# Lists of scalars merged as sets.
MERGED_SCALAR_LISTS = {"finalizers"}


def _invalid(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


# --- JSON merge patch ---------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- strategic merge patch ----------------------------------------------------------


def strategic_merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    result = copy.deepcopy(target)
    retain_keys = patch.get("$retainKeys")
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [item for item in result.get(name) or [] if item not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            result[key] = copy.deepcopy(value)
    for name, order in orders.items():
        if isinstance(result.get(name), list):
            result[name] = _apply_order(name, result[name], order)
    if retain_keys is not None:
        result = {k: v for k, v in result.items() if k in retain_keys}
    return result


def _merge_list(name: str, current: Any, patch: list[Any]) -> list[Any]:
    current = current if isinstance(current, list) else []
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and i.get("$patch") == "replace")]
    if name in MERGED_SCALAR_LISTS:
        return current + [copy.deepcopy(v) for v in patch if v not in current]
    merge_key = MERGE_KEYS.get(name)
    if merge_key is None or not all(isinstance(i, dict) for i in patch):
        return copy.deepcopy(patch)
    result = copy.deepcopy(current)
    for item in patch:
        if merge_key not in item:
            raise _invalid(f"map: {item} does not contain declared merge key: {merge_key}")
        index = next(
            (i for i, existing in enumerate(result) if isinstance(existing, dict) and existing.get(merge_key) == item[merge_key]),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            result.append({k: copy.deepcopy(v) for k, v in item.items() if v is not None})
        else:
            result[index] = strategic_merge(result[index], item)
    return result


def _apply_order(name: str, items: list[Any], order: list[Any]) -> list[Any]:
    merge_key = MERGE_KEYS.get(name)

    def identity(item: Any) -> Any:
        return item.get(merge_key) if merge_key and isinstance(item, dict) else json.dumps(item, sort_keys=True)

    wanted = [identity(o) for o in order]
    ordered = sorted(
        items,
        key=lambda item: wanted.index(identity(item)) if identity(item) in wanted else len(wanted),
    )
    return ordered


# --- JSON patch ---------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _invalid(f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], op: str, path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise _invalid(f"{op} operation does not apply: doc is missing path: {path}") from None
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise _invalid(f"{op} operation does not apply: doc is missing path: {path}")
    return node


def _get(doc: Any, path: str, op: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, op, path)
    last = parts[-1]
    if isinstance(parent, list):
        try:
            return parent[int(last)]
        except (ValueError, IndexError):
            raise _invalid(f"{op} operation does not apply: doc is missing path: {path}") from None
    if not isinstance(parent, dict) or last not in parent:
        raise _invalid(f"{op} operation does not apply: doc is missing key: {path}")
    return parent[last]


def _remove(doc: Any, path: str, op: str) -> Any:
    parts = _pointer(path)
    parent = _parent(doc, parts, op, path)
    last = parts[-1]
    if isinstance(parent, list):
        try:
            return parent.pop(int(last))
        except (ValueError, IndexError):
            raise _invalid(f"{op} operation does not apply: doc is missing path: {path}") from None
    if not isinstance(parent, dict) or last not in parent:
        raise _invalid(f"{op} operation does not apply: doc is missing key: {path}")
    return parent.pop(last)


def _add(doc: Any, path: str, value: Any, op: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, op, path)
    last = parts[-1]
    if isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            try:
                index = int(last)
            except ValueError:
                raise _invalid(f"{op} operation does not apply: doc is missing path: {path}") from None
            if index < 0 or index > len(parent):
                raise _invalid(f"{op} operation does not apply: doc is missing path: {path}")
            parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise _invalid(f"{op} operation does not apply: doc is missing path: {path}")
    return doc


def json_patch(document: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise ApiError.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(document)
    for operation in operations:
        op = operation.get("op")
        path = operation.get("path", "")
        if op == "add":
            doc = _add(doc, path, copy.deepcopy(operation.get("value")), op)
        elif op == "remove":
            _remove(doc, path, op)
        elif op == "replace":
            _get(doc, path, op)
            parts = _pointer(path)
            if not parts:
                doc = copy.deepcopy(operation.get("value"))
            else:
                parent = _parent(doc, parts, op, path)
                key: Any = int(parts[-1]) if isinstance(parent, list) else parts[-1]
                parent[key] = copy.deepcopy(operation.get("value"))
        elif op == "move":
            value = _remove(doc, operation["from"], op)
            doc = _add(doc, path, value, op)
        elif op == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, operation["from"], op)), op)
        elif op == "test":
            if _get(doc, path, op) != operation.get("value"):
                raise _invalid(f"testing value {path} failed: test failed")
        else:
            raise _invalid(f"Unexpected kind: {op}")
    return doc


def apply_patch(content_type: str, document: Any, patch: Any) -> Any:
    """Applies a patch of the given Content-Type; unknown types are 415 like a real server."""
    media = content_type.split(";")[0].strip()
    if media == STRATEGIC:
        if not isinstance(patch, dict):
            raise ApiError.bad_request("json: cannot unmarshal array into Go value of type map[string]interface {}")
        return strategic_merge(document, patch)
    if media == MERGE:
        return merge_patch(document, patch)
    if media == JSON_PATCH:
        return json_patch(document, patch)
    raise ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE}, {STRATEGIC}",
    )
