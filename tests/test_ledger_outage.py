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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from rollout.ledger import now_iso
from support.errors import WARNING, one_line_error
from support.images import APP_IMAGE, digest_of
from support.pg import PASSWORD, PrivateCluster, fresh_database, private_cluster
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


def lifecycle(cluster: PrivateCluster, entry_id: int) -> list[str]:
    """The entry's lifecycle event names (recorded, status:*, target:*), in order: what the outage
    must keep complete and ordered (other events, e.g. timings or log-tail, are not about it)."""
    return [event for event, _, _ in events_of(cluster, entry_id)
            if event == "recorded" or event.startswith(("status:", "target:"))]


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
        # entry is recorded and `applying`, no target has changed yet. Under a name no engine pulled
        # from, or the engine may use a manifest it kept and ask nothing (RegistryProxy.unseen_name).
        write_config(project, image=proxy.unseen_name("rollout-test/app"))
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
    assert lifecycle(cluster, entry) == [
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
    # The revert runs without waiting for the ledger, under the id reserved before the first apply:
    # the one it gets when the server returns (no placeholder reaches the user or the target).
    announced = int(re.search(r" as #(-?\d+)$", stderr.wait_for(r"reverting to #%d .* as #" % first)).group(1))
    assert process.poll() is None, "the deploy ended before the server came back"
    cluster.start()

    code, lines = stderr.finish()

    assert code == 1, "\n".join(lines)
    assert project.version() == "good1"
    recorded = rows(cluster, "SELECT id, kind, status, reverts_to, previous_id FROM entries WHERE id > %s ORDER BY id",
                    (first,))
    assert [row[1:] for row in recorded] == [("deploy", "failed", None, first), ("revert", "healthy", first, entry)]
    revert = recorded[1][0]
    assert announced == revert
    assert lifecycle(cluster, entry)[-2:] == ["target:failed", "status:failed"]
    assert lifecycle(cluster, revert) == [
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
    assert lifecycle(cluster, entry) == [
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


# -- in-process: signals and errors around COMMIT, on a database of the shared test server -------------

DIGEST = "sha256:" + "ab" * 32


def new_entry() -> "NewEntry":
    from rollout.ledger import NewEntry

    return NewEntry(app="web", repository="registry.example/web", tag="1.0", digest=DIGEST)


def names_of(url: str, entry_id: int) -> list[str]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT event FROM events WHERE entry_id = %s ORDER BY id", (entry_id,))]


def drop_connection(url: str, ledger: Any) -> None:
    """End the ledger handle's server session, as a server restart does (the handle notices on its next use)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (ledger.conn.info.backend_pid,))


GATE_KEY = 7007


@contextmanager
def commit_gate(url: str, *, refuse: bool) -> Iterator[Any]:
    """Every COMMIT of a transaction that inserted an event waits, in a deferred constraint trigger,
    until the block releases the advisory lock it holds, then succeeds (or fails, while a row of
    commit_gate says refuse). Yields the connection holding the lock; the trigger is dropped after."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE commit_gate (refuse BOOLEAN NOT NULL)")
        conn.execute("INSERT INTO commit_gate VALUES (%s)", (refuse,))
        conn.execute(f"""CREATE FUNCTION commit_gate() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_advisory_xact_lock_shared({GATE_KEY});
                IF EXISTS (SELECT 1 FROM commit_gate WHERE refuse) THEN RAISE EXCEPTION 'refused at commit'; END IF;
                RETURN NULL;
            END $$""")
        conn.execute("CREATE CONSTRAINT TRIGGER commit_gate AFTER INSERT ON events DEFERRABLE INITIALLY DEFERRED"
                     " FOR EACH ROW EXECUTE FUNCTION commit_gate()")
        conn.execute("SELECT pg_advisory_lock(%s)", (GATE_KEY,))
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock_all()")
            conn.execute("DROP TRIGGER commit_gate ON events")  # waits for the held COMMIT to end
            conn.execute("DROP FUNCTION commit_gate()")
            conn.execute("DROP TABLE commit_gate")


def committing(url: str) -> list[int]:
    """Backends of the database whose COMMIT waits at the gate."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = 'COMMIT'"
            " AND state = 'active' AND pid <> pg_backend_pid()")]


@contextmanager
def sigterm_while_committing(url: str) -> Iterator[None]:
    """SIGTERM raises Interrupted (as rollout's CLI has it) and is sent to this process once a COMMIT
    of the database waits at the gate."""
    import os
    import signal

    from rollout.errors import Interrupted

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    def send() -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while not committing(url) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, interrupt)
    sender = threading.Thread(target=send, daemon=True)
    try:
        sender.start()
        yield
    finally:
        sender.join(timeout=STEP_TIMEOUT)
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_while_a_flush_commits_lands_its_writes_once(tmp_path):
    from rollout.errors import Interrupted
    from rollout.ledger_postgres import PostgresLedger

    with fresh_database() as url:
        ledger = PostgresLedger(url, tmp_path)
        entry = ledger.record(new_entry())
        ledger.tolerate_outage()
        drop_connection(url, ledger)
        ledger.event(entry.id, "first")  # the server dropped the session: waits in the backlog
        assert ledger.writes_waiting()
        with commit_gate(url, refuse=False):
            with sigterm_while_committing(url), pytest.raises(Interrupted):
                ledger.event(entry.id, "second")  # gets "first" in first: SIGTERM while that COMMIT waits
        ledger.abandon_open_transaction()  # as the orchestrator does on Interrupted
        ledger.event(entry.id, "third")
        ledger.close()

        assert names_of(url, entry.id) == ["recorded", "first", "third"]
        assert spools_in(tmp_path) == []


def test_a_signal_while_a_transaction_commits_keeps_its_writes_when_that_commit_failed(tmp_path):
    import psycopg

    from rollout.errors import Interrupted
    from rollout.ledger_postgres import PostgresLedger

    with fresh_database() as url:
        ledger = PostgresLedger(url, tmp_path)
        entry = ledger.record(new_entry())
        ledger.tolerate_outage()
        with commit_gate(url, refuse=True) as gate:
            with sigterm_while_committing(url), pytest.raises(Interrupted):
                ledger.event(entry.id, "first")
            ledger.abandon_open_transaction()
            gate.execute("SELECT pg_advisory_unlock_all()")
            deadline = time.monotonic() + STEP_TIMEOUT
            while committing(url) and time.monotonic() < deadline:
                time.sleep(0.02)  # the server ends that COMMIT: refused, rolled back
            assert not committing(url)
            gate.execute("UPDATE commit_gate SET refuse = false")
        ledger.event(entry.id, "second")
        ledger.close()

        assert names_of(url, entry.id) == ["recorded", "first", "second"]
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM events WHERE event = 'first'").fetchone() == (1,)


def spools_in(state: Path) -> list[Path]:
    return sorted(state.glob("ledger-spool-*.jsonl"))


def test_a_spooled_record_the_ledger_has_already_counts_as_committed(tmp_path):
    from dataclasses import asdict

    from rollout.ledger_postgres import PostgresLedger
    from rollout.ledger_spool import Spool, spool_path
    from rollout.ledger_url import redact

    with fresh_database() as url:
        first = PostgresLedger(url)
        with first.transaction():
            entry = first.record(new_entry())
            first.event(entry.id, "noted")
        first.close()
        # What a writer spools when its COMMIT landed but no transaction id was kept to check it:
        # the record (under the id it took from the sequence) and its event, then a later write.
        line = {"v": 1, "writer": "w1", "unless_committed": [], "at": now_iso()}
        Spool(spool_path(tmp_path, redact(url))).append([
            {**line, "seq": 1, "txn": 1, "op": "record", "args": {**asdict(new_entry()), "id": entry.id}},
            {**line, "seq": 2, "txn": 1, "op": "event", "args": {"entry_id": entry.id, "event": "noted", "detail": {}}},
            {**line, "seq": 3, "txn": 2, "op": "set_status",
             "args": {"entry_id": entry.id, "status": "applying", "error": None}},
        ])

        second = PostgresLedger(url, tmp_path)
        assert second.get(entry.id).status == "applying"
        second.close()

        assert names_of(url, entry.id) == ["recorded", "noted", "status:applying"]
        assert spools_in(tmp_path) == []


def test_an_error_without_sqlstate_on_a_live_connection_rolls_the_block_back(tmp_path, monkeypatch):
    import psycopg

    from rollout import ledger_postgres as LP

    with fresh_database() as url:
        ledger = LP.PostgresLedger(url, tmp_path)
        entry = ledger.record(new_entry())
        ledger.tolerate_outage()
        write_event, failed = LP._WRITES["event"], []

        def once_without_sqlstate(conn: Any, args: dict[str, Any], at: str | None) -> Any:
            if args["event"] == "b" and not failed:
                failed.append(args)
                # What libpq reports on its own side (no SQLSTATE), the connection staying alive.
                raise psycopg.OperationalError("consuming input failed")
            return write_event(conn, args, at)

        monkeypatch.setitem(LP._WRITES, "event", once_without_sqlstate)
        with ledger.transaction():
            ledger.event(entry.id, "a")
            ledger.event(entry.id, "b")  # taken for a lost server: the block's writes wait
        assert failed and not ledger.conn.broken
        ledger.event(entry.id, "c")
        ledger.close()

        assert names_of(url, entry.id) == ["recorded", "a", "b", "c"]


def test_ledger_dump_after_the_connection_was_lost_reconnects_or_says_unreachable():
    from rollout.errors import LedgerUnreachable
    from rollout.ledger_postgres import PostgresLedger

    with fresh_database() as url:
        ledger = PostgresLedger(url)
        entry = ledger.record(new_entry())
        drop_connection(url, ledger)
        with pytest.raises(LedgerUnreachable) as lost:
            list(ledger.dump())
        assert lost.value.exit_code == 5 and PASSWORD not in str(lost.value)
        # Noticed: the next dump connects again.
        assert [row["id"] for table, row in ledger.dump() if table == "entries"] == [entry.id]
        ledger.close()


# -- a network partition: packets dropped, no reset ----------------------------------------------------

@contextmanager
def packets_dropped(port: int) -> Iterator[None]:
    """Drop every TCP packet to `port` on the loopback interface (iptables) for the block; only that rule
    is removed afterwards."""
    import os
    import shutil

    from support.bed import need

    need(shutil.which("iptables") is not None and os.geteuid() == 0, "iptables and root (to drop packets)")
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP"]
    subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True, capture_output=True, timeout=30)


def test_a_partition_mid_verify_does_not_hang_the_deploy_and_its_outcome_reaches_the_ledger(outage):
    from rollout.ledger_outage import RETRY_SECONDS

    cluster, project = outage
    first = deploy_first(project)
    process = project.start("deploy", "web:good2")
    stderr = Stderr(process)
    entry = wait_for_status(cluster, process, first, "verifying")
    with packets_dropped(cluster.port):
        dropped = time.monotonic()
        # libpq's tcp_user_timeout ends a write that gets no acknowledgement; every reconnection then
        # times out; the rest waits out the retry budget and goes to the spool.
        code, lines = stderr.finish(timeout=RETRY_SECONDS + 60)
        took = time.monotonic() - dropped
        # The admin connection is the socket dir's: the partition is TCP's only.
        assert rows(cluster, "SELECT status FROM entries WHERE id = %s", (entry,)) == [("verifying",)]

    assert code == 0, "\n".join(lines)
    assert took < RETRY_SECONDS + 30, f"the deploy took {took:.0f} s after the partition"
    assert project.version() == "good2"
    assert len(spools(project)) == 1
    history = project.json("history", "--json")
    assert history[0]["id"] == entry and history[0]["status"] == "healthy"
    assert rows(cluster, "SELECT status FROM entries WHERE id = %s", (entry,)) == [("healthy",)]
    assert rows(cluster, "SELECT outcome FROM targets WHERE entry_id = %s", (entry,)) == [("healthy",)]
    assert rows(cluster, "SELECT app FROM locks") == []
    assert spools(project) == []
