"""Who may do what: bearer tokens mapped to users, each user's allow-list of RBAC rules.

Modelled on the API server's authorization step (k8s.io/apiserver
pkg/endpoints/filters/authorization.go) with the RBAC authorizer
(plugin/pkg/auth/authorizer/rbac/rbac.go): rules only ever allow, whatever no rule allows
is refused with 403 and the message `responsewriters.forbiddenMessage` builds:

    deployments.apps "web" is forbidden: User "ci" cannot patch resource "deployments"
    in API group "apps" in the namespace "default"

Tokens that the file does not list keep the simulator's old behaviour: everything is
allowed (as for a cluster-admin), so existing kubeconfigs work unchanged. Such a client may
impersonate a user (`kubectl --as=ci`, header Impersonate-User, k8s.io/apiserver
pkg/endpoints/filters/impersonation.go): the request is then authorized as that user, with the
file's rules for that name or none at all. kubectl sends no bearer token over plain HTTP (the
simulator has no TLS), so kubectl tests use --as; the Python client does send tokens. Non-resource
paths (discovery, /version) are allowed for everyone, as the `system:discovery` and
`system:public-info-viewer` roles do on a real cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError
from .resources import ResourceType


@dataclass(frozen=True)
class Rule:
    """One PolicyRule of a Role: `*` matches anything in its list."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]  # may name subresources: "deployments/scale"
    verbs: tuple[str, ...]

    def allows(self, verb: str, group: str, resource: str) -> bool:
        return (
            ("*" in self.verbs or verb in self.verbs)
            and ("*" in self.api_groups or group in self.api_groups)
            and ("*" in self.resources or resource in self.resources)
        )


@dataclass(frozen=True)
class User:
    name: str
    rules: tuple[Rule, ...] = ()

    def allows(self, verb: str, group: str, resource: str) -> bool:
        return any(rule.allows(verb, group, resource) for rule in self.rules)


@dataclass
class Authorizer:
    """Token -> user; `check` raises the API server's 403 for what the user may not do."""

    users: dict[str, User] = field(default_factory=dict)

    def check(self, token: str | None, impersonate: str | None, verb: str, rt: ResourceType,
              subresource: str | None, namespace: str | None, name: str | None) -> None:
        user = self.users.get(token or "")
        if impersonate:
            if user is not None:  # only the unrestricted may impersonate
                why = f'User "{user.name}" cannot impersonate resource "users" in API group "" at the cluster scope'
                raise ApiError(403, "Forbidden", f'users "{impersonate}" is forbidden: {why}',
                               {"name": impersonate, "kind": "users"})
            user = next((u for u in self.users.values() if u.name == impersonate), User(impersonate))
        if user is None:
            return  # not in the RBAC file: unrestricted, as before RBAC was modelled
        resource = f"{rt.plural}/{subresource}" if subresource else rt.plural
        if user.allows(verb, rt.group, resource):
            return
        where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        why = f'User "{user.name}" cannot {verb} resource "{resource}" in API group "{rt.group}" {where}'
        raise ApiError.forbidden(rt, name or "", why)


def request_verb(method: str, named: bool, watch: bool) -> str:
    """The authorizer's verb for an HTTP request (k8s.io/apiserver pkg/endpoints/request/requestinfo.go)."""
    if method == "GET":
        return "watch" if watch else ("get" if named else "list")
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete" if named else "deletecollection"}.get(
        method, method.lower())


def load_authorizer(path: str | None) -> Authorizer:
    """Users from a JSON file: {"users": [{"token": "T", "name": "ci", "rules": [{"apiGroups": ["apps"],
    "resources": ["deployments"], "verbs": ["get", "list", "watch"]}]}]} (rules as in a Role)."""
    if not path:
        return Authorizer()
    with open(path) as handle:
        config: dict[str, Any] = json.load(handle)
    users = {}
    for entry in config.get("users", []):
        rules = tuple(
            Rule(tuple(rule.get("apiGroups", [])), tuple(rule.get("resources", [])), tuple(rule.get("verbs", [])))
            for rule in entry.get("rules", [])
        )
        users[entry["token"]] = User(entry["name"], rules)
    return Authorizer(users)
