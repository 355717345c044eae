"""A local spool of ledger writes that could not reach a PostgreSQL ledger (issue 13, point 6).

Once a rollout has changed a target it must finish (verify, and revert on failure) whether the
database answers or not, and what it did must reach the ledger. rollout.ledger_outage retries
such writes (bounded: about 30 s in all, reconnecting), then appends them here; the next command
that opens the same ledger from the same config directory replays them first, under an exclusive
flock so two commands never replay the same writes twice, and removes the file.

File: `<config dir>/state/ledger-spool-<12 hex of sha256(redacted URL)>.jsonl`, mode 0600, one
JSON object per line (UTF-8), each batch appended under the flock and fsynced:

    {"v": 1, "writer": "<uuid4 hex>", "seq": 3, "txn": 2, "unless_committed": [7412],
     "op": "set_status", "at": "2025-01-01T12:00:00.000000+00:00",
     "args": {"entry_id": 42, "status": "healthy", "error": null}}

- `writer`: one ledger handle of one process; `seq` (1, 2, ...) orders its lines, `txn` groups the
  lines written in one ledger transaction (replayed all together or not at all).
- `unless_committed`: PostgreSQL transaction ids (`txid_current()`) of earlier tries of this
  transaction whose COMMIT was sent but never confirmed (the connection dropped): if one did
  commit, the writes are in the ledger already and the group is skipped.
- `op` / `args`: the LedgerBackend write and its arguments: `record` (the NewEntry's fields plus
  `id`: the id the entry got before the connection dropped, or a negative placeholder that the
  replay maps to the id the database gives it), `set_status`, `set_target`, `event`,
  `release_lease` (app, host, pid). An `entry_id` below 0 is such a placeholder of the same writer.
- `at`: when the write was made (ISO 8601 UTC, by the writer's clock): the replay stores it as the
  entry's, target row's or event's time, not the time of the replay.

Never in it: the ledger URL or its password (only the hash of the redacted URL names the file).
An unterminated last line is a write the process died in the middle of (its caller never saw it
succeed): it is ignored. This module knows the file, not SQL: the replay is rollout.ledger_outage's.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rollout.errors import LedgerError

VERSION = 1


def spool_path(state_dir: Path, redacted_url: str) -> Path:
    """Where writes to the ledger at `redacted_url` (its password already masked) are spooled."""
    digest = hashlib.sha256(redacted_url.encode()).hexdigest()[:12]
    return Path(state_dir) / f"ledger-spool-{digest}.jsonl"


class Spool:
    """The spool file at `path` (see the module docstring for its format).

    `append` adds lines, `claimed` hands the lines to a replay and removes the file when it
    succeeded; both hold an exclusive flock on the file, so a replay never runs twice over the same
    lines and an append never lands in a file a replay is about to remove.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        """Whether writes are waiting to be replayed."""
        return self.path.exists()

    def append(self, lines: list[dict[str, Any]]) -> None:
        """Append `lines` (dicts in the module docstring's shape) and fsync them.

        Creates the file (0600) and its directory (0700) if missing. Raises OSError when the file
        cannot be written (a full disk): the caller's writes are then lost, and it must say so.
        """
        if not lines:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = "".join(json.dumps(line, sort_keys=True, default=str) + "\n" for line in lines).encode()
        fd = self._locked(create=True)
        assert fd is not None
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextmanager
    def claimed(self) -> Iterator[list[dict[str, Any]] | None]:
        """The spooled lines, oldest first, for a replay; None when there is no spool.

        Holds the flock for the block; when the block ends without an exception the file is removed
        (the block must have replayed every line). Raises LedgerError naming the file and line for a
        line that is not this format (a hand-edited or foreign file): nothing is replayed then.
        """
        fd = self._locked(create=False)
        if fd is None:
            yield None
            return
        try:
            with os.fdopen(os.dup(fd), "rb") as source:
                lines = _parse(self.path, source.read())
            yield lines
            self.path.unlink()
        finally:
            os.close(fd)  # releases the flock

    def _locked(self, *, create: bool) -> int | None:
        """An fd of the spool file holding its exclusive flock, or None when there is none and
        create is False. Re-opens when a replay removed the file while we waited for the lock."""
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        while True:
            try:
                fd = os.open(self.path, flags, 0o600)
            except FileNotFoundError:
                return None
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                now = os.stat(self.path)
                held = os.fstat(fd)
                if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)


def _parse(path: Path, data: bytes) -> list[dict[str, Any]]:
    text = data.decode("utf-8", errors="replace")
    complete, _, _torn = text.rpartition("\n")  # a torn last line was never acknowledged: dropped
    lines = []
    for number, line in enumerate(complete.split("\n") if complete else [], start=1):
        try:
            value = json.loads(line)
            if value.get("v") != VERSION or not {"writer", "seq", "txn", "op", "at", "args"} <= value.keys():
                raise ValueError("not a spooled ledger write")
        except (ValueError, AttributeError) as exc:
            raise LedgerError(f"{path} line {number} is not a spooled ledger write ({exc}): move the file away"
                              " (it holds writes a rollout could not record) and retry") from None
        lines.append(value)
    return lines


__all__ = ["Spool", "spool_path", "VERSION"]
