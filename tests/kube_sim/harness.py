"""Starting the simulator from tests: a subprocess on a free port, a kubeconfig, kubectl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBECTL = "kubectl"


@dataclass
class RunningSimulator:
    url: str
    kubeconfig: Path
    process: subprocess.Popen[str]

    def kubectl(self, *args: str, timeout: float = 90, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBECTL, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=stdin,
        )

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
        """One raw API call; returns (status code, decoded JSON or text)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                code, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            code, raw = error.code, error.read()
        try:
            return code, json.loads(raw)
        except ValueError:
            return code, raw.decode()

    def watch(self, path: str) -> list[dict[str, Any]]:
        """Reads a watch stream (which must end, e.g. via timeoutSeconds) into a list of events."""
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return [json.loads(line) for line in response.read().decode().splitlines() if line.strip()]


def simulator_command(port: int, kubeconfig: Path, kubelet: str, extra: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "tests.kube_sim", "--port", str(port), "--kubeconfig", str(kubeconfig), "--kubelet", kubelet, *extra]


@contextmanager
def running_simulator(directory: Path, kubelet: str = "table", extra: Sequence[str] = ()) -> Iterator[RunningSimulator]:
    """Runs `python -m tests.kube_sim` until the block ends, then SIGTERMs it."""
    kubeconfig = directory / "kubeconfig"
    log_path = directory / "kube-sim.log"
    # Output goes to a file: an unread pipe would fill up and stall the simulator.
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            simulator_command(0, kubeconfig, kubelet, extra), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, text=True
        )
    try:
        deadline = time.monotonic() + 30
        first = ""
        while "serving" not in first:
            first = log_path.read_text().split("\n", 1)[0]
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kube-sim did not start: {log_path.read_text()}")
            time.sleep(0.05)
        url = first.split()[2]
        yield RunningSimulator(url, kubeconfig, process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for(condition: Any, timeout: float = 30, interval: float = 0.2, what: str = "condition") -> Any:
    """Polls condition() until it returns something truthy; fails with `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(interval)


def environment_without_kubeconfig() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
