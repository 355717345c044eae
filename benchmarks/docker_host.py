"""B1 deploy overhead and B2 recovery time on one Docker host (the real engine).

Each side has its own container and port, so the two never disturb each other's
state; they take turns. The baselines are the shell scripts people write today,
run by bash exactly as shown in BASELINE_DEPLOY and BASELINE_RECOVER.
"""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.common import (APP_IMAGE, ROLLOUT, SCRIPT_PATH, Comparison, ScenarioFailed, ScenarioResult, Settings,
                               alternate, docker, docker_app_toml, docker_time, http_get, iso_time,
                               remove_containers, require_docker, require_test_images, rollout_env, run, timed,
                               wait_for_version)
from tests.support.ports import free_port

REPLACE_CONTAINER = r"""
set -eu
docker pull -q "$IMAGE" >/dev/null
docker stop -t 10 "$NAME" >/dev/null
docker rm "$NAME" >/dev/null
docker run -d --name "$NAME" --network host -e PORT="$PORT" "$IMAGE" >/dev/null
"""

# The manual upgrade: pull, replace the container, wait for the health URL.
BASELINE_DEPLOY = REPLACE_CONTAINER + r"""
deadline=$((SECONDS + 60))
until curl -fsS -m 2 -o /dev/null "$URL"; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "not healthy within 60s" >&2; exit 1; }
  sleep "$INTERVAL"
done
"""

# The Watchtower/Kamal-style loop: replace the container, poll every INTERVAL until
# healthy or exited, and on failure recreate the old version and wait for it.
BASELINE_RECOVER = REPLACE_CONTAINER + r"""
deadline=$((SECONDS + TIMEOUT))
while [ "$SECONDS" -lt "$deadline" ]; do
  if curl -fsS -m 2 -o /dev/null "$URL"; then exit 0; fi
  [ "$(docker inspect -f '{{.State.Running}}' "$NAME")" = true ] || break
  sleep "$INTERVAL"
done
echo "exited $(docker inspect -f '{{.State.FinishedAt}}' "$NAME") revert $(date +%s.%N)"
docker rm -f "$NAME" >/dev/null
docker run -d --name "$NAME" --network host -e PORT="$PORT" "$PREVIOUS" >/dev/null
until curl -fsS -m 2 -o /dev/null "$URL"; do sleep "$INTERVAL"; done
exit 1
"""

# The floor of any Python tool built on the Docker SDK: the same engine steps as the manual
# script, as a bare script (no CLI, ledger, lock, config or events), started the way
# rollout is (same interpreter and venv, paramiko not loaded). rollout vs this is what
# rollout itself costs; this vs the manual script is what Python + the SDK cost.
SDK_FLOOR = r"""
import os, sys, time, urllib.request
sys.modules["paramiko"] = None
import docker
client = docker.from_env()
repository, tag = os.environ["IMAGE"].rsplit(":", 1)
client.api.pull(repository, tag=tag)
old = client.containers.get(os.environ["NAME"])
old.stop(timeout=10)
old.remove()
client.containers.run(os.environ["IMAGE"], name=os.environ["NAME"], detach=True, network_mode="host",
                      environment={"PORT": os.environ["PORT"]})
while True:
    try:
        urllib.request.urlopen(os.environ["URL"], timeout=2).close()
        break
    except OSError:
        time.sleep(float(os.environ["INTERVAL"]))
"""

B1_INTERVAL = 0.5
B2_INTERVAL = 1.0


def rollout_config(path: Path, image: str, container: str, port: int, *, interval: float, stable: float,
                   timeout: float) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = path / "rollout.toml"
    health = {"timeout": timeout, "interval": interval, "stable": stable, "http": f"http://127.0.0.1:{port}/health"}
    config.write_text(docker_app_toml("web", image, container, health=health, host_port=port))
    return config


def start_manual_container(name: str, image: str, port: int) -> None:
    docker("run", "-d", "--name", name, "--network", "host", "-e", f"PORT={port}", image)


def require_tools() -> None:
    require_docker()
    for tool in ("curl", "bash"):
        if shutil.which(tool) is None:
            raise ScenarioFailed(f"{tool} is not installed (run `make testbed`)")


# -- B1 -------------------------------------------------------------------------


def deploy_overhead(settings: Settings, result: ScenarioResult) -> None:
    """Upgrade to a version the host has never pulled: `rollout deploy` vs pull+stop+rm+run+wait."""
    from tests.support.registry_server import start_registry

    require_tools()
    require_test_images("good1")
    docker("pull", "-q", f"{APP_IMAGE}:good1")
    prefix = "bench-b1-"
    remove_containers(prefix)
    root = settings.workdir / "b1"
    registry = start_registry(root)
    repo = f"{registry.host}/bench/app"
    sides = ("manual", "sdk", "rollout")
    try:
        versions = {side: [f"{side}-{i}" for i in range(settings.runs)] for side in sides}
        build_versions(root / "context", repo, [f"{side}-seed" for side in sides] + sum(versions.values(), []))
        ports = {side: free_port() for side in sides}
        config = rollout_config(root / "project", repo, f"{prefix}rollout", ports["rollout"], interval=B1_INTERVAL,
                                stable=0, timeout=60)
        env = rollout_env(config)
        run([ROLLOUT, "deploy", "web:rollout-seed"], env=env, timeout=120, what="rollout deploy (seed)")
        for side in ("manual", "sdk"):
            start_manual_container(f"{prefix}{side}", f"{repo}:{side}-seed", ports[side])
        for side in sides:
            wait_for_version(ports[side], f"{side}-seed")

        def rollout_side(index: int) -> float:
            version = versions["rollout"][index]
            return timed([ROLLOUT, "deploy", f"web:{version}"], env=env, what="rollout deploy",
                         then=lambda: require_version(ports["rollout"], version))

        def script_side(side: str, command: list[str]) -> Callable[[int], float]:
            def one(index: int) -> float:
                version = versions[side][index]
                script_env = {"PATH": SCRIPT_PATH, "IMAGE": f"{repo}:{version}", "NAME": f"{prefix}{side}",
                              "PORT": str(ports[side]), "URL": f"http://127.0.0.1:{ports[side]}/health",
                              "INTERVAL": str(B1_INTERVAL)}
                return timed(command, env=script_env, what=f"{side} script",
                             then=lambda: require_version(ports[side], version))
            return one

        timings = rotate(settings.runs, {"manual": script_side("manual", ["bash", "-c", BASELINE_DEPLOY]),
                                         "sdk": script_side("sdk", [sys.executable, "-c", SDK_FLOOR]),
                                         "rollout": rollout_side})
        against_manual = Comparison("healthy upgrade, image not yet on the host", "rollout deploy",
                                    "docker pull+stop+rm+run, poll health", rollout=timings["rollout"],
                                    baseline=timings["manual"], target="ratio <= 1.3")
        against_sdk = Comparison("same upgrade: what rollout adds to a bare Docker SDK script", "rollout deploy",
                                 "Python script, Docker SDK pull+stop+rm+run, poll health", rollout=timings["rollout"],
                                 baseline=timings["sdk"])
        result.comparisons += [against_manual, against_sdk]
        sdk_vs_manual = statistics.median(timings["sdk"]) / statistics.median(timings["manual"])
        result.metrics.update(health_interval_s=B1_INTERVAL, rollout_stable_s=0,
                              sdk_script_vs_manual_ratio=round(sdk_vs_manual, 2))
    finally:
        remove_containers(prefix)
        registry.close()
        remove_images(repo)


def rotate(runs: int, sides: dict[str, Callable[[int], float]]) -> dict[str, list[float]]:
    """Like common.alternate for any number of sides: each round starts one side later."""
    names = list(sides)
    timings: dict[str, list[float]] = {name: [] for name in names}
    for index in range(runs):
        for offset in range(len(names)):
            name = names[(index + offset) % len(names)]
            timings[name].append(sides[name](index))
    return timings


