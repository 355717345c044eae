"""B5 ledger scale: rollout stays instant as the ledger grows, on SQLite and on PostgreSQL.

Both backends get the same rows shaped like real deploys (one entry, one target row and
the six events a healthy deploy writes; one release in ten failed) through the real schema
and its triggers: SQLite through plain INSERTs, PostgreSQL through COPY into a fresh
database on the test bed's server (benchmarks.postgres). Then `rollout history APP -n 20`
and `rollout status APP --json` run as whole processes, rotating among four sides: the big
and an empty ledger of each backend. Big vs empty is what the size costs; PostgreSQL vs
SQLite at the same size is what the server costs (psycopg's import and a login with
SCRAM are most of it: `pg_*` metrics). The writes of one deploy (record, the status and
target writes, the write guard's check) are timed in-process through each backend while
holding the app's lease with the write guard on, as `rollout deploy` does them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import queue
import sqlite3
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from benchmarks import postgres
from benchmarks.common import (APP_IMAGE, ROLLOUT, Comparison, ScenarioFailed, ScenarioResult, Settings,
                               docker, docker_app_toml, percentile, remove_containers, require_docker, require_test_images,
                               rollout_env, run)
from benchmarks.docker_host import rotate
from rollout import lock
from rollout.ledger import HEALTHY, Ledger, LedgerBackend, NewEntry, open_ledger

CONTAINER = "bench-b5-app"
QUERIED_APP = "app-000"
INSERT_APP = "bench-insert"
CHUNK = 20_000
COMMAND_TARGET = "<= 0.3 s"
WRITE_TARGETS = {"SQLite": "p99 <= 5 ms", "PostgreSQL": "p99 <= 10 ms"}


@dataclass
class Side:
    """One ledger the commands run against: a config directory, plus the URL of a PostgreSQL ledger."""

    backend: str  # SQLite | PostgreSQL
    big: bool
    directory: Path
    url: str | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)

    def label(self, entries: int) -> str:
        return f"{self.backend}, {entries:,} entries" if self.big else f"{self.backend}, empty ledger"

    def env(self) -> dict[str, str]:
        extra = {"ROLLOUT_LEDGER_URL": self.url} if self.url else {}
        return rollout_env(self.directory / "rollout.toml", **extra)

    def ledger(self) -> LedgerBackend:
        return open_ledger(self.url or str(self.directory / "state" / "ledger.db"))


def ledger_scale(settings: Settings, result: ScenarioResult) -> None:
    require_docker()
    require_test_images("good1")
    postgres.require_server()
    root = settings.workdir / "b5"
    remove_containers(CONTAINER)
    with postgres.fresh_databases(2) as (big_url, empty_url):
        sides = [Side("SQLite", True, root / "sqlite-big"), Side("SQLite", False, root / "sqlite-empty"),
                 Side("PostgreSQL", True, root / "pg-big", big_url), Side("PostgreSQL", False, root / "pg-empty", empty_url)]
        for side in sides:
            side.directory.mkdir(parents=True)
            write_config(side.directory)
            side.ledger().close()  # the real schema, indexes and triggers
        try:
            # A container that exists, so `status` inspects a real target as it would in use.
            docker("run", "-d", "--name", CONTAINER, "--network", "none", f"{APP_IMAGE}:good1")
            # Timings on a shared machine: the load says how much of a p99 is other work's.
            result.metrics["load_avg_1m_start"] = round(os.getloadavg()[0], 2)
            fill_both(settings, result, sides[0], sides[2])
            time_commands(settings, result, sides)
            time_writes(settings, result, sides)
            explain_queries(result, big_url)
            result.metrics.update({f"pg_{k}": v for k, v in postgres.server_settings(big_url).items()})
            result.metrics.update(pg_cost_breakdown(settings, big_url))
            result.metrics["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
        finally:
            remove_containers(CONTAINER)


def write_config(directory: Path) -> None:
    (directory / "rollout.toml").write_text(docker_app_toml(QUERIED_APP, APP_IMAGE, CONTAINER))


def fill_both(settings: Settings, result: ScenarioResult, sqlite_side: Side, pg_side: Side) -> None:
    """The same deploys into both big ledgers at once: generated once, inserted and COPYed on two threads."""
    entries, apps = settings.ledger_entries, settings.ledger_apps
    path = sqlite_side.directory / "state" / "ledger.db"
    assert pg_side.url is not None
    url = pg_side.url
    started = time.perf_counter()
    fan_out(deploy_chunks(entries, apps), [lambda chunks: fill(path, chunks),
                                           lambda chunks: postgres.copy_deploys(url, chunks)])
    result.metrics["fill_seconds"] = round(time.perf_counter() - started, 1)
    count, size = ledger_size(path)
    pg_count = postgres.query(url, "SELECT count(*) FROM entries")[0][0]
    if pg_count != count:
        raise ScenarioFailed(f"the PostgreSQL ledger holds {pg_count} entries after the load, the SQLite one {count}")
    pg_size = postgres.size_bytes(url)
    result.metrics.update(entries=count, apps=apps, sqlite_bytes_per_entry=round(size / count),
                          sqlite_ledger_mb=round(size / 1e6, 1), pg_bytes_per_entry=round(pg_size / count),
                          pg_database_mb=round(pg_size / 1e6, 1))


def fan_out(items: Iterator[Any], consumers: list[Callable[[Iterator[Any]], None]]) -> None:
    """Hand every item to each consumer, each on its own thread (a small queue each); re-raise the first error.

    sqlite3 and psycopg release the GIL while the database works, so the two loads overlap.
    A consumer that fails keeps draining its queue, so the producer never blocks on it.
    """
    done = object()
    queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=2) for _ in consumers]
    errors: list[BaseException] = []

    def drain(q: queue.Queue[Any]) -> Iterator[Any]:
        while (item := q.get()) is not done:
            yield item

    def consume(consumer: Callable[[Iterator[Any]], None], q: queue.Queue[Any]) -> None:
        try:
            consumer(drain(q))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors.append(exc)
            for _ in drain(q):
                pass

    threads = [threading.Thread(target=consume, args=(c, q), daemon=True) for c, q in zip(consumers, queues)]
    for thread in threads:
        thread.start()
    try:
        for item in items:
            for q in queues:
                q.put(item)
    finally:
        for q in queues:
            q.put(done)
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]


def time_commands(settings: Settings, result: ScenarioResult, sides: list[Side]) -> None:
    commands = {
        "rollout history APP -n 20": ["history", QUERIED_APP, "-n", "20"],
        "rollout status APP --json": ["status", QUERIED_APP, "--json"],
    }
    entries = settings.ledger_entries
    for name, args in commands.items():

        def timed_in(side: Side, args: list[str] = args) -> Callable[[int], float]:
            def once(_index: int) -> float:
                started = time.perf_counter()
                done = run([ROLLOUT, *args], env=side.env(), cwd=side.directory, timeout=120,
                           what=f"rollout {args[0]} ({side.label(entries)})")
                elapsed = time.perf_counter() - started
                if args[0] == "status":
                    check_status(done.stdout, side.big)
                else:
                    check_history(done.stdout, side.big)
                return elapsed
            return once

        for side in sides:  # warm the page cache untimed, as on a server that runs rollout daily
            timed_in(side)(-1)
        samples = rotate(settings.runs, {side.label(entries): timed_in(side) for side in sides})
        sqlite_big, sqlite_empty, pg_big, pg_empty = (samples[side.label(entries)] for side in sides)
        labels = [side.label(entries) for side in sides]
        result.comparisons += [
            Comparison(name, labels[0], labels[1], sqlite_big, sqlite_empty, target=COMMAND_TARGET),
            Comparison(name, labels[2], labels[3], pg_big, pg_empty, target=COMMAND_TARGET),
            Comparison(name, labels[2], labels[0], pg_big, sqlite_big),
        ]


def check_status(stdout: str, expect_entry: bool) -> None:
    try:
        report = json.loads(stdout)
    except ValueError:
        raise ScenarioFailed(f"rollout status --json printed no JSON: {stdout[:200]!r}") from None
    if (report.get("current") is not None) != expect_entry or not report.get("targets"):
        raise ScenarioFailed(f"rollout status --json did not report what the ledger holds: {stdout[:300]!r}")


def check_history(stdout: str, expect_entries: bool) -> None:
    rows = [line for line in stdout.splitlines()[1:] if line.strip()]  # under the header
    if len(rows) != (20 if expect_entries else 0):
        raise ScenarioFailed(f"rollout history -n 20 printed {len(rows)} entries: {stdout[:300]!r}")


def time_writes(settings: Settings, result: ScenarioResult, sides: list[Side]) -> None:
    """Per backend: the latency of each ledger write of `count` deploys, on the big and the empty ledger."""
    count = 200 if settings.quick else 1000
    entries = settings.ledger_entries
    writes: dict[str, list[float]] = {}
    per_deploy: dict[str, list[float]] = {}
    records: dict[str, list[float]] = {}
    for side in sides:
        label = side.label(entries)
        writes[label], per_deploy[label], records[label] = [], [], []
        ledger = side.ledger()
        try:
            with lock.held(ledger, INSERT_APP):
                for index in range(count):
                    timings = deploy_writes(ledger, index)
                    writes[label] += [ms for _, ms in timings]
                    per_deploy[label].append(sum(ms for _, ms in timings))
                    records[label] += [ms for op, ms in timings if op == "record"]
        finally:
            ledger.close()
    for backend in ("SQLite", "PostgreSQL"):
        big, empty = (s.label(entries) for s in sides if s.backend == backend)
        result.comparisons.append(Comparison(
            "ledger write of a deploy (record, status, target, guard check), each", big, empty,
            writes[big], writes[empty], "ms", WRITE_TARGETS[backend]))
        key = "sqlite" if backend == "SQLite" else "pg"
        result.metrics.update({
            f"{key}_write_p50_ms": round(percentile(writes[big], 0.50), 3),
            f"{key}_write_p99_ms": round(percentile(writes[big], 0.99), 3),
            f"{key}_record_p99_ms": round(percentile(records[big], 0.99), 3),
            f"{key}_deploy_writes_p99_ms": round(percentile(per_deploy[big], 0.99), 3),
            f"{key}_write_p99_ms_empty": round(percentile(writes[empty], 0.99), 3),
        })
    result.metrics["deploys_timed"] = count


def deploy_writes(ledger: LedgerBackend, index: int) -> list[tuple[str, float]]:
    """The ledger calls of one healthy single-target deploy, in the orchestrator's order; (call, ms) each."""
    digest = "sha256:" + hashlib.sha256(f"insert-{index}".encode()).hexdigest()
    image = f"{APP_IMAGE}@{digest}"
    timings: list[tuple[str, float]] = []

    def timed(name: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = call()
        timings.append((name, (time.perf_counter() - started) * 1000))
        return value

    entry = timed("record", lambda: ledger.record(NewEntry(app=INSERT_APP, repository=APP_IMAGE, tag=f"9.{index}",
                                                           digest=digest)))
    timed("status", lambda: ledger.set_status(entry.id, "applying"))
    timed("guard", ledger.check_guard)
    timed("target", lambda: ledger.set_target(entry.id, "local", outcome="applied", image_before=None, image_after=image))
    timed("status", lambda: ledger.set_status(entry.id, "verifying"))
    timed("target", lambda: ledger.set_target(entry.id, "local", outcome="healthy", detail="running after 0.0s"))
    timed("status", lambda: ledger.set_status(entry.id, HEALTHY))
    return timings


def explain_queries(result: ScenarioResult, url: str) -> None:
    """EXPLAIN ANALYZE of the queries history and status send, on the big PostgreSQL ledger (ms, plan)."""
    queries = {
        "history": ("SELECT * FROM entries WHERE app = %s ORDER BY id DESC LIMIT %s", [QUERIED_APP, 20]),
        "current": ("SELECT * FROM entries WHERE app = %s AND status = 'healthy' ORDER BY id DESC LIMIT 1",
                    [QUERIED_APP]),
        "unfinished": ("SELECT * FROM entries WHERE status IN ('pending', 'applying', 'verifying') AND app = %s"
                       " ORDER BY id", [QUERIED_APP]),
    }
    for name, (sql, params) in queries.items():
        ms, plan = postgres.explain(url, sql, params)
        result.metrics[f"pg_explain_{name}_ms"] = ms
        result.metrics[f"pg_explain_{name}_plan"] = plan


def pg_cost_breakdown(settings: Settings, url: str) -> dict[str, float]:
    """Where a whole process's extra time on PostgreSQL goes, in seconds (medians): psycopg's import
    (`python -c 'import psycopg'` minus `python -c pass`, whole processes, the interpreter and venv
    rollout runs on) and one login (psycopg.connect + close as the `rollout` role, SCRAM over TCP,
    in this process)."""
    import psycopg

    runs = max(5, settings.runs)
    imports: dict[str, list[float]] = {"pass": [], "import psycopg": []}
    for _ in range(runs):
        for script, samples in imports.items():
            started = time.perf_counter()
            run([sys.executable, "-c", script], timeout=60, what=f"python -c {script!r}")
            samples.append(time.perf_counter() - started)
    logins = []
    for _ in range(runs):
        started = time.perf_counter()
        psycopg.connect(url).close()
        logins.append(time.perf_counter() - started)
    return {"pg_psycopg_import_s": round(statistics.median(imports["import psycopg"])
                                         - statistics.median(imports["pass"]), 3),
            "pg_login_s": round(statistics.median(logins), 4)}


def fill(path: Path, chunks: Iterable[tuple[list[tuple], list[tuple], list[tuple]]]) -> None:
    """Append the deploys of `chunks` (deploy_chunks) to the SQLite ledger at `path`, with plain INSERTs."""
    Ledger(path).close()  # the real schema, indexes and triggers
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        for entry_rows, target_rows, event_rows in chunks:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO entries (id, app, repository, tag, digest, kind, status, previous_id, reverts_to, actor,"
                " reason, created_at, finished_at, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, NULL, ?, ?, ?)",
                entry_rows)
            conn.executemany(
                "INSERT INTO targets (entry_id, target, image_before, image_after, outcome, detail, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)", target_rows)
            conn.executemany("INSERT INTO events (entry_id, at, event, detail) VALUES (?, ?, ?, ?)", event_rows)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def deploy_chunks(entries: int, apps: int) -> Iterator[tuple[list[tuple], list[tuple], list[tuple]]]:
    """(entry rows, target rows, event rows) of `entries` deploys, CHUNK entries at a time, ids from 1."""
    for first in range(0, entries, CHUNK):
        entry_rows, target_rows, event_rows = [], [], []
        for number in range(first, min(entries, first + CHUNK)):
            entry, target, events = shaped_like_a_deploy(number + 1, apps)
            entry_rows.append(entry)
            target_rows.append(target)
            event_rows.extend(events)
        yield entry_rows, target_rows, event_rows


EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def shaped_like_a_deploy(entry_id: int, apps: int) -> tuple[tuple, tuple, Iterator[tuple]]:
    app_number = (entry_id - 1) % apps
    app = f"app-{app_number:03d}"
    repository = f"127.0.0.1:5000/bench/{app}"
    digest = "sha256:" + hashlib.sha256(str(entry_id).encode()).hexdigest()
    previous = entry_id - apps if entry_id > apps else None
    before = f"{repository}@sha256:{hashlib.sha256(str(previous).encode()).hexdigest()}" if previous else None
    failed = entry_id % 10 == 0  # one release in ten fails, like the ones rollout exists for
    status = "failed" if failed else "healthy"
    error = "local: container exited with code 1" if failed else None
    created = EPOCH + dt.timedelta(seconds=entry_id * 30)
    stamps = [(created + dt.timedelta(milliseconds=ms)).isoformat(timespec="microseconds") for ms in (0, 1, 380, 381, 395, 396)]
    tag = f"1.{entry_id // 1000}.{entry_id % 1000}"
    entry = (entry_id, app, repository, tag, digest, "deploy", status, previous, "deploy@ci-runner", stamps[0], stamps[5], error)
    detail = "container exited with code 1 after 0.0s" if failed else "running, http 200 after 0.0s"
    target = (entry_id, "local", before, f"{repository}@{digest}", status, detail, stamps[4])
    events = (
        (entry_id, stamps[0], "recorded", json.dumps({"digest": digest, "kind": "deploy", "tag": tag}, sort_keys=True)),
        (entry_id, stamps[1], "status:applying", "{}"),
        (entry_id, stamps[2], "target:applied", json.dumps({"detail": None, "target": "local"}, sort_keys=True)),
        (entry_id, stamps[3], "status:verifying", "{}"),
        (entry_id, stamps[4], f"target:{status}", json.dumps({"detail": detail, "target": "local"}, sort_keys=True)),
        (entry_id, stamps[5], f"status:{status}", json.dumps({"error": error}) if error else "{}"),
    )
    return entry, target, iter(events)


def ledger_size(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(path)
    try:
        entries = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    finally:
        conn.close()
    if entries == 0:
        raise ScenarioFailed(f"the generated ledger {path} holds no entries")
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return entries, size
