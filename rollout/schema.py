"""The one checker for rollout.toml tables: unknown keys, required keys and value types.

A section of the file (an app, a target kind's settings, [build], [notify], ...) is
described by a `Schema`: one `Field` per allowed key, each with a validator that
returns the value to keep or raises `Invalid`. `check` applies it and turns every
problem into a one-line ConfigError that names the file and the dotted key, so a
typo never turns into a silent default. Nothing here knows what a section means:
rollout.config and each target kind (rollout.targets.kinds) declare their own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from rollout.errors import ConfigError

Validator = Callable[[Any], Any]


class Invalid(Exception):
    """Raised by a validator: `reason` completes "FILE: KEY ..." ("must be a string, not int").

    With `show_value` the message reads "KEY = VALUE: reason", for values whose text helps
    (a number out of range, a word not in a list).
    """

    def __init__(self, reason: str, *, show_value: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.show_value = show_value


@dataclass(frozen=True)
class Field:
    """One allowed key: how its value is checked, and what to say when it is required but absent.

    `missing` set: the key is required (absent, or an empty string, is an error ending with this hint).
    `attribute`: the name the checked value is returned under, when it differs from the key.
    """

    validator: Validator
    missing: str | None = None
    attribute: str | None = None


Schema = Mapping[str, Field]


def problem(path: Path | None, where: str, message: str) -> ConfigError:
    """The ConfigError (exit 2) for `message` about key `where` (dotted, e.g. "apps.web.image") of file `path`."""
    return ConfigError(f"{path}: {where}{message}")


def check(table: Mapping[str, Any], schema: Schema, path: Path | None, where: str) -> dict[str, Any]:
    """Check `table` against `schema`; return {attribute: checked value} for the keys present.

    `where` is the dotted prefix of the table's keys ("apps.web.health."). Raises ConfigError
    naming the file and the key for the first unknown key, missing required key or bad value.
    """
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise ConfigError(f"{path}: unknown key {where}{unknown[0]}: allowed here are {', '.join(sorted(schema))}")
    values: dict[str, Any] = {}
    for key, spec in schema.items():
        value = table.get(key)
        if spec.missing is not None and (value is None or value == ""):
            raise problem(path, where, f"{key} is missing: {spec.missing}")
        if key not in table:
            continue
        try:
            values[spec.attribute or key] = spec.validator(value)
        except Invalid as exc:
            shown = f" = {value!r}:" if exc.show_value else ""
            raise problem(path, where, f"{key}{shown} {exc.reason}") from None
    return values


def sub_table(table: Mapping[str, Any], key: str, path: Path | None, where: str) -> dict[str, Any]:
    """table[key] as a table ({} when absent); anything else is a ConfigError naming the key."""
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise problem(path, where, f"{key} must be a table, not {type(value).__name__}")
    return value


# -- validators ------------------------------------------------------------------------------


def string(value: Any) -> str:
    """Any string (an empty one too: a required key says `missing`)."""
    if not isinstance(value, str):
        raise Invalid(f"must be a string, not {type(value).__name__}")
    return value


def table(value: Any) -> dict[str, Any]:
    """A sub-table, checked by its own schema later."""
    if not isinstance(value, dict):
        raise Invalid(f"must be a table, not {type(value).__name__}")
    return value


def is_string_list(value: Any) -> bool:
    """True for a list whose items are all strings (an empty list too)."""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def string_list(reason: str = "must be an array of strings") -> Validator:
    """A validator for an array of strings; `reason` is the error's wording."""
    def validate(value: Any) -> list[str]:
        if not is_string_list(value):
            raise Invalid(reason)
        return value
    return validate


def string_or_list(value: Any) -> str | list[str]:
    """A string or an array of strings (a command: shell form or exec form)."""
    if not (isinstance(value, str) or is_string_list(value)):
        raise Invalid("must be a string or an array of strings")
    return value


def table_of(allowed: tuple[type, ...], reason: str, *, bools: bool = False) -> Validator:
    """A table whose values are all of `allowed` types; TOML booleans count as ints only with `bools`."""
    def validate(value: Any) -> dict[str, Any]:
        if not (isinstance(value, dict) and all(isinstance(v, allowed) and (bools or not isinstance(v, bool))
                                                 for v in value.values())):
            raise Invalid(reason)
        return value
    return validate


def seconds(value: Any) -> float:
    """A duration in seconds: a finite number >= 0 (TOML's inf and nan are refused), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise Invalid("must be a finite number of seconds >= 0", show_value=True)
    return float(value)


def whole(least: int) -> Validator:
    """A validator for a whole number >= least (TOML booleans are not numbers here)."""
    def validate(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise Invalid(f"must be a whole number >= {least}", show_value=True)
        return value
    return validate


def matching(pattern: str, reason: str) -> Validator:
    """A string matching `pattern` whole; `reason` says what is allowed."""
    def validate(value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            raise Invalid(reason, show_value=True)
        return value
    return validate


def one_of(*choices: str) -> Validator:
    """A validator for one of the given words, which the error lists."""
    def validate(value: Any) -> str:
        if value not in choices:
            raise Invalid("use " + " or ".join(f'"{c}"' for c in choices), show_value=True)
        return value
    return validate
