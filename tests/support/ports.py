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
_candidates = itertools.count(_FIRST + os.getpid() % 4000)


def free_port() -> int:
    for port in _candidates:
        if port > _LAST:
            break
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))  # also refuses a port someone holds on 127.0.0.1 only
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port left in {_FIRST}-{_LAST} for this test run")
