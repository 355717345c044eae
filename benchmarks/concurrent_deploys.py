"""B11 concurrent deploys on one PostgreSQL ledger, from two simulated runners.

Two runners share one PostgreSQL ledger (a fresh database on the test bed's server) and
one Docker engine; each has its own directory with the same rollout.toml, as two CI
checkouts would. A runner is told apart by its host name: each `rollout deploy` runs under
`unshare --uts` with the host name `runner-a` or `runner-b` set inside, so the lease and the
entry's actor carry that name (socket.gethostname(), as on another machine). Pids stay real.

Per run, the baseline is N deploys of one app started at once, alternately from each
runner, all with `--wait`: they must serialise. Checked from the ledger's events, not from
timings: every entry's [status:applying, status:<finished>] interval is disjoint from every
other of the same app, every deploy is healthy, each runner's entries carry its host name,
and a poller that reads the `locks` table every 10 ms saw each process hold the lease under
its own runner's host. Then the same with two apps (N deploys each, 2N processes at once):
each app still serialises, the apps overlap, and the wall time over the one-app wall time
is the ratio (1 = the second app costs nothing; 2 = the apps serialised too).
"""

from __future__ import annotations

import getpass
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import postgres
from benchmarks.common import (APP_IMAGE, ROLLOUT, Comparison, ScenarioFailed, ScenarioResult, Settings, alternate,
                               docker, docker_app_toml, iso_time, remove_containers, require_docker,
                               require_test_images, rollout_env, run)
from tests.support.ports import free_port

PREFIX = "bench-b11-"
APPS = ("b11-one", "b11-two")
RUNNERS = ("runner-a", "runner-b")
TAGS = ("good1", "good2", "good3")
FINISHED_EVENTS = ("status:healthy", "status:failed", "status:interrupted")
WAIT_SECONDS = 600
POLL_SECONDS = 0.01
# `hostname` inside a new UTS namespace changes only that namespace's name; exec keeps the pid.
# --force: the deploys alternate tags, but one may find its tag already running (the other
# runner's got in first), and an idempotent deploy would then record nothing (issue 17.2).
AS_RUNNER = 'hostname "$1" && exec "$2" deploy "$3" --force --wait "$4"'


@dataclass
class Launched:
    """One `rollout deploy` process: which runner started it, for which app and tag."""

    runner: str
    app: str
    tag: str
    process: subprocess.Popen[str]


@dataclass
class LeaseWatch:
    """Reads the `locks` table every POLL_SECONDS: each (app, host, pid, holder) seen holding a lease."""

    url: str
    apps: tuple[str, ...]
    seen: set[tuple[str, str, int, str]] = field(default_factory=set)
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "LeaseWatch":
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self._stop.is_set():
                    rows = conn.execute("SELECT app, host, pid, holder FROM locks WHERE app = ANY(%s)",
                                        [list(self.apps)]).fetchall()
                    self.seen.update(rows)
                    self._stop.wait(POLL_SECONDS)
        except psycopg.Error as exc:
            self.error = str(exc).strip().splitlines()[0]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self.error:
            raise ScenarioFailed(f"the lease poller lost the ledger: {self.error}")


