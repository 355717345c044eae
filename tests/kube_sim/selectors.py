"""Label selectors (`a=b,c in (x,y),!d`) and field selectors (`metadata.name=x`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ApiError

_SET_TERM = re.compile(r"^\s*(!?)\s*([A-Za-z0-9./_-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQUALITY_TERM = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # in, notin, exists, !exists
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "exists":
            return self.key in labels
        if self.operator == "!exists":
            return self.key not in labels
        if self.operator == "in":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # notin: a missing key matches


def _split_terms(text: str) -> list[str]:
    """Splits on commas outside parentheses."""
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t for t in terms if t.strip()]


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...]

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        requirements: list[Requirement] = []
        for term in _split_terms(text):
            equality = _EQUALITY_TERM.match(term)
            if equality:
                key, op, value = equality.groups()
                requirements.append(Requirement(key, "notin" if op == "!=" else "in", frozenset([value])))
                continue
            set_term = _SET_TERM.match(term)
            if not set_term:
                raise ApiError.bad_request(f"unable to parse requirement: found '{term.strip()}', expected: in, notin, =, ==, !=, gt, lt")
            negated, key, op, values = set_term.groups()
            if op:
                if negated:
                    raise ApiError.bad_request(f"unable to parse requirement: {term.strip()}")
                members = frozenset(v.strip() for v in values.split(",") if v.strip())
                requirements.append(Requirement(key, op, members))
            else:
                requirements.append(Requirement(key, "!exists" if negated else "exists"))
        return cls(tuple(requirements))

    @classmethod
    def from_api(cls, selector: dict[str, Any] | None) -> LabelSelector:
        """From a LabelSelector object (matchLabels + matchExpressions)."""
        selector = selector or {}
        requirements = [Requirement(k, "in", frozenset([v])) for k, v in (selector.get("matchLabels") or {}).items()]
        operators = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
        for expression in selector.get("matchExpressions") or []:
            requirements.append(
                Requirement(expression["key"], operators[expression["operator"]], frozenset(expression.get("values") or []))
            )
        return cls(tuple(requirements))

    def matches_labels(self, labels: dict[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def matches(self, obj: dict[str, Any]) -> bool:
        return self.matches_labels(obj.get("metadata", {}).get("labels") or {})

    def __str__(self) -> str:
        parts = []
        for r in self.requirements:
            if r.operator == "in" and len(r.values) == 1:
                parts.append(f"{r.key}={next(iter(r.values))}")
            elif r.operator in ("in", "notin"):
                parts.append(f"{r.key} {r.operator} ({','.join(sorted(r.values))})")
            else:
                parts.append(("!" if r.operator == "!exists" else "") + r.key)
        return ",".join(parts)


def field_value(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[tuple[str, bool, str], ...]  # (field, equal?, value)

    @classmethod
    def parse(cls, text: str, allowed: tuple[str, ...], kind: str, api_version: str) -> FieldSelector:
        terms = []
        for term in _split_terms(text):
            match = re.match(r"^\s*([A-Za-z0-9._-]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
            if not match:
                raise ApiError.bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
            name, op, value = match.groups()
            if name not in ("metadata.name", "metadata.namespace") + allowed:
                raise ApiError.bad_request(f'field label not supported: {name}')
            terms.append((name, op != "!=", value))
        return cls(tuple(terms))

    def matches(self, obj: dict[str, Any]) -> bool:
        return all((field_value(obj, name) == value) == equal for name, equal, value in self.terms)
