"""What every scenario shares: settings, results, timing, and small helpers for the engine and HTTP."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
ROLLOUT = str(Path(sys.executable).parent / "rollout")
SCRIPT_PATH = "/usr/local/bin:/usr/bin:/bin"  # baseline scripts run with this PATH and nothing else they did not ask for
REGISTRY = os.environ.get("ROLLOUT_TEST_REGISTRY", "127.0.0.1:5000")
APP_IMAGE = f"{REGISTRY}/rollout-test/app"
CONTAINER_PREFIX = "bench-"  # tests use rt-*, kube-sim-*, rollout-demo-*: never these


class ScenarioFailed(Exception):
    """The measurement could not be made (a command failed, a service is missing): reported, not fatal."""


class Skipped(Exception):
    """The scenario does not apply yet (say, a command that has not landed)."""


@dataclass(frozen=True)
class Settings:
    quick: bool
    runs: int
    workdir: Path
    k8s_deadline: int  # progressDeadlineSeconds for the kubectl baseline in B3
    ledger_entries: int
    ledger_apps: int

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


@dataclass
class Comparison:
    """One measured quantity for rollout and for its baseline; ratio = rollout / baseline."""

    name: str
    rollout_label: str
    baseline_label: str
    rollout: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    unit: str = "s"
    target: str = ""

    @property
    def rollout_median(self) -> float | None:
        return statistics.median(self.rollout) if self.rollout else None

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline) if self.baseline else None

    @property
    def ratio(self) -> float | None:
        ours, theirs = self.rollout_median, self.baseline_median
        if ours is None or theirs is None or theirs == 0:
            return None
        return ours / theirs

    @property
    def runs(self) -> int:
        return min(len(self.rollout), len(self.baseline)) if self.baseline else len(self.rollout)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "unit": self.unit, "target": self.target,
            "rollout": self.rollout_label, "baseline": self.baseline_label,
            "rollout_median": _round(self.rollout_median), "baseline_median": _round(self.baseline_median),
            "ratio": _round(self.ratio), "runs": self.runs,
            "rollout_samples": [_round(v) for v in self.rollout], "baseline_samples": [_round(v) for v in self.baseline],
        }


@dataclass
class ScenarioResult:
    key: str
    title: str
    status: str = "ok"  # ok | error | skipped
    error: str | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0
    harness_broken: bool = False

    def to_json(self, machine: dict[str, Any], mode: str) -> dict[str, Any]:
        primary = self.comparisons[0] if self.comparisons else None
        return {
            "title": self.title, "status": self.status, "error": self.error, "mode": mode,
            "rollout_median": _round(primary.rollout_median) if primary else None,
            "baseline_median": _round(primary.baseline_median) if primary else None,
            "ratio": _round(primary.ratio) if primary else None,
            "runs": primary.runs if primary else 0,
            "unit": primary.unit if primary else None,
            "comparisons": [c.to_json() for c in self.comparisons],
            "metrics": self.metrics,
            "elapsed_s": round(self.elapsed, 1),
            "machine": machine,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    docker_version = _output(["docker", "version", "--format", "{{.Server.Version}}"])
    return {
        "cores": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
        "python": platform.python_version(), "docker": docker_version,
        "memory_gb": _memory_gb(),
    }


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _output(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the value below which `fraction` of the samples fall."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def alternate(runs: int, baseline: Callable[[int], float], rollout: Callable[[int], float],
              comparison: Comparison) -> None:
    """Run both sides `runs` times, switching which goes first each round so neither always
    gets the warm caches (or the leftovers) of the other."""
    for index in range(runs):
        if index % 2 == 0:
            comparison.baseline.append(baseline(index))
            comparison.rollout.append(rollout(index))
        else:
            comparison.rollout.append(rollout(index))
            comparison.baseline.append(baseline(index))


def timed(command: Sequence[str], *, env: dict[str, str], then: Callable[[], None], what: str,
          timeout: float = 300) -> float:
    """Seconds the command took (it must exit 0); then() checks its effect, outside the timing."""
    started = time.perf_counter()
    run(command, env=env, timeout=timeout, what=what)
    elapsed = time.perf_counter() - started
    then()
    return elapsed


def run(command: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 300, expect: Sequence[int] = (0,), what: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; an unexpected exit code is a ScenarioFailed carrying the end of its stderr."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ScenarioFailed(f"{what or command[0]} did not finish within {timeout:.0f}s") from None
    except OSError as exc:
        raise ScenarioFailed(f"cannot run {command[0]}: {exc}") from None
    if done.returncode not in expect:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        raise ScenarioFailed(f"{what or ' '.join(command[:3])} exited {done.returncode}"
                             f" (expected {'/'.join(map(str, expect))}): {' | '.join(tail)}")
    return done


def docker_app_toml(app: str, image: str, container: str, *, health: dict[str, Any] | None = None,
                    host_port: int | None = None) -> str:
    """rollout.toml text for one app with one docker target; host_port: host network, PORT set for the test image."""
    lines = [f"[apps.{app}]", f'image = "{image}"', ""]
    if health:
        lines += [f"[apps.{app}.health]", *(f"{k} = {json.dumps(v)}" for k, v in health.items()), ""]
    lines += [f"[[apps.{app}.targets]]", 'name = "local"', 'kind = "docker"', f'container = "{container}"']
    if host_port is not None:
        lines += ['network = "host"', f'env = {{ PORT = "{host_port}" }}']
    return "\n".join(lines) + "\n\n"


def rollout_env(config: Path, **extra: str) -> dict[str, str]:
    # The caller's own ledger settings must not leak in: $ROLLOUT_LEDGER_URL beats the config's ledger.
    env = {k: v for k, v in os.environ.items() if k not in ("ROLLOUT_LEDGER", "ROLLOUT_LEDGER_URL", "KUBECONFIG")}
    env.update(ROLLOUT_CONFIG=str(config), **extra)
    return env


def http_get(url: str, timeout: float = 1.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode().strip()
    except OSError:
        return None


def wait_for_version(port: int, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while http_get(f"http://127.0.0.1:{port}/version") != version:
        if time.monotonic() > deadline:
            raise ScenarioFailed(f"{version} never answered on 127.0.0.1:{port} within {timeout:.0f}s")
        time.sleep(0.05)


def docker(*args: str, timeout: float = 180, expect: Sequence[int] = (0,)) -> str:
    return run(["docker", *args], timeout=timeout, expect=expect, what=f"docker {args[0]}").stdout.strip()


def require_docker() -> None:
    try:
        run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30, what="docker info")
    except ScenarioFailed as exc:
        raise ScenarioFailed(f"the Docker engine is not available ({exc}): run `make testbed`") from None


def require_test_images(*variants: str) -> None:
    tags = http_get(f"http://{REGISTRY}/v2/rollout-test/app/tags/list", timeout=5)
    if tags is None:
        raise ScenarioFailed(f"the test registry at {REGISTRY} does not answer: run `make testbed`")
    missing = [v for v in variants if f'"{v}"' not in tags]
    if missing:
        raise ScenarioFailed(f"test images {', '.join(missing)} are not in {REGISTRY}: run `make testbed`")


def remove_containers(prefix: str) -> None:
    """Force-remove containers whose name starts with prefix (which must be one of ours)."""
    assert prefix.startswith(CONTAINER_PREFIX), prefix
    names = run(["docker", "ps", "-a", "--format", "{{.Names}}", "--filter", f"name={prefix}"],
                timeout=60, what="docker ps").stdout.split()
    doomed = [name for name in names if name.startswith(prefix)]  # the filter matches substrings
    if doomed:
        run(["docker", "rm", "-f", *doomed], timeout=120, expect=(0, 1), what="docker rm")


def docker_time(text: str) -> float:
    """Docker's RFC 3339 nanosecond timestamp ('2024-01-02T03:04:05.123456789Z') as epoch seconds."""
    import datetime as dt

    stamp, _, fraction = text.rstrip("Z").partition(".")
    base = dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.timezone.utc).timestamp()
    return base + (float("0." + fraction) if fraction else 0.0)


def iso_time(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text).timestamp()
