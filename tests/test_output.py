"""rollout.output: what reaches stdout and stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# A command printing far more than a pipe holds (64 KiB), then carrying on: what `rollout history
# | head -1` does when the reader stops after one line.
PRINTS_PAST_A_CLOSED_PIPE = """
import sys
from rollout.output import Console
console = Console()
for i in range(5000):
    console.out(f"line {i} " + "x" * 100)
console.info("finished its work")
sys.exit(3)
"""


def test_a_reader_that_stops_early_neither_cuts_the_command_short_nor_shows_an_error() -> None:
    process = subprocess.Popen([sys.executable, "-c", PRINTS_PAST_A_CLOSED_PIPE], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().startswith(b"line 0 ")
    process.stdout.close()  # as `head -1` exits
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 3, stderr  # the command's own exit code
    assert stderr.strip() == "finished its work", stderr  # no BrokenPipeError, no "Exception ignored"
