"""Errors that end a command, each carrying the exit code the README documents.

0 healthy; 1 failed and reverted; 2 bad input or config (nothing changed);
3 failed and could not revert; 4 lock held (or taken over) by another rollout;
5 registry or target unreachable before anything changed.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_REVERTED = 1
EXIT_USAGE = 2
EXIT_UNRECOVERED = 3
EXIT_LOCKED = 4
EXIT_UNREACHABLE = 5
EXIT_CHANGED = 10  # `check` / `rebuild --check`: something changed, a rebuild is due
EXIT_INTERNAL = 70  # a bug in rollout: one line, no traceback unless ROLLOUT_DEBUG=1


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """The first line of an error, for messages that must stay one line."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    return lines[0][:limit]


class RolloutError(Exception):
    """An error that ends a command with a one-line message and a documented exit code."""

    exit_code = EXIT_USAGE


class UserError(RolloutError):
    """Bad input or configuration; nothing was changed."""

    exit_code = EXIT_USAGE


class InvalidReference(UserError, ValueError):
    """An image reference that does not follow Docker's reference grammar."""


class ConfigError(UserError):
    """rollout.toml is missing, malformed, or has a wrong key or value."""


class TagNotFound(UserError):
    """The registry has no manifest for that tag or digest."""


class RetagRefused(UserError):
    """A tag recorded in the ledger now resolves to another digest."""


class Unreachable(RolloutError):
    """A registry or target could not be reached before anything changed."""

    exit_code = EXIT_UNREACHABLE


class RegistryUnreachable(Unreachable):
    """A registry (or its token service) could not be asked, or answered something unusable
    (a 5xx after retries, a digest that does not fit its manifest); exit 5."""


class RegistryAuthError(Unreachable):
    """The registry refused our credentials (the message never contains them)."""


class TargetUnreachable(Unreachable):
    """A Docker engine or Kubernetes API server could not be reached or read, or a target could
    not be prepared (e.g. the pull failed), before anything changed; exit 5."""


class RouterUnreachable(Unreachable):
    """A reverse proxy's admin endpoint (Caddy's admin API, HAProxy's runtime API socket) could not
    be reached, timed out, or answered something unusable; exit 5. Raised before any change (the
    proxy routes as it did) except where rollout.routers.Router.switch says otherwise. The message
    names the admin address (it holds no secret)."""


class RouterConfigError(UserError):
    """The reverse proxy runs, but its own config lacks what rollout.toml's traffic section names:
    the route @id or backend, one reverse_proxy handler with upstreams, a server line for a slot,
    an admin-level socket; exit 2, nothing changed. The message says what to add where."""


class NotApplied(RolloutError):
    """A target refused a change before changing anything, so there is nothing to revert.

    Raised by `Target.apply` only when the target is exactly as it was: a Kubernetes 403
    (RBAC), an admission webhook's denial or a 422 Invalid, an engine that refuses a create
    before the old container was touched. exit_code is the cause's: 5 (refused or unreachable)
    by default, 2 when the cause is the configuration.
    """

    def __init__(self, message: str, exit_code: int = EXIT_UNREACHABLE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class LockHeld(RolloutError):
    """Another live rollout holds the app's lock (rollout.lock), and `--wait` ran out; exit 4.
    The message names the holder (user@host, pid, since when)."""

    exit_code = EXIT_LOCKED


class LedgerError(UserError):
    """The ledger file is unreadable, corrupted, or from a newer schema."""


class LedgerBusy(RolloutError):
    """Another process kept the ledger's write lock past SQLite's busy timeout."""

    exit_code = EXIT_LOCKED


class LedgerUnreachable(Unreachable):
    """The ledger's database server (PostgreSQL) cannot be reached or refused the login; exit 5.
    The message names the server with its password masked."""


class LeaseLost(BaseException):
    """Another rollout took over this app's lock while we ran: stop at once, write and change nothing more.

    A BaseException, like Interrupted, so no handler on the way treats it as a failed step
    (which would record a failure or start a revert: the new holder's job now).
    """

    exit_code = EXIT_LOCKED


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: stop waiting, put the last healthy release back, exit 128 + signal.

    A BaseException so that no `except Exception` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)
