"""The one way tests run the real `rollout` command: as a user would, in a child process.

The environment is the test process's own minus the variables that would point rollout at
another config, ledger or cluster than the test's (a developer's shell may have them set), so
every run depends only on what the test passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

# The console script installed next to this interpreter (the project's venv).
ROLLOUT = [str(Path(sys.executable).parent / "rollout")]
# Set by a developer's shell or by an earlier test: they would change what rollout reads.
AMBIENT = ("ROLLOUT_CONFIG", "ROLLOUT_LEDGER", "ROLLOUT_LEDGER_URL", "ROLLOUT_DEBUG", "ROLLOUT_TEST_KILL_AT", "KUBECONFIG")
# What cron gives a job: tests of the Kubernetes target run with it, so rollout must not need
# anything from the caller's environment (no HOME, no proxies, no venv on PATH).
BARE = {"PATH": "/usr/bin:/bin"}
TIMEOUT = 180.0  # seconds; a hang guard, not a measurement


def rollout_env(env: Mapping[str, str] | None = None, *, bare: bool = False) -> dict[str, str]:
    """The environment of a `rollout` run: this process's (or BARE) minus AMBIENT, then `env` on top."""
    base = dict(BARE) if bare else {k: v for k, v in os.environ.items() if k not in AMBIENT}
    return {**base, **(env or {})}


def run_rollout(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                timeout: float = TIMEOUT, bare: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `rollout ARGS...` to its end; stdout and stderr captured as text, stdin closed.

    env: variables set on top of rollout_env (e.g. ROLLOUT_CONFIG); cwd: its working directory;
    timeout: seconds before subprocess.TimeoutExpired.
    """
    return subprocess.run([*ROLLOUT, *args], capture_output=True, text=True, env=rollout_env(env, bare=bare),
                          cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)


def start_rollout(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                  bare: bool = False) -> subprocess.Popen[str]:
    """Start `rollout ARGS...` without waiting (to signal or kill it); see finish()."""
    return subprocess.Popen([*ROLLOUT, *args], env=rollout_env(env, bare=bare), cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int, str]:
    """Wait for a started rollout (at most `timeout` seconds): its exit code and stderr."""
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr
