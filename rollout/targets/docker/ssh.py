"""The SDK's ssh:// transport, imported only when a target is an ssh host, and patched to keep its connection.

docker-py's ssh transport (docker/transport/sshconn.py) imports paramiko, which costs
~0.15 s per command, and opens a new `ssh ... docker system dial-stdio` for every request.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from typing import Any


def import_docker_without_paramiko() -> None:
    """Import the SDK without its ssh transport: paramiko (cryptography) costs ~0.15 s per command.

    `enable_ssh()` loads that transport when a target really is an ssh:// host.
    """
    blocked = "paramiko" not in sys.modules
    if blocked:
        sys.modules["paramiko"] = None  # type: ignore[assignment]  # makes `import paramiko` fail fast
    try:
        import docker  # noqa: F401
    finally:
        if blocked:
            del sys.modules["paramiko"]


def enable_ssh() -> None:
    """Load the SDK's ssh transport (and paramiko) and patch it: one kept connection per engine,
    reconnected when its ssh has exited. Idempotent."""
    import docker.api.client
    import docker.transport

    if not hasattr(docker.api.client, "SSHHTTPAdapter"):
        from docker.transport.sshconn import SSHConnectionPool, SSHHTTPAdapter, SSHSocket  # imports paramiko now

        SSHSocket.makefile = _ssh_makefile  # type: ignore[method-assign]
        SSHHTTPAdapter.get_connection = _ssh_pool  # type: ignore[method-assign]
        _pooled = SSHConnectionPool._get_conn
        SSHConnectionPool._get_conn = lambda pool, timeout=None: _live(_pooled(pool, timeout))  # type: ignore[method-assign]
        docker.api.client.SSHHTTPAdapter = SSHHTTPAdapter  # type: ignore[attr-defined]
        docker.transport.SSHHTTPAdapter = SSHHTTPAdapter  # type: ignore[attr-defined]


def _ssh_makefile(self: Any, mode: str) -> Any:
    """A reader of the ssh pipe that the HTTP response may close without closing the pipe,
    so the connection (one `dial-stdio`) serves the next request too."""
    if not self.proc:
        self.connect()
    reader = os.fdopen(os.dup(self.proc.stdout.fileno()), "rb")
    reader.channel = self  # what the SDK's attach/exec/log streams read from, as in its own makefile
    return reader


def _live(connection: Any) -> Any:
    """A pooled ssh connection whose ssh has exited (the engine restarted, the network dropped)
    is reconnected, not reused: the next call would fail on a dead pipe."""
    proc = getattr(connection.sock, "proc", None)
    if proc is not None and proc.poll() is not None:
        try:
            connection.close()
        except OSError:
            pass  # closing writes to the dead ssh's stdin
        connection.sock = None  # http.client connects again on the next request
    return connection


def _ssh_pool(self: Any, url: str, proxies: Any = None) -> Any:
    """One connection pool per adapter (every URL goes to the same engine), kept: the SDK
    builds a new pool, so a new ssh, for every call."""
    from docker.transport.sshconn import SSHConnectionPool

    with self.pools.lock:
        pool = self.pools.get(self.ssh_host)
        if pool is None:
            pool = SSHConnectionPool(ssh_client=self.ssh_client, timeout=self.timeout, maxsize=self.max_pool_size,
                                     host=self.ssh_host)
            self.pools[self.ssh_host] = pool
    return pool


def ssh_destination(url: str) -> str:
    """`ssh` arguments for an ssh:// engine URL, e.g. "-p 2222 deploy@host" for ssh://deploy@host:2222."""
    parsed = urllib.parse.urlparse(url)
    where = f"{parsed.username}@{parsed.hostname}" if parsed.username else str(parsed.hostname)
    return f"-p {parsed.port} {where}" if parsed.port else where
