"""Real Caddy and HAProxy processes for a test, each with a config the test writes (issue 14).

`.ci/testbed proxies` only installs the binaries; every test starts its own proxy on free
loopback ports with its own admin endpoint (a socket in a short temporary directory: a unix
socket path must stay under 108 bytes, which pytest's tmp_path does not promise), so tests
never share proxy state. A missing binary fails under CI=true and skips elsewhere (support.bed.need).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from support.bed import need
from support.ports import free_port

START_LIMIT = 30.0  # seconds a proxy may take to answer on its admin endpoint and listener


@dataclass(frozen=True)
class Proxy:
    """A running proxy: `url` takes the app's traffic, `admin` is its admin address in the form
    rollout.toml's traffic.admin takes, `route` the route @id / backend rollout switches."""

    kind: str
    url: str  # e.g. http://127.0.0.1:23456
    admin: str
    route: str
    log: Path


def _wait_for(ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """Poll `ready` until it holds; fail with the proxy's log if the process exits or time runs out."""
    deadline = time.monotonic() + START_LIMIT
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up in {START_LIMIT} s: {log.read_text()[-2000:]}")
        time.sleep(0.02)  # polling a state, not waiting for time to pass


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def _process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def _short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def caddy(tmp: Path, upstream: str, route: str = "web", admin: str = "tcp",
          handle: list[dict[str, object]] | None = None) -> Iterator[Proxy]:
    """A Caddy whose one server listens on a free loopback port with one route, "@id": route,
    reverse-proxying to `upstream` ("HOST:PORT"), or running the handlers `handle` instead.
    `admin`: "tcp" (http://127.0.0.1:PORT) or "unix" (unix//PATH, Caddy's notation)."""
    need(shutil.which("caddy") is not None, "caddy (.ci/testbed proxies)")
    listen = free_port()
    with _short_dir() as short:
        if admin == "unix":
            listen_admin = address = f"unix/{short}/caddy-admin.sock"
        else:
            port = free_port()
            listen_admin, address = f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"
        config = {
            "admin": {"listen": listen_admin, "config": {"persist": False}},
            "logging": {"logs": {"default": {"level": "WARN"}}},
            "apps": {"http": {"servers": {"app": {
                "listen": [f"127.0.0.1:{listen}"],
                "automatic_https": {"disable": True},
                "routes": [{"@id": route, "handle": handle or [{"handler": "reverse_proxy",
                                                                 "upstreams": [{"dial": upstream}]}]}],
            }}}},
        }
        path = tmp / "caddy.json"
        path.write_text(json.dumps(config, indent=1))
        log = tmp / "caddy.log"
        # Caddy keeps state (autosave, certificates) under XDG dirs: the test's own, not the machine's.
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp / "xdg-config"), "XDG_DATA_HOME": str(tmp / "xdg-data")}
        from rollout.routers.caddy import CaddyRouter

        with _process(["caddy", "run", "--config", str(path)], log, env) as process:
            _wait_for(lambda: _admin_answers(CaddyRouter(address, route)) and _accepts(listen), process, log, "caddy")
            yield Proxy("caddy", f"http://127.0.0.1:{listen}", address, route, log)


@contextmanager
def haproxy(tmp: Path, servers: list[str], backend: str = "web", admin: str = "unix",
            level: str = "admin", backup: str | None = None) -> Iterator[Proxy]:
    """An HAProxy with one frontend on a free loopback port and one backend `backend` holding one
    server line per address in `servers` (s1, s2, ...): the first enabled, the others `disabled`,
    as an operator writes the slots. The stats socket is at `level` (admin: what rollout needs):
    `admin` "unix" (unix:///PATH) or "tcp" (tcp://127.0.0.1:PORT); `backup`: also a backup server
    line `sorry` at that address."""
    need(shutil.which("haproxy") is not None, "haproxy (.ci/testbed proxies)")
    listen = free_port()
    with _short_dir() as short:
        if admin == "unix":
            socket_line, address = f"stats socket {short}/admin.sock mode 600 level {level}", f"unix://{short}/admin.sock"
        else:
            port = free_port()
            socket_line, address = f"stats socket ipv4@127.0.0.1:{port} level {level}", f"tcp://127.0.0.1:{port}"
        lines = [f"    server s{i} {server}{'' if i == 1 else ' disabled'}" for i, server in enumerate(servers, 1)]
        if backup is not None:  # an operator's sorry server: `backup` ADDR
            lines.append(f"    server sorry {backup} backup")
        config = "\n".join([
            "global",
            f"    {socket_line}",
            "defaults",
            "    mode http",
            # What README "Zero-downtime deploys" recommends: a connection refused by a release
            # that just died is retried after min(1 s, timeout connect) (HAProxy's turn-around
            # timer, configuration.txt "retries") on another server (redispatch on every retry),
            # i.e. on the old release once rollout switched back, instead of a 503 after 3 s.
            "    retries 3",
            "    option redispatch 1",
            "    timeout connect 100ms",
            "    timeout client 60s",
            "    timeout server 60s",
            "frontend app",
            f"    bind 127.0.0.1:{listen}",
            f"    default_backend {backend}",
            f"backend {backend}",
            *lines,
            "",
        ])
        path = tmp / "haproxy.cfg"
        path.write_text(config)
        log = tmp / "haproxy.log"
        from rollout.routers.haproxy import HAProxyRouter

        # -db: stay in the foreground, so the test owns the process and its end.
        with _process(["haproxy", "-db", "-f", str(path)], log) as process:
            _wait_for(lambda: _admin_answers(HAProxyRouter(address, backend)) and _accepts(listen), process, log, "haproxy")
            yield Proxy("haproxy", f"http://127.0.0.1:{listen}", address, backend, log)


def _admin_answers(router: object) -> bool:
    """Whether the proxy's admin endpoint answers (rollout's own client, so no http_proxy variable
    a test may have set gets in the way); a config without what rollout needs still answers."""
    from rollout.errors import RouterUnreachable, UserError

    try:
        router.check()  # type: ignore[attr-defined]
        return True
    except UserError:
        return True
    except RouterUnreachable:
        return False


@contextmanager
def proxy(kind: str, tmp: Path, slots: list[str], route: str = "web", admin: str | None = None) -> Iterator[Proxy]:
    """A proxy of `kind` ("caddy" or "haproxy") sending traffic to slots[0], able to switch to any
    of `slots` ("HOST:PORT" each)."""
    if kind == "caddy":
        with caddy(tmp, slots[0], route, admin or "tcp") as running:
            yield running
    else:
        with haproxy(tmp, slots, route, admin or "unix") as running:
            yield running
