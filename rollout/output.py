"""What people and cron see: results on stdout, progress and errors on stderr.

On a terminal the progress of a health wait is a table, one line per target,
redrawn in place; elsewhere (cron, CI logs) a line is printed only when a target's
state changes.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from typing import Any, TextIO

_ELAPSED = re.compile(r"\s*\(\d+(\.\d+)?s\)$|, stable [\d.]+/[\d.]+s")


class Console:
    """The CLI's Reporter (rollout.orchestrator.Reporter, rollout.rebuild.Reporter): results on
    stdout, everything else on stderr, one line per message. Thread-safe: verifiers of several
    targets report at once. `live` (stderr is a terminal) draws progress as a table redrawn
    in place; otherwise a target's progress is printed only when its state changes."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.stdout = out or sys.stdout
        self.stderr = err or sys.stderr
        self.live = self.stderr.isatty()
        self._last: dict[str, str] = {}
        # The live table: each target's latest progress, and how many lines of it are on screen.
        self._rows: dict[str, str] = {}
        self._drawn = 0
        self._lock = threading.Lock()

    def out(self, text: str) -> None:
        """Print text on stdout: what a command answers (a table, a line, JSON). When the reader is
        gone (`rollout history | head -1`), the rest goes to /dev/null and the command carries on
        to its own end and exit code: a closed pipe must not cut a deploy short or read as a bug."""
        self._close_line()
        try:
            print(text, file=self.stdout, flush=True)
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        # Python's documented recipe (library/signal.html, "Note on SIGPIPE"): point the file
        # descriptor at /dev/null, so what is still buffered, and the interpreter's last flush at
        # exit, go nowhere instead of raising again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a real file: just stop writing to it
            self.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the console

    def json(self, value: Any) -> None:
        """Print value as indented JSON on stdout (keys sorted; values JSON lacks as their str())."""
        self.out(json.dumps(value, indent=2, sort_keys=True, default=str))

    def result(self, text: str) -> None:
        """Print a command's one-line result on stdout ("#12 healthy")."""
        self.out(text)

    def info(self, message: str) -> None:
        """A step that went as planned, on stderr."""
        self._err(message)

    def warn(self, message: str) -> None:
        """Something that needs a look, on stderr."""
        self._err(message)

    def error(self, message: str) -> None:
        """The command's error as one stderr line, `rollout: error: ...` (white space folded)."""
        self._err(f"rollout: error: {' '.join(message.split())}")

    def logs(self, target: str, text: str) -> None:
        """The last 20 lines of a target's log, each prefixed `[target] | `, on stderr; nothing for none."""
        lines = text.rstrip().splitlines()[-20:]
        if not lines:
            return
        self._err(f"[{target}] last {len(lines)} log lines:")
        for line in lines:
            self._err(f"[{target}] | {line}")

    def progress(self, target: str, message: str) -> None:
        """One target's latest state during verification: a row of the live table on a terminal;
        elsewhere a line, only when the state changed (elapsed seconds and the stable count do
        not count as a change, so cron logs stay short)."""
        with self._lock:
            if self.live:
                self._rows[target] = message
                self._draw_table()
                return
            state = _ELAPSED.sub("", message)
            if self._last.get(target) != state:
                self._last[target] = state
                print(f"[{target}] {message}", file=self.stderr, flush=True)

    def _err(self, message: str) -> None:
        with self._lock:
            self._close_line_locked()
            print(message, file=self.stderr, flush=True)

    def _close_line(self) -> None:
        with self._lock:
            self._close_line_locked()

    def _close_line_locked(self) -> None:
        # The table stays on screen as last drawn; what comes next is printed below it,
        # and the next progress starts a new table there.
        self._rows.clear()
        self._drawn = 0

    def _draw_table(self) -> None:
        """Move up over the lines drawn last time and rewrite every target's line."""
        width = self._width()
        lines = [clip(f"[{name}] {message}", width) for name, message in self._rows.items()]
        up = f"\033[{self._drawn}A" if self._drawn else ""
        self.stderr.write(up + "".join(f"\r\033[K{line}\n" for line in lines))
        self.stderr.flush()
        self._drawn = len(lines)

    def _width(self) -> int:
        # A line longer than the terminal wraps, and moving up by the line count would then miss.
        try:
            columns = os.get_terminal_size(self.stderr.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return columns - 1 if columns > 20 else 79  # 0: a terminal that does not say


def clip(text: str, width: int = 60) -> str:
    """One line of at most width characters, white space folded."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain-text columns, left-aligned, two spaces apart, headers first; trailing spaces stripped."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


def redact_url(url: str) -> str:
    """scheme://host[:port]/… : what can be printed about a URL whose path, query or user part may be a token.

    Anything but http(s) prints as `scheme://…`: Apprise URLs often carry the token where a
    host would be (tgram://TOKEN/CHAT).
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        host, port = None, None
    scheme = url.partition("://")[0] or "url"
    if host is None or scheme not in ("http", "https"):
        return f"{scheme}://…"
    shown = f"{scheme}://{host}" + (f":{port}" if port else "")
    return shown + ("/…" if parts.path.strip("/") or parts.query else "")
