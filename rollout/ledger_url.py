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
    `postgresql://alice:***@db:5432/rollout?sslmode=verify-full`. Everything between the user
    name's `:` and the last `@` counts as the password (a generated one may hold `?`, `/`, `@`
    or `%`); any `password=` or `sslpassword=` parameter, in the query string or in a key=value
    string, is masked too; so is the password of a URL of another scheme (a mistyped
    `mysql://...` is shown masked in the error that refuses it).
    """
    masked = _mask_userinfo(url)
    masked = re.sub(r"([?&](?:ssl)?password=)[^&#]*", r"\1***", masked, flags=re.IGNORECASE)
    # A key=value string's password (the query string's were masked above: not again, to keep what follows).
    return re.sub(r"((?<![?&\w])(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", masked, flags=re.IGNORECASE)


def looks_like_conninfo(text: str) -> bool:
    """True for a libpq key=value connection string (`host=db dbname=rollout`): a ledger location
    must be a postgresql:// URL, and such a string must never be taken for a file name."""
    return re.match(r"\s*[A-Za-z_]+\s*=", text) is not None


def _mask_userinfo(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    at = rest.rfind("@")
    if not separator or at < 0:
        return url
    user, colon, _password = rest[:at].partition(":")
    return f"{scheme}://{user}:***@{rest[at + 1:]}" if colon else url


def scrub(message: str, url: str) -> str:
    """`message` (a driver's error about `url`) masked like `redact`, and with every piece of the
    URL's password removed: libpq splits `user:pa@ss@host` at the first '@', so its messages may
    quote the password's tail as part of a host name."""
    masked = redact(message)
    scheme, separator, rest = url.partition("://")
    at = rest.rfind("@")
    password = rest[:at].partition(":")[2] if separator and at >= 0 else ""
    for piece in sorted({password, *password.split("@"), *password.split("/")}, key=len, reverse=True):
        if len(piece) >= 3:
            masked = masked.replace(piece, "***")
    return masked