def concurrent_deploys(settings: Settings, result: ScenarioResult) -> None:
    require_docker()
    require_test_images(*TAGS)
    require_unshare()
    for tag in TAGS:  # pulled once, so the runs time rollout and the lease, not the registry
        docker("pull", "-q", f"{APP_IMAGE}:{tag}")
    deploys = 4 if settings.quick else 10
    remove_containers(PREFIX)
    with postgres.fresh_databases(1) as (url,):
        config = "".join(docker_app_toml(app, APP_IMAGE, f"{PREFIX}{app}", host_port=port,
                                         health={"timeout": 60, "interval": 0.1, "stable": 0,
                                                 "http": f"http://127.0.0.1:{port}/health"})
                         for app, port in ((app, free_port()) for app in APPS))
        directories = {}
        for runner in RUNNERS:
            directories[runner] = settings.workdir / "b11" / runner
            directories[runner].mkdir(parents=True)
            (directories[runner] / "rollout.toml").write_text(config)
        try:
            for app in APPS:  # the first deploy creates the container: not what is measured
                seed = launch(directories, url, [(RUNNERS[0], app, TAGS[0])])[0].process
                out, err = seed.communicate(timeout=180)
                if seed.returncode != 0:
                    raise ScenarioFailed(f"the first deploy of {app} exited {seed.returncode}:"
                                         f" {(err.strip() or out.strip()).splitlines()[-1:]}")
            one_app = Comparison(f"wall time of {deploys} concurrent deploys per app, 2 runners, one PostgreSQL ledger",
                                 f"2 apps x {deploys}", f"1 app x {deploys}", target="ratio ~ 1 (apps in parallel)")
            checked: dict[str, Any] = {"deploys_checked": 0, "leases_seen": 0, "handover_gaps_s": [],
                                       "to_recorded_s": []}

            def side(apps: tuple[str, ...]) -> float:
                wall, stats = deploy_at_once(directories, url, apps, deploys)
                checked["deploys_checked"] += stats["deploys"]
                checked["leases_seen"] += stats["leases"]
                checked["handover_gaps_s"] += stats["gaps"]
                checked["to_recorded_s"] += stats["to_recorded"]
                if len(apps) > 1:
                    checked.setdefault("apps_overlap_s", []).append(stats["overlap"])
                return wall

            alternate(settings.runs, lambda _i: side(APPS[:1]), lambda _i: side(APPS), one_app)
            result.comparisons.append(one_app)
            gaps = sorted(checked.pop("handover_gaps_s"))
            to_recorded = sorted(checked.pop("to_recorded_s"))
            result.metrics.update(
                deploys_per_app=deploys, runners=len(RUNNERS), **checked,
                handover_gap_median_s=round(gaps[len(gaps) // 2], 3) if gaps else None,
                handover_gap_max_s=round(gaps[-1], 3) if gaps else None,
                handover_until_recorded_median_s=round(to_recorded[len(to_recorded) // 2], 3) if to_recorded else None,
                load_avg_1m=round(os.getloadavg()[0], 2),
            )
        finally:
            remove_containers(PREFIX)


def require_unshare() -> None:
    """A runner is a UTS namespace with its own host name: needs root (or CAP_SYS_ADMIN) and util-linux."""
    done = run(["unshare", "--uts", "sh", "-c", "hostname runner-probe && hostname"], timeout=30,
               expect=tuple(range(256)), what="unshare --uts")
    if done.returncode != 0 or done.stdout.strip() != "runner-probe":
        raise ScenarioFailed("cannot give a process its own host name (`unshare --uts`, as root):"
                             f" {(done.stderr or done.stdout).strip()[:200]}")


def launch(directories: dict[str, Path], url: str, plan: list[tuple[str, str, str]]) -> list[Launched]:
    """Start one `rollout deploy APP:TAG --wait` per (runner, app, tag), each in its runner's UTS namespace."""
    started = []
    for runner, app, tag in plan:
        directory = directories[runner]
        process = subprocess.Popen(
            ["unshare", "--uts", "sh", "-c", AS_RUNNER, "sh", runner, ROLLOUT, f"{app}:{tag}", str(WAIT_SECONDS)],
            env=rollout_env(directory / "rollout.toml", ROLLOUT_LEDGER_URL=url), cwd=directory, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(Launched(runner, app, tag, process))
    return started


def deploy_at_once(directories: dict[str, Path], url: str, apps: tuple[str, ...],
                   deploys: int) -> tuple[float, dict[str, Any]]:
    """Start `deploys` deploys of each app at once, alternating runners; the wall time (s) and what was checked."""
    first_id = postgres.query(url, "SELECT COALESCE(max(id), 0) FROM entries")[0][0]
    plan = [(RUNNERS[i % len(RUNNERS)], app, TAGS[(i + 1) % len(TAGS)]) for i in range(deploys) for app in apps]
    watch = LeaseWatch(url, apps).start()
    started = time.perf_counter()
    processes = launch(directories, url, plan)
    failures = []
    for launched in processes:
        try:
            out, err = launched.process.communicate(timeout=WAIT_SECONDS + 120)
        except subprocess.TimeoutExpired:
            launched.process.kill()
            out, err = launched.process.communicate()
        if launched.process.returncode != 0:
            tail = " | ".join((err.strip() or out.strip()).splitlines()[-2:])
            failures.append(f"{launched.runner} {launched.app}:{launched.tag} exited {launched.process.returncode}: {tail}")
    wall = time.perf_counter() - started
    watch.stop()
    if failures:
        raise ScenarioFailed(f"{len(failures)} of {len(processes)} deploys failed; first: {failures[0]}")
    return wall, check_ledger(url, first_id, processes, watch.seen)


def check_ledger(url: str, first_id: int, processes: list[Launched],
                 seen: set[tuple[str, str, int, str]]) -> dict[str, Any]:
    """What the ledger and the lease poller must show after the processes ended; raises ScenarioFailed otherwise."""
    rows = postgres.query(
        url,
        "SELECT e.id, e.app, e.actor, e.status,"
        " (SELECT at FROM events v WHERE v.entry_id = e.id AND v.event = 'status:applying' ORDER BY v.id LIMIT 1),"
        " (SELECT at FROM events v WHERE v.entry_id = e.id AND v.event = ANY(%s) ORDER BY v.id LIMIT 1),"
        " e.created_at"
        " FROM entries e WHERE e.id > %s ORDER BY e.id", [list(FINISHED_EVENTS), first_id])
    apps = sorted({p.app for p in processes})
    if len(rows) != len(processes) or any(row[3] != "healthy" or row[4] is None or row[5] is None for row in rows):
        raise ScenarioFailed(f"{len(processes)} deploys left {len(rows)} entries, not all healthy with both events:"
                             f" {[(r[0], r[1], r[3]) for r in rows if r[3] != 'healthy'][:5]}")
    user = getpass.getuser()
    for runner in RUNNERS:
        for app in apps:
            launched = sum(1 for p in processes if p.runner == runner and p.app == app)
            recorded = sum(1 for r in rows if r[1] == app and r[2] == f"{user}@{runner}")
            if recorded != launched:
                raise ScenarioFailed(f"{runner} started {launched} deploys of {app}, the ledger has {recorded}"
                                     f" entries by {user}@{runner}")
    intervals = {app: sorted((iso_time(r[4]), iso_time(r[5]), r[0]) for r in rows if r[1] == app) for app in apps}
    recorded = {r[0]: iso_time(r[6]) for r in rows}
    gaps, to_recorded = [], []
    for app, spans in intervals.items():
        for (start, end, entry), (next_start, _next_end, next_entry) in zip(spans, spans[1:]):
            if next_start < end:
                raise ScenarioFailed(f"{app}: entry #{next_entry} started applying {end - next_start:.3f}s before"
                                     f" #{entry} finished: two deploys of one app overlapped")
            gaps.append(next_start - end)
            # Of the hand-over, how much passes before the next holder records its entry (release,
            # the waiter's poll, building the orchestrator, resolving the digest: all under the lease).
            to_recorded.append(recorded[next_entry] - end)
    by_pid = {p.process.pid: p for p in processes}
    for app, host, pid, holder in seen:
        launched = by_pid.get(pid)
        if launched is None or launched.app != app or host != launched.runner or holder != f"{user}@{launched.runner}":
            raise ScenarioFailed(f"the lease on {app} was held by {holder} on {host} (pid {pid}), which is not"
                                 f" {'a deploy this run started' if launched is None else launched.runner}")
    holders = {pid for _app, _host, pid, _holder in seen}
    missed = [p for p in processes if p.process.pid not in holders]
    if missed:
        raise ScenarioFailed(f"{len(missed)} of {len(processes)} deploys were never seen holding the lease"
                             f" (polled every {POLL_SECONDS * 1000:.0f} ms)")
    overlap = 0.0
    if len(apps) == 2:
        overlap = sum(max(0.0, min(a_end, b_end) - max(a_start, b_start))
                      for a_start, a_end, _a in intervals[apps[0]] for b_start, b_end, _b in intervals[apps[1]])
        if overlap <= 0:
            raise ScenarioFailed(f"{apps[0]} and {apps[1]} never deployed at the same time: the apps serialised")
    return {"deploys": len(rows), "leases": len(holders), "gaps": gaps, "to_recorded": to_recorded,
            "overlap": round(overlap, 3)}
