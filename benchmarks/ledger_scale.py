"""B5 ledger scale: rollout stays instant as the ledger grows.

A ledger is filled with plain SQLite INSERTs shaped like real deploys (one entry,
one target row and the six events a healthy deploy writes), through the real
schema and its triggers. Then `rollout history APP -n 20` and `rollout status APP
--json` run as whole processes against it, alternating with the same commands on
an empty ledger (the baseline: what the size costs). Ledger.record latency is
measured in-process on both, and the file size gives bytes per entry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from benchmarks.common import (APP_IMAGE, ROLLOUT, Comparison, ScenarioFailed, ScenarioResult, Settings, alternate,
                               docker, docker_app_toml, percentile, remove_containers, require_docker, require_test_images,
                               rollout_env, run)
from rollout.ledger import Ledger, NewEntry

CONTAINER = "bench-b5-app"
QUERIED_APP = "app-000"
CHUNK = 20_000
COMMAND_TARGET = "<= 0.3 s"


def ledger_scale(settings: Settings, result: ScenarioResult) -> None:
    require_docker()
    require_test_images("good1")
    root = settings.workdir / "b5"
    big, empty = root / "big", root / "empty"
    for directory in (big, empty):
        directory.mkdir(parents=True)
        write_config(directory)
    remove_containers(CONTAINER)
    try:
        # A container that exists, so `status` inspects a real target as it would in use.
        docker("run", "-d", "--name", CONTAINER, "--network", "none", f"{APP_IMAGE}:good1")
        started = time.perf_counter()
        fill(big / "state" / "ledger.db", settings.ledger_entries, settings.ledger_apps)
        result.metrics["fill_seconds"] = round(time.perf_counter() - started, 1)
        Ledger(empty / "state" / "ledger.db").close()
        entries, size = ledger_size(big / "state" / "ledger.db")
        result.metrics.update(entries=entries, apps=settings.ledger_apps, bytes_per_entry=round(size / entries),
                              ledger_mb=round(size / 1e6, 1))
        time_commands(settings, result, big, empty)
        time_inserts(settings, result, big, empty)
    finally:
        remove_containers(CONTAINER)


def write_config(directory: Path) -> None:
    (directory / "rollout.toml").write_text(docker_app_toml(QUERIED_APP, APP_IMAGE, CONTAINER))


def time_commands(settings: Settings, result: ScenarioResult, big: Path, empty: Path) -> None:
    commands = {
        "rollout history APP -n 20": ["history", QUERIED_APP, "-n", "20"],
        "rollout status APP --json": ["status", QUERIED_APP, "--json"],
    }
    label = f"{settings.ledger_entries:,} entries"
    for name, args in commands.items():
        comparison = Comparison(name, label, "empty ledger", target=COMMAND_TARGET)

        def timed_in(directory: Path, _index: int, args: list[str] = args) -> float:
            started = time.perf_counter()
            done = run([ROLLOUT, *args], env=rollout_env(directory / "rollout.toml"), cwd=directory, timeout=120,
                       what=f"rollout {args[0]}")
            elapsed = time.perf_counter() - started
            if args[0] == "status":
                check_status(done.stdout, directory == big)
            return elapsed

        for directory in (big, empty):  # warm the page cache untimed, as on a server that runs rollout daily
            timed_in(directory, -1)
        alternate(settings.runs, lambda i: timed_in(empty, i), lambda i: timed_in(big, i), comparison)
        result.comparisons.append(comparison)


def check_status(stdout: str, expect_entry: bool) -> None:
    try:
        report = json.loads(stdout)
    except ValueError:
        raise ScenarioFailed(f"rollout status --json printed no JSON: {stdout[:200]!r}") from None
    if (report.get("current") is not None) != expect_entry or not report.get("targets"):
        raise ScenarioFailed(f"rollout status --json did not report what the ledger holds: {stdout[:300]!r}")


def time_inserts(settings: Settings, result: ScenarioResult, big: Path, empty: Path) -> None:
    count = 200 if settings.quick else 1000
    samples: dict[Path, list[float]] = {}
    for directory in (empty, big):
        ledger = Ledger(directory / "state" / "ledger.db")
        try:
            samples[directory] = [record_once(ledger, index) * 1000 for index in range(count)]
        finally:
            ledger.close()
    comparison = Comparison("Ledger.record latency", f"{settings.ledger_entries:,} entries", "empty ledger",
                            samples[big], samples[empty], "ms", "p99 <= 5 ms")
    result.comparisons.append(comparison)
    result.metrics.update(
        insert_p50_ms=round(percentile(samples[big], 0.50), 3), insert_p99_ms=round(percentile(samples[big], 0.99), 3),
        insert_p99_ms_empty=round(percentile(samples[empty], 0.99), 3), inserts_timed=count,
    )


def record_once(ledger: Ledger, index: int) -> float:
    digest = "sha256:" + hashlib.sha256(f"insert-{index}".encode()).hexdigest()
    started = time.perf_counter()
    ledger.record(NewEntry(app="bench-insert", repository=APP_IMAGE, tag=f"9.{index}", digest=digest))
    return time.perf_counter() - started


def fill(path: Path, entries: int, apps: int) -> None:
    """Append `entries` finished deploys, spread round-robin over `apps`, with plain INSERTs."""
    Ledger(path).close()  # the real schema, indexes and triggers
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        for first in range(0, entries, CHUNK):
            entry_rows, target_rows, event_rows = [], [], []
            for number in range(first, min(entries, first + CHUNK)):
                entry, target, events = shaped_like_a_deploy(number + 1, apps)
                entry_rows.append(entry)
                target_rows.append(target)
                event_rows.extend(events)
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
