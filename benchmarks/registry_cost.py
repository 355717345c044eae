"""B4 registry cost: what checking 20 unchanged images costs the registry (its rate limit).

A real registry with token auth (anonymous pull tokens, like Docker Hub) behind a
counting proxy. rollout: `rollout check` of 20 apps whose ledger and containers
already hold the registry's digests. Baseline: the cron job people run, `docker pull`
of each image (the engine already has them, so only the manifest round trips remain).
Manifest HEADs and GETs are counted by the proxy, token requests by the token service.
Until `rollout check` lands, the scenario is reported skipped and the figure comes from
RegistryClient.resolve of the same 20 references, in-process (what check will call).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from benchmarks.common import (APP_IMAGE, ROLLOUT, Comparison, ScenarioFailed, ScenarioResult, Settings, Skipped,
                               alternate, docker, docker_app_toml, remove_containers, require_docker, require_test_images, rollout_env,
                               run)

IMAGES = 20
PREFIX = "bench-b4-"


@dataclass
class Cost:
    heads: int
    gets: int
    blob_gets: int
    tokens: int
    seconds: float


def check_cost(settings: Settings, result: ScenarioResult) -> None:
    from tests.support.proxy import start_proxy
    from tests.support.registry_server import start_registry
    from tests.support.token_server import start_token_server

    require_docker()
    require_test_images("good1")
    docker("pull", "-q", f"{APP_IMAGE}:good1")
    root = settings.workdir / "b4"
    root.mkdir()
    remove_containers(PREFIX)
    token = start_token_server(root, users={}, allow_anonymous=True)
    registry = start_registry(root, auth="token", token=token)
    proxy = start_proxy(registry.host)
    repositories = [f"bench/app-{i:02d}" for i in range(IMAGES)]
    through_proxy = [f"{proxy.host}/{repo}:v1" for repo in repositories]
    try:
        for repo in repositories:
            docker("tag", f"{APP_IMAGE}:good1", f"{registry.host}/{repo}:v1")
            docker("push", "-q", f"{registry.host}/{repo}:v1")
        pull_all(through_proxy)  # warm: the engine holds every image, as on a server that runs them

        def counted(action: Callable[[], Any]) -> Cost:
            proxy.reset_counts()
            with token._lock:
                token.requests_seen.clear()
            started = time.perf_counter()
            action()
            elapsed = time.perf_counter() - started
            return Cost(proxy.count("HEAD", "manifest"), proxy.count("GET", "manifest"), proxy.count("GET", "blob"),
                        token.token_requests, elapsed)

        baseline: list[Cost] = []
        fallback: list[Cost] = []
        times = Comparison(f"{IMAGES} unchanged images: wall time", "RegistryClient.resolve (in-process)",
                           f"docker pull x{IMAGES}")

        def baseline_side(_index: int) -> float:
            baseline.append(counted(lambda: pull_all(through_proxy)))
            return baseline[-1].seconds

        def fallback_side(_index: int) -> float:
            fallback.append(counted(lambda: resolve_all(through_proxy)))
            return fallback[-1].seconds

        alternate(settings.runs, baseline_side, fallback_side, times)
        ours, label = fallback, "RegistryClient.resolve (in-process)"
        check_available = rollout_check_exists()
        if check_available:
            digests = resolve_all(through_proxy)
            config = prepare_check(root, proxy.host, repositories, digests)
            checks: list[Cost] = []
            check_times = Comparison(f"{IMAGES} unchanged images: wall time", "rollout check (process)",
                                     f"docker pull x{IMAGES}")

            def check_side(_index: int) -> float:
                checks.append(counted(lambda: run([ROLLOUT, "check"], env=rollout_env(config), timeout=300,
                                                  what="rollout check")))
                return checks[-1].seconds

            alternate(settings.runs, baseline_side, check_side, check_times)
            ours, label, times = checks, "rollout check", check_times
        per_image = [
            ("manifest HEADs per image", "heads", "1"),
            ("manifest GETs per image", "gets", "0"),
            ("token requests per repository", "tokens", "<= 1"),
        ]
        for name, attribute, target in per_image:
            result.comparisons.append(Comparison(
                name, label, f"docker pull x{IMAGES}", [getattr(c, attribute) / IMAGES for c in ours],
                [getattr(c, attribute) / IMAGES for c in baseline[-len(ours):]], "requests", target))
        result.comparisons.append(times)
        result.metrics.update(images=IMAGES, rollout_blob_gets=ours[-1].blob_gets, docker_pull_blob_gets=baseline[-1].blob_gets,
                              resolve_heads_total=fallback[-1].heads, resolve_tokens_total=fallback[-1].tokens)
        if not check_available:
            raise Skipped("rollout check not available (issue 4); figures are RegistryClient.resolve of the same images")
    finally:
        remove_containers(PREFIX)
        proxy.close()
        registry.close()
        token.close()
        remove_local_images([*through_proxy, *[f"{registry.host}/{repo}:v1" for repo in repositories]])


def pull_all(references: list[str]) -> None:
    for reference in references:
        docker("pull", "-q", reference)


def resolve_all(references: list[str]) -> list[str]:
    from rollout.reference import parse
    from rollout.registry import RegistryClient

    client = RegistryClient()  # a fresh one, like a new process: no cached tokens
    return [client.resolve(parse(reference)) for reference in references]


def rollout_check_exists() -> bool:
    try:
        run([ROLLOUT, "check", "--help"], timeout=60, what="rollout check --help")
    except ScenarioFailed:
        return False
    return True


def prepare_check(root: Any, registry: str, repositories: list[str], digests: list[str]) -> Any:
    """20 apps whose ledger entry and running container already match the registry."""
    from rollout.ledger import HEALTHY, Ledger, NewEntry

    project = root / "check"
    project.mkdir()
    blocks = []
    ledger = Ledger(project / "state" / "ledger.db")
    try:
        for number, (repo, digest) in enumerate(zip(repositories, digests)):
            app, container = f"app{number:02d}", f"{PREFIX}{number:02d}"
            image = f"{registry}/{repo}"
            docker("pull", "-q", f"{image}@{digest}")
            docker("run", "-d", "--name", container, "--network", "none", f"{image}@{digest}")
            entry = ledger.record(NewEntry(app=app, repository=image, tag="v1", digest=digest))
            ledger.set_status(entry.id, HEALTHY)
            blocks.append(docker_app_toml(app, image, container))
    finally:
        ledger.close()
    config = project / "rollout.toml"
    config.write_text("".join(blocks))
    return config


def remove_local_images(references: list[str]) -> None:
    try:
        docker("rmi", *references, expect=(0, 1))
    except ScenarioFailed:
        pass  # cleanup must not hide the measurement's own error
