"""Telling a PostgreSQL ledger URL from a SQLite path, and showing one without its password.

Kept apart from rollout.ledger_postgres so config loading and messages need no psycopg import.
"""

from __future__ import annotations

import re

URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(location: object) -> bool:
    """True when a ledger location names a PostgreSQL server (`postgresql://` or `postgres://`,
    the schemes libpq accepts in a connection URI)."""
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def redact(url: str) -> str:
    """The URL or libpq key=value string with any password replaced by `***`, for messages.

    `postgresql://alice:s3cret@db:5432/rollout?sslmode=verify-full` ->
    `postgresql://alice:***@db:5432/rollout?sslmode=verify-full`; a `password=` parameter in
    the query string or in a key=value string is masked too, and so is the password of a URL of
    any other scheme (a mistyped `mysql://...` is shown masked in the error that refuses it).
    """
    masked = _mask_userinfo(url)
    masked = re.sub(r"([?&]password=)[^&#]*", r"\1***", masked, flags=re.IGNORECASE)
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", masked, flags=re.IGNORECASE)


def _mask_userinfo(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    # The user part ends at the last '@' before the query: a password may hold '@' or ':' itself.
    query = rest.find("?")
    at = rest.rfind("@", 0, query if query >= 0 else len(rest))
    user, colon, _password = rest[:max(at, 0)].partition(":")
    if at < 0 or not colon:
        return url
    return f"{scheme}://{user}:***@{rest[at + 1:]}"
