"""API errors rendered as the `Status` objects a real API server returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .resources import ResourceType


@dataclass
class Cause:
    reason: str
    message: str
    field: str


@dataclass
class ApiError(Exception):
    code: int
    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body

    @classmethod
    def not_found(cls, rt: ResourceType, name: str) -> ApiError:
        return cls(404, "NotFound", f'{rt.qualified} "{name}" not found', rt.details(name))

    @classmethod
    def already_exists(cls, rt: ResourceType, name: str) -> ApiError:
        return cls(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', rt.details(name))

    @classmethod
    def conflict(cls, rt: ResourceType, name: str) -> ApiError:
        message = (
            f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again"
        )
        return cls(409, "Conflict", message, rt.details(name))

    @classmethod
    def gone(cls, requested: int, oldest: int) -> ApiError:
        return cls(410, "Expired", f"too old resource version: {requested} ({oldest})")

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def no_such_resource(cls) -> ApiError:
        return cls(404, "NotFound", "the server could not find the requested resource", {})

    @classmethod
    def method_not_allowed(cls, method: str) -> ApiError:
        return cls(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    @classmethod
    def forbidden(cls, rt: ResourceType, name: str, why: str, code: int = 403) -> ApiError:
        """What apimachinery's errors.NewForbidden renders: `deployments.apps "web" is forbidden: WHY`
        (without a name: `deployments.apps is forbidden: WHY`); details name the resource, not the Kind."""
        subject = f'{rt.qualified} "{name}"' if name else rt.qualified
        return cls(code, "Forbidden", f"{subject} is forbidden: {why}", rt.details(name))

    @classmethod
    def invalid(cls, rt: ResourceType, name: str, causes: list[Cause]) -> ApiError:
        texts = [f"{c.field}: {c.message}" for c in causes]
        joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
        details = rt.details(name)
        details["kind"] = rt.kind  # unlike NotFound, Invalid names the Kind, not the resource
        details["causes"] = [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes]
        return cls(422, "Invalid", f'{rt.kind}{rt.dotted_group} "{name}" is invalid: {joined}', details)
