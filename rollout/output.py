"""What people and cron see: results on stdout, progress and errors on stderr.

On a terminal the progress of a health wait is one line rewritten in place;
elsewhere (cron, CI logs) a line is printed only when the state changes.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from typing import Any, TextIO

_ELAPSED = re.compile(r"\s*\(\d+(\.\d+)?s\)$|, stable [\d.]+/[\d.]+s")


class Console:
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.stdout = out or sys.stdout
        self.stderr = err or sys.stderr
        self.live = self.stderr.isatty()
        self._last: dict[str, str] = {}
        self._line_open = False
        self._lock = threading.Lock()

    def out(self, text: str) -> None:
        self._close_line()
        print(text, file=self.stdout, flush=True)

    def json(self, value: Any) -> None:
        self.out(json.dumps(value, indent=2, sort_keys=True, default=str))

    def result(self, text: str) -> None:
        self.out(text)

    def info(self, message: str) -> None:
        self._err(message)

    def warn(self, message: str) -> None:
        self._err(message)

    def error(self, message: str) -> None:
        self._err(f"rollout: error: {' '.join(message.split())}")

    def logs(self, target: str, text: str) -> None:
        lines = text.rstrip().splitlines()[-20:]
        if not lines:
            return
        self._err(f"[{target}] last {len(lines)} log lines:")
        for line in lines:
            self._err(f"[{target}] | {line}")

    def progress(self, target: str, message: str) -> None:
        with self._lock:
            if self.live:
                self.stderr.write(f"\r\033[K[{target}] {message}")
                self.stderr.flush()
                self._line_open = True
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
        if self._line_open:
            self.stderr.write("\n")
            self._line_open = False


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)