def build_versions(context: Path, repo: str, versions: list[str]) -> None:
    """One image per version: good1 plus a /www/version file, pushed, then removed locally so a deploy must pull."""
    context.mkdir(parents=True)
    (context / "Dockerfile").write_text(f"FROM {APP_IMAGE}:good1\nCOPY version /www/version\n")
    for version in versions:
        (context / "version").write_text(version + "\n")
        run(["docker", "build", "-q", "--network", "host", "-t", f"{repo}:{version}", str(context)],
            env={"DOCKER_BUILDKIT": "0", "PATH": SCRIPT_PATH}, timeout=180, what="docker build")
        docker("push", "-q", f"{repo}:{version}")
    docker("rmi", *[f"{repo}:{version}" for version in versions])


def remove_images(repo: str) -> None:
    try:
        ids = docker("images", "-q", repo).split()
        if ids:
            docker("rmi", "-f", *sorted(set(ids)), expect=(0, 1))
    except ScenarioFailed:
        pass  # cleanup must not hide the measurement's own error


def require_version(port: int, version: str) -> None:
    answered = http_get(f"http://127.0.0.1:{port}/version")
    if answered != version:
        raise ScenarioFailed(f"after the deploy 127.0.0.1:{port} answers {answered!r}, not {version!r}")


