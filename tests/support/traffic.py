"""A project's app behind a real reverse proxy with two slots (issue 14): the traffic config the
zero-downtime and crash-safety tests write, and how they ask where the traffic goes."""

from __future__ import annotations

from typing import Any

from support.images import APP_IMAGE
from support.project import Project, http_get
from support.routers import Proxy


def write_traffic_config(project: Project, running: Proxy, slots: list[int], *, stable: float = 1.5,
                         admin: str | None = None) -> None:
    """rollout.toml for app `web` behind `running` on `slots` (slot_env PORT, health probe on
    {port}, drain 0.5 s, a `stable` window in seconds); `admin` overrides the proxy's admin address."""
    project.config.write_text(f"""
[apps.web]
image = "{APP_IMAGE}"

[apps.web.health]
timeout = 20
interval = 0.3
stable = {stable}
http = "http://127.0.0.1:{{port}}/health"

[apps.web.traffic]
router = "{running.kind}"
admin = "{admin or running.admin}"
route = "{running.route}"
slots = {slots}
slot_env = "PORT"
drain = 0.5

[[apps.web.targets]]
name = "local"
kind = "docker"
container = "{project.container}"
network = "host"
""")


def routed(running: Proxy) -> list[str]:
    """The upstreams the proxy sends new requests to, as rollout's own router reads them."""
    from rollout.routers import open_router

    return open_router(running.kind, running.admin, running.route).upstreams()


def through(running: Proxy) -> str | None:
    """The version the app answers with through the proxy (None when nothing answers)."""
    return http_get(f"{running.url}/version")


def deploy(project: Project, tag: str) -> Any:
    """`rollout deploy web:TAG` in the project (the CompletedProcess)."""
    return project.run("deploy", f"web:{tag}")
