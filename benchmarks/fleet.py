"""B7 fleet upgrade: one app on three Docker engines, `rollout deploy` (parallel) vs a bash loop.

The engines are separate dockerd instances on unix sockets (tests/support/fleet.py,
no sshd). Each side has its own container name and its own port on every engine, so
the two never touch each other's containers; they take turns. Every run deploys a
version that no engine has pulled yet (built and pushed to a private registry first),
so both sides pay for the pull. Both poll the health URL every B7_INTERVAL seconds
and rollout waits no stable period (stable = 0), as the loop does not either.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import (APP_IMAGE, ROLLOUT, SCRIPT_PATH, Comparison, ScenarioFailed, ScenarioResult, Settings,
                               alternate, http_get, require_test_images, rollout_env, run, timed,
                               wait_for_version)
from benchmarks.docker_host import build_versions, remove_images, require_tools
from tests.support.ports import free_port

B7_INTERVAL = 0.5
ENGINES = 3
PREFIX = "bench-b7-"

# What people run today: host after host, pull, replace the container, wait for its health URL.
BASELINE_FLEET = r"""
set -eu
set -- $PORTS
for host in $HOSTS; do
  port=$1; shift
  export DOCKER_HOST="$host"
  docker pull -q "$IMAGE" >/dev/null
  docker stop -t 10 "$NAME" >/dev/null
  docker rm "$NAME" >/dev/null
  docker run -d --name "$NAME" --network host -e PORT="$port" "$IMAGE" >/dev/null
  deadline=$((SECONDS + 60))
  until curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$port/health"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "$host not healthy within 60s" >&2; exit 1; }
    sleep "$INTERVAL"
  done
done
"""


def fleet_config(path: Path, image: str, container: str, targets: list[tuple[str, str, int]]) -> Path:
    """rollout.toml: one app, parallel strategy, one docker target per (name, host, port)."""
    path.mkdir(parents=True, exist_ok=True)
    text = (f'[apps.web]\nimage = "{image}"\n\n[apps.web.rollout]\nstrategy = "parallel"\n\n'
            f"[apps.web.health]\ntimeout = 60\ninterval = {B7_INTERVAL}\nstable = 0\n")
    for name, host, port in targets:
        text += (f'\n[[apps.web.targets]]\nname = "{name}"\nkind = "docker"\nhost = "{host}"\n'
                 f'container = "{container}"\nnetwork = "host"\nenv = {{ PORT = "{port}" }}\n\n'
                 f'[apps.web.targets.health]\nhttp = "http://127.0.0.1:{port}/health"\n')
    config = path / "rollout.toml"
    config.write_text(text)
    return config


def require_versions(ports: list[int], version: str) -> None:
    answers = {port: http_get(f"http://127.0.0.1:{port}/version") for port in ports}
    wrong = {port: answer for port, answer in answers.items() if answer != version}
    if wrong:
        raise ScenarioFailed(f"after the deploy, not every host answers {version!r}: {wrong}")


def fleet_upgrade(settings: Settings, result: ScenarioResult) -> None:
    """Healthy upgrade on three engines to a version none has pulled: rollout (parallel) vs a host-by-host loop."""
    from tests.support.fleet import FleetUnavailable, start_fleet
    from tests.support.registry_server import start_registry

    require_tools()
    require_test_images("good1")
    run(["docker", "pull", "-q", f"{APP_IMAGE}:good1"], timeout=180, what="docker pull good1")
    root = settings.workdir / "b7"
    try:
        fleet = start_fleet(ENGINES, ssh=False)
    except FleetUnavailable as exc:
        raise ScenarioFailed(f"cannot start a fleet of {ENGINES} Docker engines: {exc}") from None
    registry = None
    repo = ""
    try:
        registry = start_registry(root)
        repo = f"{registry.host}/bench/fleet-app"
        versions = {side: [f"{side}-{i}" for i in range(settings.runs)] for side in ("rollout", "manual")}
        build_versions(root / "context", repo,
                       ["rollout-seed", "manual-seed", *versions["rollout"], *versions["manual"]])
        hosts = [engine.host for engine in fleet.engines]
        ours = [free_port() for _ in hosts]
        theirs = [free_port() for _ in hosts]
        config = fleet_config(root / "project", repo, f"{PREFIX}rollout",
                              [(f"h{i}", host, port) for i, (host, port) in enumerate(zip(hosts, ours), start=1)])
        env = {**rollout_env(config), "HOME": str(fleet.home), "DOCKER_CONFIG": str(fleet.docker_config)}
        env.pop("DOCKER_HOST", None)
        env.pop("DOCKER_CONTEXT", None)
        script_env = {"PATH": SCRIPT_PATH, "HOME": str(fleet.home),
                      "DOCKER_CONFIG": str(fleet.docker_config), "NAME": f"{PREFIX}manual",
                      "HOSTS": " ".join(hosts), "PORTS": " ".join(map(str, theirs)), "INTERVAL": str(B7_INTERVAL)}

        # Seeds: both sides start from a running, healthy previous version (and the base layers pulled).
        run([ROLLOUT, "deploy", "web:rollout-seed"], env=env, timeout=180, what="rollout deploy (seed)")
        for host, port in zip(hosts, theirs):
            run(["docker", "run", "-d", "--name", f"{PREFIX}manual", "--network", "host", "-e", f"PORT={port}",
                 f"{repo}:manual-seed"], env={**script_env, "DOCKER_HOST": host}, timeout=180,
                what="docker run (seed)")
        for port in ours:
            wait_for_version(port, "rollout-seed")
        for port in theirs:
            wait_for_version(port, "manual-seed")

        def rollout_side(index: int) -> float:
            version = versions["rollout"][index]
            return timed([ROLLOUT, "deploy", f"web:{version}"], env=env, what="rollout deploy",
                         then=lambda: require_versions(ours, version))

        def manual_side(index: int) -> float:
            version = versions["manual"][index]
            return timed(["bash", "-c", BASELINE_FLEET], env={**script_env, "IMAGE": f"{repo}:{version}"},
                         what="baseline loop", then=lambda: require_versions(theirs, version))

        comparison = Comparison(f"healthy upgrade on {ENGINES} engines, image not yet on them",
                                "rollout deploy (parallel)", "bash loop: pull+stop+rm+run, poll health, per host")
        alternate(settings.runs, manual_side, rollout_side, comparison)
        result.comparisons.append(comparison)
        result.metrics.update(engines=ENGINES, health_interval_s=B7_INTERVAL, rollout_stable_s=0,
                              strategy="parallel", transport="unix socket", images_already_present=False)
    finally:
        fleet.close()
        if registry is not None:
            registry.close()
        if repo:
            remove_images(repo)
