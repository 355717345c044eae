"""Notifications: tell a webhook, Slack or (through Apprise) any chat service what a rollout did.

`[notify] urls = [...]` in rollout.toml; each URL's scheme decides what is sent:

    https://hooks.slack.com/services/...   Slack incoming webhook: {"text": "..."}
    slack+https://chat.example/hooks/ID    any Slack-compatible webhook (Mattermost, Rocket.Chat, ...):
                                           {"text": "..."} POSTed to https://chat.example/hooks/ID
    https://... or http://...              generic webhook: the event as a JSON object (see PAYLOAD_KEYS)
    anything else (discord://, tgram://,   an Apprise URL; needs `pip install 'rollout[notify]'`
    mailto://, ...)

`${NAME}` in a URL is replaced by the environment variable NAME, so webhook tokens
need not live in the file. A notification never fails a rollout: it is sent in the
background with a short timeout and a few retries, and a failure is one warning
line that names the service by scheme and host only (a webhook's path, query and
user:password are secrets).
"""

from __future__ import annotations

import atexit
import datetime as dt
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_chain, wait_fixed

# The [notify] table is checked by rollout.config when rollout.toml is loaded; these are its types.
from rollout.errors import ConfigError
from rollout.config import DEFAULT_EVENTS, EVENTS, Channel, NotifySettings  # noqa: F401 - part of this module's API
from rollout.output import redact_url  # noqa: F401 - part of this module's API
from rollout.reference import short_digest

# Only these fields ever leave the machine: nothing from the registry config, the environment or the ledger's events.
PAYLOAD_KEYS = ("event", "app", "entry", "kind", "tag", "digest", "repository", "reverts_to", "reason",
                "failed_targets", "failed_entry")
ATTEMPTS = 3
BACKOFF_SECONDS = (0.5, 1.5)

Warn = Callable[[str], None]
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


# -- what is sent -------------------------------------------------------------------


def clean_payload(payload: dict[str, object]) -> dict[str, object]:
    """Only PAYLOAD_KEYS, and any user:password@ inside a text field masked."""
    cleaned: dict[str, object] = {}
    for key in PAYLOAD_KEYS:
        if key in payload:
            cleaned[key] = _scrub(payload[key])
    return cleaned


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return _URL_USERINFO.sub("***@", value)
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def message(payload: dict[str, object]) -> str:
    """One human line about the event, for chat services."""
    event = payload.get("event")
    app = payload.get("app")
    entry = payload.get("entry")
    what = f"{payload.get('tag') or '-'} ({short_digest(payload.get('digest'))})"
    reason = f": {payload['reason']}" if payload.get("reason") else ""
    targets = payload.get("failed_targets")
    on = f" on {', '.join(map(str, targets))}" if isinstance(targets, list) and targets else ""
    kind = payload.get("kind") or "deploy"
    if event == "started":
        if kind == "revert":
            return f"rollout: {app} #{entry} revert to #{payload.get('reverts_to')} {what} started"
        return f"rollout: {app} #{entry} {kind} {what} started"
    if event == "healthy":
        return f":white_check_mark: rollout: {app} #{entry} {kind} {what} is healthy"
    if event == "failed":
        return f":x: rollout: {app} #{entry} {kind} {what} failed{on}{reason}"
    if event == "reverted":
        return (f":leftwards_arrow_with_hook: rollout: {app} reverted to #{payload.get('reverts_to')} {what}"
                f" after #{payload.get('failed_entry')} failed{reason}; healthy again as #{entry}")
    if event == "revert_failed":
        return (f":rotating_light: rollout: {app} REVERT FAILED: #{entry} could not restore"
                f" #{payload.get('reverts_to')} {what}{reason}; {app} is not on a healthy release: act now")
    if event == "rebuild_skipped":
        return f"rollout: {app} rebuild skipped{reason}"
    if event == "rebuild_built":
        return f"rollout: {app} built and pushed {payload.get('repository')}:{payload.get('tag')} ({short_digest(payload.get('digest'))}){reason}"
    return f"rollout: {app} {event}{reason}"