def run_script(script: str, script_env: dict[str, str], *, expect: tuple[int, ...]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": SCRIPT_PATH, **script_env}
    return run(["bash", "-c", script], env=env, timeout=180, expect=expect, what="baseline script")


# -- B2 -------------------------------------------------------------------------


@dataclass
class RecoveryWatch:
    """Polls /version every 10 ms: when did `version` stop answering, and when did it come back?"""

    port: int
    version: str
    down_at: float | None = None
    back_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "RecoveryWatch":
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        url = f"http://127.0.0.1:{self.port}/version"
        while not self._stop.is_set():
            answer = http_get(url, timeout=0.5)
            now = time.monotonic()
            if answer != self.version and self.down_at is None:
                self.down_at = now
            elif answer == self.version and self.down_at is not None:
                self.back_at = now
                return
            time.sleep(0.01)

    def wait_back(self, timeout: float) -> float:
        assert self._thread is not None
        self._thread.join(timeout)
        self._stop.set()
        if self.back_at is None:
            raise ScenarioFailed(f"{self.version} did not answer again on 127.0.0.1:{self.port} within {timeout:.0f}s")
        return self.back_at


def recovery_time(settings: Settings, result: ScenarioResult) -> None:
    """A release that crashes at start: from the deploy's start until the previous version serves again."""
    require_tools()
    require_test_images("good1", "crash")
    for variant in ("good1", "crash"):
        docker("pull", "-q", f"{APP_IMAGE}:{variant}")
    crash_digest = docker("image", "inspect", "-f", "{{index .RepoDigests 0}}", f"{APP_IMAGE}:crash").split("@")[-1]
    prefix = "bench-b2-"
    remove_containers(prefix)
    root = settings.workdir / "b2"
    ours, theirs = free_port(), free_port()
    config = rollout_config(root, APP_IMAGE, f"{prefix}rollout", ours, interval=B2_INTERVAL, stable=1, timeout=30)
    env = rollout_env(config)
    recovery = Comparison("crash at start: deploy start -> previous version serves again", "rollout deploy",
                          f"replace, poll every {B2_INTERVAL:g} s, recreate old")
    detection = Comparison("detection: container exit -> revert starts", "rollout (engine events)",
                           f"poll every {B2_INTERVAL:g} s", target="<= 0.5 s")
    verdicts: list[float] = []
    process_times: list[float] = []
    try:
        run([ROLLOUT, "deploy", "web:good1"], env=env, timeout=120, what="rollout deploy (seed)")
        start_manual_container(f"{prefix}manual", f"{APP_IMAGE}:good1", theirs)
        wait_for_version(ours, "good1")
        wait_for_version(theirs, "good1")

        def rollout_side(_index: int) -> float:
            watch = RecoveryWatch(ours, "good1").start()
            started = time.monotonic()
            run([ROLLOUT, "deploy", "web:crash"], env=env, timeout=120, expect=(1,), what="rollout deploy web:crash")
            process_times.append(time.monotonic() - started)
            back = watch.wait_back(30)
            exit_to_revert, exit_to_verdict = rollout_detection(root / "state" / "ledger.db", prefix, crash_digest)
            detection.rollout.append(exit_to_revert)
            verdicts.append(exit_to_verdict)
            return back - started

        def manual_side(_index: int) -> float:
            watch = RecoveryWatch(theirs, "good1").start()
            script_env = {"IMAGE": f"{APP_IMAGE}:crash", "PREVIOUS": f"{APP_IMAGE}:good1", "NAME": f"{prefix}manual",
                          "PORT": str(theirs), "URL": f"http://127.0.0.1:{theirs}/health",
                          "INTERVAL": str(B2_INTERVAL), "TIMEOUT": "30"}
            started = time.monotonic()
            done = run_script(BASELINE_RECOVER, script_env, expect=(1,))
            back = watch.wait_back(30)
            detection.baseline.append(baseline_detection(done.stdout))
            return back - started

        alternate(settings.runs, manual_side, rollout_side, recovery)
        result.comparisons += [recovery, detection]
        result.metrics.update(
            rollout_exit_to_failed_verdict_s=round(sorted(verdicts)[len(verdicts) // 2], 4),
            rollout_process_s_incl_stable_check=round(sorted(process_times)[len(process_times) // 2], 3),
            health_interval_s=B2_INTERVAL,
        )
    finally:
        remove_containers(prefix)


def rollout_detection(ledger: Path, prefix: str, crash_digest: str) -> tuple[float, float]:
    """(exit -> revert entry recorded, exit -> failed verdict) for the newest failed deploy, in seconds."""
    conn = sqlite3.connect(ledger)
    try:
        failed = conn.execute("SELECT id FROM entries WHERE kind = 'deploy' AND status = 'failed'"
                              " ORDER BY id DESC LIMIT 1").fetchone()
        if failed is None:
            raise ScenarioFailed("the ledger holds no failed deploy after deploying the crash image")
        verdict = conn.execute("SELECT at FROM events WHERE entry_id = ? AND event = 'status:failed'", failed).fetchone()
        revert = conn.execute(
            "SELECT e.at FROM events e JOIN entries r ON r.id = e.entry_id"
            " WHERE r.kind = 'revert' AND r.previous_id = ? AND e.event = 'recorded'", failed).fetchone()
    finally:
        conn.close()
    if verdict is None or revert is None:
        raise ScenarioFailed(f"ledger entry #{failed[0]} has no status:failed event or no revert entry")
    exited = crash_exit_time(prefix, crash_digest)
    return iso_time(revert[0]) - exited, iso_time(verdict[0]) - exited


def crash_exit_time(prefix: str, crash_digest: str) -> float:
    """When the crash container last exited, by the engine's clock (a reused container keeps one record)."""
    names = docker("ps", "-a", "--filter", f"name={prefix}rollout", "--format", "{{.Names}}").split()
    finished = []
    for name in names:
        image, stamp = docker("inspect", "-f", "{{.Config.Image}} {{.State.FinishedAt}}", name).split()
        if image.endswith(crash_digest) and not stamp.startswith("0001-"):
            finished.append(docker_time(stamp))
    if not finished:
        raise ScenarioFailed("found no exited crash container to time the detection against")
    return max(finished)


def baseline_detection(stdout: str) -> float:
    words = stdout.split()
    if "exited" not in words or "revert" not in words:
        raise ScenarioFailed(f"the baseline script did not report its detection: {stdout[:200]!r}")
    exited = docker_time(words[words.index("exited") + 1])
    reverted = float(words[words.index("revert") + 1])
    return reverted - exited
