"""The PostgreSQL ledger's server going away around a real deploy (issue 13, point 6).

Each test runs its own PostgreSQL cluster (support.pg.private_cluster) so it can stop and start
the server (`pg_ctl stop -m fast`: backends terminated, as a server restart does), never the shared
one. Deploys are real: the docker target on the real engine, images from the test registry.

Contract: before any target changed, a lost server is exit 5 with one line and nothing changed;
after, the rollout finishes (verify, revert) and what happened reaches the ledger when the server
returns: retried while the command runs, else spooled next to the config and replayed by the next
command, with the writes' own timestamps; conflicts with another runner become events.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from rollout.ledger import now_iso
from support.errors import WARNING, one_line_error
from support.images import APP_IMAGE, digest_of
from support.pg import PASSWORD, PrivateCluster, private_cluster
from support.project import STEP_TIMEOUT, Project, write_config
from support.proxy import Fault, start_proxy


@pytest.fixture
def outage(tmp_path: Path, docker_client: Any, registry: str) -> Iterator[tuple[PrivateCluster, Project]]:
    """A project whose ledger is the `rollout` database of a private cluster (as $ROLLOUT_LEDGER_URL)."""
    with private_cluster() as cluster:
        project = Project.create(tmp_path / "runner", ledger=cluster.url())
        try:
            yield cluster, project
        finally:
            project.remove_containers(docker_client)
            project.close()


def rows(cluster: PrivateCluster, sql: str, params: tuple = ()) -> list[tuple]:
    """A query on the cluster's ledger database, on a connection of its own (the server restarts)."""
    with cluster.admin() as conn:
        return conn.execute(sql, params).fetchall()


