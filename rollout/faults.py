"""Fault-injection hooks for the crash-safety tests: no effect unless a test asks for one.

Nothing in rollout depends on this module for its behaviour: with the environment
variable below unset, every hook returns at once and does nothing. It lives apart from
the ledger and the targets so that production modules only *call* a hook at a named
moment and never import test machinery from each other.
"""

from __future__ import annotations

import collections
import os
import signal

KILL_AT_ENV = "ROLLOUT_TEST_KILL_AT"
FAIL_AT_ENV = "ROLLOUT_TEST_FAIL_AT"

_steps_seen: collections.Counter[str] = collections.Counter()


def kill_point(step: str) -> None:
    """Mark a named moment; SIGKILL this process there when a test asked for it.

    With ``ROLLOUT_TEST_KILL_AT="<step>#<n>"`` (tests/test_crash_safety.py) the process
    kills itself with SIGKILL right after the n-th call with that step (n counts from 1
    per process), so a crash lands on an exact, reproducible moment. Steps in use: the
    ledger's event names (``recorded``, ``status:applying``, ``target:applied`` ...), the
    docker target's (``docker:renamed``, ``docker:stopped``, ``docker:created``,
    ``docker:started``; with a traffic section ``traffic:switched``, ``traffic:switched-back``,
    and HAProxy's ``traffic:both-ready`` between readying the new server and draining the old)
    and rebuild's ``docker:pushed`` (pushed, ``build:pushed`` not yet recorded). With
    ``ROLLOUT_TEST_FAIL_AT="<step>#<n>"`` it raises InjectedFault there instead, so a test
    sees what an error at that moment leaves behind (the step itself is done). Unset or
    naming another moment: no effect, raises nothing.
    """
    kill_at, fail_at = os.environ.get(KILL_AT_ENV), os.environ.get(FAIL_AT_ENV)
    if kill_at or fail_at:
        _steps_seen[step] += 1
        moment = f"{step}#{_steps_seen[step]}"
        if kill_at == moment:
            os.kill(os.getpid(), signal.SIGKILL)
        if fail_at == moment:
            raise InjectedFault(f"fault injected at {moment} ({FAIL_AT_ENV})")


class InjectedFault(RuntimeError):
    """The error a test asked kill_point to raise at a named moment."""
