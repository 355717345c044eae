"""A steady client load through a proxy, recording every answer, for zero-downtime checks (issue 14).

Worker threads send `GET /` back to back, each on a new connection (so every request goes through
the proxy's accept and routing, as a fresh client's would) or, with keepalive=True, on one
persistent connection per worker. Each request is recorded with the monotonic times it started and
ended and what came back (status and body, or the error), so a test can tell which answers began
after a switch returned.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

REQUEST_TIMEOUT = 30.0  # seconds: far above any answer on a loaded machine; a hung proxy is an error


@dataclass(frozen=True)
class Answer:
    """One request through the proxy: monotonic start and end (s), HTTP status and body, or error."""

    started: float
    ended: float
    status: int | None
    body: str
    error: str | None
    # Sent on a kept-alive connection an earlier request used: a failure there with no answer at all
    # is one a client may retry on a new connection (RFC 9112 section 9.3.1), as Go's net/http and
    # browsers do; http.client does not, so the test sees it.
    reused: bool = False

    @property
    def ok(self) -> bool:
        """A 200 with a body: what a user gets when nothing went wrong."""
        return self.error is None and self.status == 200 and bool(self.body)


class Load:
    """`workers` threads requesting `url` until stop(); use as a context manager."""

    def __init__(self, url: str, workers: int = 4, keepalive: bool = False, path: str = "/") -> None:
        parts = urlsplit(url)
        self._host, self._port, self._path = parts.hostname or "127.0.0.1", parts.port or 80, path
        self._workers, self._keepalive = workers, keepalive
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self.answers: list[Answer] = []
        self._in_flight: dict[int, float] = {}  # worker index -> monotonic start of its request under way
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
                         for i in range(workers)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sending; return when every worker finished its last request."""
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT + 5)

    def wait_after(self, since: float, count: int, timeout: float = 60.0) -> None:
        """Return once `count` answers that started at or after `since` (monotonic) have ended;
        AssertionError after `timeout` seconds (a proxy that stopped answering)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(1 for a in self.answers if a.started >= since) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"fewer than {count} answers in {timeout} s since the mark"
                self._changed.wait(left)

    def wait_in_flight_before(self, mark: float, timeout: float = 60.0) -> None:
        """Return once no request that started before `mark` (monotonic) is still under way: what
        was sent before a switch has been answered. AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while any(started < mark for started in self._in_flight.values()):
                left = deadline - time.monotonic()
                assert left > 0, f"a request begun before the mark still runs after {timeout} s"
                self._changed.wait(left)

    def _run(self, worker: int) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            with self._changed:
                self._in_flight[worker] = started
            status, body, error = None, "", None
            reused = conn is not None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self._host, self._port, timeout=REQUEST_TIMEOUT)
                conn.request("GET", self._path, headers={} if self._keepalive else {"Connection": "close"})
                response = conn.getresponse()
                status, body = response.status, response.read().decode(errors="replace")
                if not self._keepalive or response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                error = f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
            with self._changed:
                self.answers.append(Answer(started, time.monotonic(), status, body, error, reused))
                del self._in_flight[worker]
                self._changed.notify_all()
        if conn is not None:
            conn.close()
