"""Validating admission webhooks, as far as tests need them: a named policy that denies
writes of objects running certain images.

A real cluster calls the webhook's URL with an AdmissionReview after the object passed
validation and before it is stored; a denial comes back to the client as the Status
`webhook/errors.ToStatusErr` builds (k8s.io/apiserver pkg/admission/plugin/webhook/errors/
statuserror.go): code from the webhook (403 when it gives none), reason Forbidden, and

    deployments.apps "web" is forbidden: admission webhook "NAME" denied the request: MESSAGE

Here the webhook's decision is configured up front instead of served over HTTP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import ApiError
from .resources import ResourceType

Obj = dict[str, Any]


@dataclass(frozen=True)
class ImagePolicy:
    """Deny CREATE/UPDATE of `resources` whose pod spec has an image containing `deny_image_containing`."""

    name: str
    deny_image_containing: str
    message: str
    resources: tuple[str, ...] = ("deployments",)
    operations: tuple[str, ...] = ("CREATE", "UPDATE")
    code: int = 403

    def review(self, rt: ResourceType, operation: str, obj: Obj) -> None:
        if rt.plural not in self.resources or operation not in self.operations:
            return
        if not any(self.deny_image_containing in image for image in _images(obj)):
            return
        why = f'admission webhook "{self.name}" denied the request: {self.message}'
        raise ApiError.forbidden(rt, (obj.get("metadata") or {}).get("name", ""), why, self.code)


def _images(obj: Obj) -> list[str]:
    spec = obj.get("spec") or {}
    pod_spec = (spec.get("template") or {}).get("spec") or spec
    containers = (pod_spec.get("containers") or []) + (pod_spec.get("initContainers") or [])
    return [c.get("image") or "" for c in containers]


def load_policies(path: str | None) -> list[ImagePolicy]:
    """Policies from a JSON file: {"webhooks": [{"name": "images.example.com", "deny_image_containing":
    ":good3", "message": "image is not signed", "resources": ["deployments"], "code": 403}]}."""
    if not path:
        return []
    with open(path) as handle:
        config = json.load(handle)
    policies = []
    for hook in config.get("webhooks", []):
        for key in ("resources", "operations"):
            if key in hook:
                hook[key] = tuple(hook[key])
        policies.append(ImagePolicy(**hook))
    return policies
