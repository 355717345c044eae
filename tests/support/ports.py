"""Ports for servers a test starts in another process (httpd in a container, sshd, dockerd, a registry).

Such a port is picked here and bound there seconds later. A port from bind(("127.0.0.1", 0))
comes from the kernel's ephemeral range, which every outgoing connection of the machine also
draws from, so one of them could take it in between. These come from below that range and are
never handed out twice in a run.
"""

from __future__ import annotations

import itertools
import os
import socket

_FIRST, _LAST = 20000, 32000  # below Linux's default ip_local_port_range (32768-60999)


def _share() -> tuple[int, int]:
    """This process's own part of the range: pytest-xdist workers (gw0, gw1, ...) each get a slice,
    so two workers never hand out the same port (a bind probe cannot see a port picked, not yet bound)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 0):
        return _FIRST + os.getpid() % 4000, _LAST
    size = (_LAST - _FIRST) // int(count)
    first = _FIRST + int(worker[2:]) * size
    return first, first + size - 1


_first, _last = _share()
# Each process starts at its own place in its slice and goes round it once: another test run on the
# machine at the same time (a developer's, while CI runs) has the same slices but other start points.
_start = _first + os.getpid() * 7919 % (_last - _first + 1)
_candidates = itertools.chain(range(_start, _last + 1), range(_first, _start))


def free_port() -> int:
    for port in _candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))  # also refuses a port someone holds on 127.0.0.1 only
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port left in {_first}-{_last} for this test run")