def body_for(channel: Channel, payload: dict[str, object]) -> dict[str, object]:
    """The JSON POSTed to a webhook channel: Slack style {"text": message}; generic style the
    payload (already cleaned, see clean_payload) plus "message" and "time" (ISO 8601 UTC, seconds)."""
    if channel.style == "slack":
        return {"text": message(payload)}
    return {**payload, "message": message(payload), "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


# -- delivery -----------------------------------------------------------------------


@dataclass
class _Job:
    channel: Channel
    payload: dict[str, object]
    timeout: float
    warn: Warn


@dataclass
class Dispatcher:
    """One background sender for the whole process, so events arrive in the order they happened
    and a slow webhook never holds up a rollout; the queue is drained, for a bounded time, at exit."""

    jobs: "queue.Queue[_Job]" = field(default_factory=queue.Queue)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _budget: float = 0.0
    _warn: Warn | None = None

    def submit(self, job: _Job) -> None:
        """Queue job for the sender thread (started on first use) and return at once; the wait at
        exit grows to cover the job's tries (timeout * ATTEMPTS + the pauses, in seconds)."""
        with self._lock:
            # Each job may take all its attempts plus the pauses between them; the exit waits no longer than that.
            self._budget = max(self._budget, job.timeout * ATTEMPTS + sum(BACKOFF_SECONDS))
            self._warn = job.warn
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="rollout-notify", daemon=True)
                self._thread.start()
                atexit.register(self.drain)
        self.jobs.put(job)

    def drain(self, deadline_seconds: float | None = None) -> bool:
        """Wait until every queued notification was sent or given up; False if time ran out first.

        deadline_seconds (monotonic) defaults to twice the longest job's budget, at most 60 s.
        """
        limit = deadline_seconds if deadline_seconds is not None else min(60.0, self._budget * 2)
        deadline = time.monotonic() + limit
        with self.jobs.all_tasks_done:
            while self.jobs.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self._warn is not None:
                        self._warn(f"warning: gave up waiting for {self.jobs.unfinished_tasks} notification(s)"
                                   f" after {limit:.0f}s")
                    return False
                self.jobs.all_tasks_done.wait(remaining)
        return True

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                send(job.channel, job.payload, job.timeout, job.warn)
            except Exception as exc:  # noqa: BLE001 - the sender thread must outlive any bad notification
                job.warn(f"warning: notification to {job.channel.shown} failed: {type(exc).__name__}")
            finally:
                self.jobs.task_done()


_dispatcher = Dispatcher()


def drain() -> bool:
    """Wait (bounded) for the process's queued notifications; the CLI calls it before it exits.

    Before, not from atexit alone: at interpreter shutdown concurrent.futures refuses new work
    ("cannot schedule new futures after interpreter shutdown"), which Apprise and urllib3 need,
    so a notification still queued then would fail every try. atexit stays as the fallback.
    """
    return _dispatcher.drain()


@dataclass(frozen=True)
class _Try:
    """What one delivery attempt came to."""

    accepted: bool
    problem: str = ""  # why it was not accepted, without the URL (it may hold a token)
    again: bool = False  # another try might help: no connection, a timeout, 429 or a 5xx


def _deliver(attempt: Callable[[], _Try]) -> tuple[_Try, int]:
    """Run attempt up to ATTEMPTS times, pausing BACKOFF_SECONDS (in seconds) between tries, while
    its outcome says another try might help; return the last outcome and how many tries it took."""
    retrying = Retrying(stop=stop_after_attempt(ATTEMPTS),
                        wait=wait_chain(*(wait_fixed(seconds) for seconds in BACKOFF_SECONDS)),
                        retry=retry_if_result(lambda outcome: outcome.again),
                        retry_error_callback=lambda state: state.outcome.result())  # type: ignore[union-attr]
    outcome = retrying(attempt)
    return outcome, retrying.statistics.get("attempt_number", 1)


def send(channel: Channel, payload: dict[str, object], timeout: float, warn: Warn) -> bool:
    """Deliver one event to one channel, retrying transient failures; True when it was accepted.

    `timeout` is in seconds per try (connecting takes at most 3 of them). Up to ATTEMPTS tries,
    BACKOFF_SECONDS apart; an answer other than 2xx, 429 or 5xx is final. Never raises: a
    failure is one warning line naming the channel as `shown`.
    """
    if channel.style == "apprise":
        return _send_apprise(channel, payload, timeout, warn)
    import requests

    from rollout.proxies import ProxyRoutedSession  # proxies as Docker picks them: never for loopback

    body = body_for(channel, payload)

    def attempt() -> _Try:
        try:
            with ProxyRoutedSession() as session:
                response = session.post(channel.url, json=body, timeout=(min(timeout, 3.0), timeout),
                                        headers={"User-Agent": "rollout"}, allow_redirects=False)
        except requests.RequestException as exc:
            return _Try(False, _describe_request_error(exc), again=True)
        if 200 <= response.status_code < 300:
            return _Try(True)
        # Any other refusal is the receiver's answer to this request: sending it again will not change its mind.
        return _Try(False, f"HTTP {response.status_code}", again=response.status_code == 429 or response.status_code >= 500)

    outcome, tries = _deliver(attempt)
    if not outcome.accepted:
        warn(f"warning: notification {payload.get('event')} to {channel.shown} failed: {outcome.problem}"
             f" ({tries} {'try' if tries == 1 else 'tries'}); the rollout is not affected")
    return outcome.accepted


