"""Calls to a Docker engine: retried while its socket refuses or drops connections, failures explained in one line."""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

import docker.errors
import requests.exceptions
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from rollout.errors import TargetUnreachable, one_line

ENGINE_RETRY_SECONDS = 20.0  # a restarting dockerd is back within seconds; longer is an outage
T = TypeVar("T")
# A connection to the engine refused or dropped (requests wraps urllib3's ProtocolError), or a
# response cut off inside its chunked body (the engine exited while it answered).
ENGINE_LOST = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)
log = logging.getLogger("rollout.targets.docker")


class EngineUnreachable(TargetUnreachable):
    """The engine's socket refused or dropped every connection for ENGINE_RETRY_SECONDS (exit 5).
    `reason` is engine_failure's few words; the message names the engine (`where`), not the target."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{unreachable(where, reason)} after {ENGINE_RETRY_SECONDS:g}s of retries")
        self.reason = reason


def engine_call(where: str, call: Callable[[], T]) -> T:
    """call(), retried with back-off for up to ENGINE_RETRY_SECONDS (seconds) while the engine's socket
    refuses or drops the connection (ENGINE_LOST); then EngineUnreachable is
    raised. Other errors (docker.errors.APIError, NotFound) are raised at once. Only for calls that
    may be sent twice: reads, and changes whose repeat is harmless."""

    def say_so(state: Any) -> None:
        if state.attempt_number == 1:
            log.warning("%s; retrying for up to %gs", unreachable(where, engine_failure(state.outcome.exception())),
                        ENGINE_RETRY_SECONDS)

    retrying = Retrying(stop=stop_after_delay(ENGINE_RETRY_SECONDS), wait=wait_exponential(multiplier=0.25, max=2),
                        retry=retry_if_exception_type(ENGINE_LOST), before_sleep=say_so,
                        reraise=True)
    try:
        return retrying(call)
    except ENGINE_LOST as exc:
        raise EngineUnreachable(where, engine_failure(exc)) from exc


def unreachable(where: str, reason: str) -> str:
    """The words for an engine that cannot be reached: "Docker engine at WHERE is unreachable (REASON)"."""
    return f"Docker engine at {where} is unreachable ({reason})"


def engine_failure(exc: BaseException) -> str:
    """Why a connection to the engine failed, in a few words: "its socket is gone", "connection refused" or "connection lost"."""
    text = str(exc)
    if "FileNotFoundError" in text or "No such file" in text:
        return "its socket is gone"
    if "refused" in text.lower():
        return "connection refused"
    return "connection lost"


def short_reason(exc: BaseException) -> str:
    """The engine's own explanation when it gave one."""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return one_line(str(exc.explanation))
    return one_line(exc)
