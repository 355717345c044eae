"""B6 start-up: how long the `rollout` command takes before it does anything useful.

Baselines: `python -c pass` with the same interpreter (the floor for any Python CLI)
and `kubectl version --client` (a compiled CLI people run all day).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Callable

from benchmarks.common import ROLLOUT, Comparison, ScenarioFailed, ScenarioResult, Settings, run

TARGET = "rollout <= 0.25 s"


def start_up(settings: Settings, result: ScenarioResult) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise ScenarioFailed("kubectl is not installed (apt-get install kubernetes-client)")
    empty = settings.workdir / "b6"
    empty.mkdir()
    # No rollout.toml in cwd and no $ROLLOUT_CONFIG: history needs only the ledger.
    env = {k: v for k, v in os.environ.items() if k not in ("ROLLOUT_CONFIG", "KUBECONFIG")}
    env["ROLLOUT_LEDGER"] = str(empty / "state" / "ledger.db")
    commands: dict[str, list[str]] = {
        "rollout --help": [ROLLOUT, "--help"],
        "rollout history (empty ledger)": [ROLLOUT, "history"],
        "python -c pass": [sys.executable, "-c", "pass"],
        "kubectl version --client": [kubectl, "version", "--client"],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}

    def measure(name: str) -> Callable[[], None]:
        def once() -> None:
            started = time.perf_counter()
            run(commands[name], env=env, cwd=empty, timeout=60, what=name)
            samples[name].append(time.perf_counter() - started)
        return once

    for name in commands:  # warm the page cache (and create the empty ledger) untimed
        run(commands[name], env=env, cwd=empty, timeout=60, what=name)
    runs = settings.runs if settings.quick else max(10, settings.runs)
    order = list(commands)
    for index in range(runs):
        # Rotate who goes first so no command always runs right after another.
        shift = index % len(order)
        for name in order[shift:] + order[:shift]:
            measure(name)()

    def pair(ours: str, theirs: str) -> Comparison:
        return Comparison("start-up", ours, theirs, samples[ours], samples[theirs], "s", TARGET)

    result.comparisons += [
        pair("rollout --help", "python -c pass"),
        pair("rollout history (empty ledger)", "python -c pass"),
        pair("rollout --help", "kubectl version --client"),
    ]