def wait_for_status(cluster: PrivateCluster, process: subprocess.Popen[str], after_id: int, status: str) -> int:
    """The id of the first entry newer than after_id to reach status, waited for while process runs."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        found = rows(cluster, "SELECT id FROM entries WHERE id > %s AND status = %s ORDER BY id", (after_id, status))
        if found:
            return int(found[0][0])
        time.sleep(0.02)
    raise AssertionError(f"no entry reached {status} while the rollout ran (exit {process.poll()})")


class Stderr:
    """A started rollout's stderr read line by line in a thread, so a test can wait for a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process, self.lines, self.changed = process, [], threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = STEP_TIMEOUT) -> str:
        """The first line matching the regex pattern, waited for (AssertionError if the process ends first)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = [line for line in self.lines if re.search(pattern, line)]
                if found:
                    return found[0]
                if not self.thread.is_alive() or time.monotonic() > deadline:
                    raise AssertionError(f"no line matching {pattern!r} on stderr:\n" + "\n".join(self.lines))
                self.changed.wait(0.5)

    def finish(self, timeout: float = 120) -> tuple[int, list[str]]:
        """The exit code and every stderr line once the process ended."""
        code = self.process.wait(timeout=timeout)
        self.thread.join(timeout=10)
        return code, self.lines


def deploy_first(project: Project) -> int:
    """Deploy good1 and return its entry id: the healthy release a failure goes back to."""
    result = project.run("deploy", "web:good1")
    assert result.returncode == 0, result.stderr
    assert project.version() == "good1"
    return int(project.history()[0]["id"])


def events_of(cluster: PrivateCluster, entry_id: int) -> list[tuple[str, str, dict]]:
    return [(event, at, json.loads(detail)) for event, at, detail in
            rows(cluster, "SELECT event, at, detail FROM events WHERE entry_id = %s ORDER BY id", (entry_id,))]


def spools(project: Project) -> list[Path]:
    return sorted((project.root / "state").glob("ledger-spool-*.jsonl"))


def test_server_down_before_the_deploy_is_exit_5_in_one_line_and_changes_nothing(outage, docker_client):
    cluster, project = outage
    first = deploy_first(project)
    before = docker_client.containers.get(project.container)
    cluster.stop("fast")

    result = project.run("deploy", "web:good2")

    line = one_line_error(result, 5)
    assert "unreachable" in line and f"127.0.0.1:{cluster.port}" in line and "nothing was changed" in line
    assert PASSWORD not in result.stderr + result.stdout
    after = docker_client.containers.get(project.container)
    assert (after.id, after.status, after.image.id) == (before.id, "running", before.image.id)
    assert project.version() == "good1"
    cluster.start()
    assert [entry["id"] for entry in project.history()] == [first]
    assert rows(cluster, "SELECT app FROM locks") == []
    assert spools(project) == []


def test_server_lost_while_the_engine_pulls_is_exit_5_and_no_target_changed(outage, docker_client, registry):
    cluster, project = outage
    first = deploy_first(project)
    before = docker_client.containers.get(project.container)
    with start_proxy(registry) as proxy:
        # The engine pulls through the proxy, which holds the manifest by digest for 10 s: the
        # entry is recorded and `applying`, no target has changed yet. The engine must not have the
        # image under the proxy's name already (an earlier proxy on the same port), or it pulls nothing.
        for image in docker_client.images.list():
            for name in (image.attrs.get("RepoTags") or []) + (image.attrs.get("RepoDigests") or []):
                if name.startswith(f"{proxy.host}/"):
                    docker_client.images.remove(name)
        write_config(project, image=f"{proxy.host}/rollout-test/app")
        proxy.inject(Fault("delay", kind="manifest", method=None, path_contains="/manifests/sha256:", delay=10.0,
                           times=None))
        process = project.start("deploy", "web:good2")
        stderr = Stderr(process)
        entry = wait_for_status(cluster, process, first, "applying")
        deadline = time.monotonic() + STEP_TIMEOUT
        while not proxy.faults_applied["delay"] and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proxy.faults_applied["delay"], "the engine never pulled through the proxy"
        cluster.stop("fast")
        code, lines = stderr.finish()

    result = subprocess.CompletedProcess(process.args, code, "", "\n".join(lines))
    line = one_line_error(result, 5, after="progress")
    assert "unreachable" in line and "nothing was changed" in line and PASSWORD not in result.stderr
    after = docker_client.containers.get(project.container)
    assert (after.id, after.status, after.image.id) == (before.id, "running", before.image.id)
    assert project.version() == "good1"
    cluster.start()
    # The entry the deploy had recorded is left unfinished; the next command finishes it as
    # interrupted and, every target still running #first, changes nothing.
    write_config(project)
    status = project.run("status")
    assert status.returncode == 0, status.stderr
    assert rows(cluster, "SELECT status FROM entries WHERE id = %s", (entry,)) == [("interrupted",)]
    assert [row[0] for row in rows(cluster, "SELECT id FROM entries ORDER BY id")] == [first, entry]
    assert docker_client.containers.get(project.container).id == before.id


def test_server_restarted_mid_verify_the_healthy_outcome_is_recorded_with_its_own_time(outage, docker_client):
    cluster, project = outage
    first = deploy_first(project)
    process = project.start("deploy", "web:good2")
    stderr = Stderr(process)
    entry = wait_for_status(cluster, process, first, "verifying")
    stopped = now_iso()
    cluster.stop("fast")
    # The verdict is printed right after the ledger write that records it was tried: the server
    # was down when the deploy wrote its outcome.
    stderr.wait_for(r"\[local\] HEALTHY")
    assert process.poll() is None, "the deploy ended before the server came back"
    restarted = now_iso()
    cluster.start()

    code, lines = stderr.finish()

    assert code == 0, "\n".join(lines)
    assert not [line for line in lines if line.startswith(WARNING) or "spool" in line], lines
    assert rows(cluster, "SELECT status FROM entries WHERE id = %s", (entry,)) == [("healthy",)]
    good2 = f"{APP_IMAGE}@{digest_of(docker_client, 'good2')}"
    assert rows(cluster, "SELECT target, outcome, image_after FROM targets WHERE entry_id = %s", (entry,)) == [
        ("local", "healthy", good2)]
    events = events_of(cluster, entry)
    assert [event for event, _, _ in events] == [
        "recorded", "status:applying", "target:applied", "status:verifying", "target:healthy", "status:healthy"]
    outcome_at = dict((event, at) for event, at, _ in events)["target:healthy"]
    assert stopped < outcome_at < restarted, "the outcome keeps the time it was reached, not the time it was stored"
    assert rows(cluster, "SELECT app FROM locks") == []
    assert project.version() == "good2"
    assert spools(project) == []


def test_a_failure_while_the_server_is_down_is_reverted_and_both_are_recorded_when_it_returns(outage):
    cluster, project = outage
    # never-ready fails verification at the health timeout, well after the server is down (`crash`
    # exits at once: its failure would be recorded before the stop).
    write_config(project, timeout=6)
    first = deploy_first(project)
    process = project.start("deploy", "web:never-ready")
    stderr = Stderr(process)
    entry = wait_for_status(cluster, process, first, "verifying")
    cluster.stop("fast")
    stderr.wait_for(r"\[local\] FAILED")
    # The revert runs without waiting for the ledger: it is recorded as #-1 until the server returns.
    stderr.wait_for(r"reverting to #%d .* as #-1" % first)
    assert process.poll() is None, "the deploy ended before the server came back"
    cluster.start()

    code, lines = stderr.finish()

    assert code == 1, "\n".join(lines)
    assert project.version() == "good1"
    recorded = rows(cluster, "SELECT id, kind, status, reverts_to, previous_id FROM entries WHERE id > %s ORDER BY id",
                    (first,))
    assert [row[1:] for row in recorded] == [("deploy", "failed", None, first), ("revert", "healthy", first, entry)]
    revert = recorded[1][0]
    assert [event for event, _, _ in events_of(cluster, entry)][-2:] == ["target:failed", "status:failed"]
    assert [event for event, _, _ in events_of(cluster, revert)] == [
        "recorded", "status:applying", "target:applied", "status:verifying", "target:healthy", "status:healthy"]
    assert rows(cluster, "SELECT outcome FROM targets WHERE entry_id = %s", (revert,)) == [("healthy",)]
    assert rows(cluster, "SELECT app FROM locks") == []
    assert spools(project) == []


def deploy_spooled(cluster: PrivateCluster, project: Project) -> tuple[int, int, list[str]]:
    """good1, then good2 with the server stopped mid-verify and left down until the deploy ended:
    (good1's id, good2's id, the deploy's stderr lines), the deploy having exited 0."""
    first = deploy_first(project)
    process = project.start("deploy", "web:good2")
    stderr = Stderr(process)
    entry = wait_for_status(cluster, process, first, "verifying")
    cluster.stop("fast")
    code, lines = stderr.finish()
    assert code == 0, "\n".join(lines)
    return first, entry, lines


def test_server_down_until_the_deploy_ended_the_spool_is_replayed_by_the_next_command(outage):
    cluster, project = outage
    _, entry, lines = deploy_spooled(cluster, project)
    warnings = [line for line in lines if line.startswith(WARNING) or "spool" in line]
    [spool] = spools(project)
    assert len(warnings) == 1, lines
    assert re.search(r"unreachable .* \d+ write\(s\) spooled to " + re.escape(str(spool)) + r"; the next rollout command",
                     warnings[0]), warnings
    assert spool.stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in spool.read_text() and PASSWORD not in "\n".join(lines)
    assert project.version() == "good2"
    cluster.start()

    # Two commands open the ledger at once: the spool's flock lets one replay it, the other finds it gone.
    both = [project.start("history", "--json", "-n", "1000") for _ in range(2)]
    outputs = [process.communicate(timeout=120) for process in both]

    assert [process.returncode for process in both] == [0, 0], outputs
    history = json.loads(outputs[0][0])
    assert json.loads(outputs[1][0]) == history
    assert spools(project) == []
    assert history[0]["id"] == entry and history[0]["status"] == "healthy"
    assert [event for event, _, _ in events_of(cluster, entry)] == [
        "recorded", "status:applying", "target:applied", "status:verifying", "target:healthy", "status:healthy"]
    assert rows(cluster, "SELECT outcome FROM targets WHERE entry_id = %s", (entry,)) == [("healthy",)]
    assert rows(cluster, "SELECT app FROM locks") == [], "the spooled release of the lock was replayed"
    assert len(rows(cluster, "SELECT 1 FROM events WHERE event = 'spool:replayed'")) == 1


def test_an_entry_another_runner_finished_meanwhile_gets_the_late_outcome_as_an_event(outage, tmp_path):
    cluster, project = outage
    first, entry, _ = deploy_spooled(cluster, project)
    cluster.start()
    # Another runner (its own config dir, no spool) recovers the entry it finds unfinished: it marks
    # it interrupted and puts the newest healthy release back.
    other = project.another_runner(tmp_path / "other")
    recovered = other.run("status", "--json")
    assert recovered.returncode == 0, recovered.stderr
    assert rows(cluster, "SELECT status FROM entries WHERE id = %s", (entry,)) == [("interrupted",)]

    result = project.run("history", "--json")

    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert spools(project) == []
    assert rows(cluster, "SELECT status FROM entries WHERE id = %s", (entry,)) == [("interrupted",)]
    late = [detail for event, _, detail in events_of(cluster, entry) if event == "spool:late-outcome"]
    assert {"write": "set_status", "status": "healthy", "error": None} in late
    assert any(d["write"] == "set_target" and d["outcome"] == "healthy" for d in late), late
    newest = max(row[0] for row in rows(cluster, "SELECT id FROM entries"))
    assert rows(cluster, "SELECT kind, status FROM entries WHERE id = %s", (newest,)) == [("revert", "healthy")]
    other.close()
