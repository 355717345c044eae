"""SIGINT / SIGTERM during a deploy: stop waiting, put the last healthy release back, exit 130 / 143.

The real `rollout deploy` on the real engine receives the signal while it waits for the new
release to prove healthy; on a SQLite ledger and on a PostgreSQL one (ledger_project): the
interrupted entry, the revert and the released lock must reach either backend (issue 13).
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from support.cli import finish
from support.project import Project, write_config


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("tag", ["never-ready", "good2"])
def test_a_signal_during_verify_reverts_and_exits_128_plus_signal(ledger_project: Project, signum: int, code: int,
                                                                  tag: str) -> None:
    project = ledger_project
    write_config(project, timeout=60, stable=1)
    assert project.run("deploy", "web:good1").returncode == 0
    good = project.history()[0]
    # good2 would pass, but only after a 5 s stable window: an unverified release is never kept.
    write_config(project, timeout=60, stable=5 if tag == "good2" else 1)
    process = project.start("deploy", f"web:{tag}")
    assert project.wait_for_entry(process, good["id"], "deploy", "verifying"), process.communicate()
    if tag == "good2":
        # Wait until the new release answers: the signal lands inside its stable window.
        while project.version() != "good2" and process.poll() is None:
            time.sleep(0.05)
    process.send_signal(signum)
    returncode, stderr = finish(process)

    assert returncode == code, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("rollout: error:")]
    assert errors == [f"rollout: error: interrupted by {signal.Signals(signum).name}"]
    assert project.version() == "good1"
    revert, interrupted = project.history()[:2]
    assert (interrupted["tag"], interrupted["status"]) == (tag, "interrupted")
    assert signal.Signals(signum).name in interrupted["error"]
    assert (revert["kind"], revert["status"], revert["reverts_to"], revert["digest"]) == (
        "revert", "healthy", good["id"], good["digest"])
    status = json.loads(project.run("status", "--json").stdout)
    assert status["current"]["id"] == revert["id"] and status["targets"][0]["in_sync"]
    assert project.ledger_rows("SELECT app FROM locks") == []