def _describe_request_error(exc: Exception) -> str:
    import requests

    # The exception text repeats the URL (with its token): name only the kind of failure.
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect"
    return type(exc).__name__


def _send_apprise(channel: Channel, payload: dict[str, object], timeout: float, warn: Warn) -> bool:
    import logging

    import apprise

    # Apprise logs failures itself, URL included: keep its logger quiet and report in our own words.
    logging.getLogger("apprise").setLevel(logging.CRITICAL)
    notifier = apprise.Apprise()
    if not notifier.add(channel.url):
        warn(f"warning: notification to {channel.shown}: Apprise does not understand this URL")
        return False
    failed = payload.get("event") in ("failed", "revert_failed")
    kind = apprise.NotifyType.FAILURE if failed else (
        apprise.NotifyType.SUCCESS if payload.get("event") in ("healthy", "reverted") else apprise.NotifyType.INFO)

    def attempt() -> _Try:
        try:
            sent = notifier.notify(body=message(payload), title=f"rollout: {payload.get('app')} {payload.get('event')}",
                                   notify_type=kind)
        except Exception:  # noqa: BLE001 - a plugin's own bug must not reach the rollout
            sent = False
        return _Try(bool(sent), again=not sent)

    outcome, tries = _deliver(attempt)
    if not outcome.accepted:
        warn(f"warning: notification {payload.get('event')} to {channel.shown} failed ({tries} tries);"
             " the rollout is not affected")
    return outcome.accepted


# -- the orchestrator's listener ----------------------------------------------------------


class Notifier:
    """A listener for rollout.orchestrator.Orchestrator: queues each event for every channel.

    Called with (event, payload) as Orchestrator's Listener; events not in `settings.events`
    are dropped, the payload is cut to PAYLOAD_KEYS. Returns at once and never raises for a
    failed send: `warn` gets one line (the channel named by scheme and host only).
    """

    def __init__(self, settings: NotifySettings, warn: Warn, dispatcher: Dispatcher | None = None) -> None:
        self.settings = settings
        self.warn = warn
        self.dispatcher = dispatcher or _dispatcher

    def __call__(self, event: str, payload: dict[str, object]) -> None:
        if event not in self.settings.events:
            return
        cleaned = clean_payload({**payload, "event": event})
        for channel in self.settings.channels:
            self.dispatcher.submit(_Job(channel, cleaned, self.settings.timeout, self.warn))

    def drain(self, deadline_seconds: float | None = None) -> bool:
        """Wait for the queued events (Dispatcher.drain: at most deadline_seconds; False when time ran out)."""
        return self.dispatcher.drain(deadline_seconds)


def notifier_for(settings: NotifySettings, warn: Warn) -> Notifier | None:
    """The Notifier for a config's checked `[notify]` settings, or None when no URL is configured.

    Raises ConfigError (exit 2, naming the file and key, never the URL's secret) when a URL
    uses a `${NAME}` that is unset: only commands that notify call this.
    """
    for channel in settings.channels:
        if channel.unset:
            raise ConfigError(channel.unset)
    return Notifier(settings, warn) if settings.channels else None


def rebuild_event(result: Any, repository: str) -> tuple[str, dict[str, object]] | None:
    """The notification for a `rollout rebuild` result that the orchestrator did not already send.

    Skipped runs (up to date, or these inputs failed before) and build-only runs
    (--no-deploy) never reach the orchestrator; a deploy after a build does, and
    sends started/healthy/failed/reverted itself.
    """
    events = {"up-to-date": "rebuild_skipped", "failed-before": "rebuild_skipped", "unchanged": "rebuild_skipped",
              "built": "rebuild_built"}
    event = events.get(getattr(result, "action", ""))
    if event is None:
        return None
    payload: dict[str, object] = {"event": event, "app": result.app, "kind": "rebuild", "tag": result.tag,
                                  "digest": result.digest, "repository": repository, "reason": result.message}
    entry = getattr(result, "entry", None)
    if entry is not None:
        payload["entry"] = entry.id
    return event, payload
