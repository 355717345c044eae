"""B10 scheduled rebuild of unchanged content (issue 15): what a cron `rollout rebuild --no-cache` costs.

One app, the same Dockerfile (busybox base, a COPY of 1 MiB of fixed content, a RUN that downloads
an unchanged 1 MiB file from an HTTP server on loopback; both incompressible), built by the docker engine's classic builder
(baseline) and by buildah with `reproducible = true` (rollout), both pushed through a counting
proxy in front of the test registry and deployed to a docker container. After a first rebuild
(build, push, deploy), each run is `rollout rebuild --no-cache` with nothing changed; per run:
bytes uploaded to the registry (blob upload bodies), manifests PUT, deploys triggered (new
ledger entries) and wall seconds. Target: 0 bytes, 0 manifests, 0 deploys for buildah.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from pathlib import Path

from benchmarks.common import (REGISTRY, ROLLOUT, Comparison, ScenarioFailed, ScenarioResult, Settings,
                               docker_app_toml, remove_containers, require_docker, rollout_env, run)
from tests.support.payload import PayloadServer
from tests.support.ports import free_port

PREFIX = "bench-b10-"
MIB = 1 << 20


def fixed_bytes(seed: bytes, size: int = MIB) -> bytes:
    """size bytes that are always the same and do not compress (a sha256 chain): layers of real size."""
    out, block = bytearray(), seed
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


PAYLOAD = fixed_bytes(b"download")


def _project(root: Path, proxy_host: str, payload_url: str, builder: str) -> tuple[Path, str]:
    """A context and rollout.toml for one side; returns (config path, container name)."""
    context = root / "ctx"
    (context / "www").mkdir(parents=True)
    (context / "www" / "health").write_text("ok\n")
    # 1 MiB of fixed bytes: an upload the baseline pays on every run.
    (context / "www" / "blob").write_bytes(fixed_bytes(b"context"))
    (context / "Dockerfile").write_text(
        f"FROM {proxy_host}/rollout-test/busybox:base\nCOPY www/ /www/\n"
        f"RUN wget -q -O /www/payload {payload_url}\n"
        'CMD ["sh", "-c", "exec httpd -f -p 127.0.0.1:$PORT -h /www"]\n')
    container = f"{PREFIX}{builder}-{uuid.uuid4().hex[:6]}"
    port = free_port()
    image = f"{proxy_host}/bench-b10-{builder}-{uuid.uuid4().hex[:8]}"
    toml = docker_app_toml("web", image, container, host_port=port,
                           health={"http": f"http://127.0.0.1:{port}/health", "timeout": 60, "interval": 0.5,
                                   "stable": 1})
    toml += f'[apps.web.build]\ncontext = "ctx"\nbuilder = "{builder}"\n'
    if builder == "buildah":
        toml += "reproducible = true\n"
    config = root / "rollout.toml"
    config.write_text(toml)
    return config, container


def _entries(config: Path) -> int:
    import sqlite3

    db = config.parent / "state" / "ledger.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
    finally:
        conn.close()


def scheduled_rebuild(settings: Settings, result: ScenarioResult) -> None:
    """B10: docker builder vs buildah reproducible, `rebuild --no-cache` of unchanged content."""
    from tests.support.proxy import start_proxy

    require_docker()
    if shutil.which("buildah") is None:
        raise ScenarioFailed("buildah is not installed: run `make testbed` (Debian package `buildah`)")
    proxy = start_proxy(REGISTRY)
    server = PayloadServer(PAYLOAD)
    payload_url = server.url
    sides = {builder: _project(settings.workdir / f"b10-{builder}", proxy.host, payload_url, builder)
             for builder in ("docker", "buildah")}
    measures = {name: Comparison(name, "buildah reproducible", "docker builder", unit=unit, target=target)
                for name, unit, target in (("bytes uploaded per run", "bytes", "0 for buildah"),
                                           ("manifests PUT per run", "count", "0 for buildah"),
                                           ("deploys per run", "count", "0 for buildah"),
                                           ("wall time per run", "s", ""))}
    try:
        for builder, (config, _) in sides.items():
            run([ROLLOUT, "rebuild"], env=rollout_env(config), cwd=config.parent, timeout=900,
                what=f"first rollout rebuild ({builder})")
        for _ in range(settings.runs):
            for builder, (config, _) in sides.items():
                before = _entries(config)
                proxy.reset_counts()
                started = time.monotonic()
                run([ROLLOUT, "rebuild", "--no-cache"], env=rollout_env(config), cwd=config.parent, timeout=900,
                    what=f"rollout rebuild --no-cache ({builder})")
                seconds = time.monotonic() - started
                sent = sum(n for (method, kind), n in proxy.request_bytes.items() if kind == "blob upload")
                values: dict[str, float] = {"bytes uploaded per run": sent,
                                            "manifests PUT per run": proxy.count("PUT", "manifest"),
                                            "deploys per run": _entries(config) - before,
                                            "wall time per run": seconds}
                for name, value in values.items():
                    side = measures[name].rollout if builder == "buildah" else measures[name].baseline
                    side.append(float(value))
        result.comparisons.extend(measures.values())
        result.metrics.update(copied_bytes=MIB, downloaded_bytes=MIB, runs=settings.runs)
    finally:
        proxy.close()
        server.close()
        remove_containers(PREFIX)

