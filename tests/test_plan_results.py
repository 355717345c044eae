"""Issue 17 items 1-5: a plan before acting (`--dry-run`), idempotent deploys, results as data
(`--json`), `rollout show ID` with the failed container's log tail, `rollout --version`.

On the real engine and registry (the dry-run proof goes through the counting registry proxy,
tests/support/proxy.py), and on both ledger backends where a ledger is compared before/after;
the plan's reuse of the orchestrator's decisions (batches, the revert candidate) with in-memory
targets.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any, Iterator

import pytest

from rollout import ledger as L
from rollout.errors import EXIT_OK, EXIT_REVERTED
from rollout.ledger import LedgerBackend, open_ledger
from rollout.orchestrator import Orchestrator
from rollout.reference import parse
from support.cli import run_rollout
from support.fakes import IMAGE, FakeResolver, FakeTarget, RecordingReporter, app_config, crashes, fake_digest, \
    scripted_verifier
from support.images import APP_IMAGE, REGISTRY, digest_of, image_names
from support.project import Project, write_config
from support.proxy import RegistryProxy, start_proxy
from test_compose_target import compose_v2, stack  # noqa: F401 - fixtures of the compose log-tail test
from test_kubernetes_pods import kube  # noqa: F401 - the simulator whose kubelet runs pods on the engine

NAMES = ("h1", "h2", "h3", "h4", "h5")


# -- the plan is the orchestrator's own decisions (in-memory targets) ----------------------------


@pytest.fixture
def memory_ledger(tmp_path: Path) -> Iterator[LedgerBackend]:
    opened = open_ledger(tmp_path / "ledger.db")
    yield opened
    opened.close()


def test_a_plan_shows_the_batches_and_the_revert_the_deploy_then_uses(memory_ledger: LedgerBackend) -> None:
    targets = [FakeTarget(name, behaviours={fake_digest("bad"): crashes()}) for name in NAMES]
    resolver = FakeResolver({"good": fake_digest("good"), "bad": fake_digest("bad")})
    reporter = RecordingReporter()
    orchestrator = Orchestrator(app_config(NAMES, rollout={"strategy": "rolling", "batch_size": 2}), memory_ledger,
                                resolver, targets, scripted_verifier, reporter)  # type: ignore[arg-type]
    first = orchestrator.deploy(parse(f"{IMAGE}:good"))
    assert first.exit_code == EXIT_OK, first.message
    calls_before = [list(t.calls) for t in targets]

    plan = orchestrator.plan_deploy(parse(f"{IMAGE}:bad"))

    assert plan.batches == [["h1", "h2"], ["h3", "h4"], ["h5"]]
    assert plan.on_failure is not None and plan.on_failure.id == first.entry.id
    assert [(t.name, t.current_digest, t.new_digest, t.moves) for t in plan.targets] == [
        (name, fake_digest("good"), fake_digest("bad"), True) for name in NAMES]
    # Nothing recorded, nothing prepared or applied: the plan only read (running()).
    assert [e.id for e in memory_ledger.history("web")] == [first.entry.id]
    for target, before in zip(targets, calls_before):
        assert [c for c in target.calls[len(before):] if c[0] != "running"] == []

    # The deploy then does what the plan said: the first batch moves, fails, and goes back to the plan's entry.
    outcome = orchestrator.deploy(parse(f"{IMAGE}:bad"))
    assert outcome.exit_code == EXIT_REVERTED
    assert outcome.revert is not None and outcome.revert.reverts_to == plan.on_failure.id
    assert [t.name for t in targets if t.applied()[1:2] == [fake_digest("bad")]] == plan.batches[0]
    assert reporter.said("info").count(f"#{outcome.entry.id} batch 1/3: h1, h2") == 1
    assert set(outcome.targets) == {"h1", "h2"} and outcome.targets["h1"]["outcome"] == "failed"
    assert outcome.revert_targets["h1"]["outcome"] == "healthy"
    # The failed targets' log tails are on the failed entry, for `rollout show`.
    tails = [e["detail"] for e in memory_ledger.events(outcome.entry.id) if e["event"] == "log-tail"]
    assert sorted(t["target"] for t in tails) == ["h1", "h2"]
    assert tails[0]["lines"] == [f"{tails[0]['target']}: last words of {fake_digest('bad')}"]


def test_a_plan_of_what_already_runs_moves_nothing_and_force_moves_all(memory_ledger: LedgerBackend) -> None:
    targets = [FakeTarget(name) for name in NAMES[:2]]
    orchestrator = Orchestrator(app_config(NAMES[:2]), memory_ledger, FakeResolver({"good": fake_digest("good")}),
                                targets, scripted_verifier, RecordingReporter())  # type: ignore[arg-type]
    assert orchestrator.deploy(parse(f"{IMAGE}:good")).exit_code == EXIT_OK
    assert orchestrator.plan_deploy(parse(f"{IMAGE}:good")).unchanged
    forced = orchestrator.plan_deploy(parse(f"{IMAGE}:good"), force=True)
    assert forced.batches == [["h1", "h2"]]
    # One target drifted (stopped): only it moves.
    targets[1].halted = True
    drifted = orchestrator.plan_deploy(parse(f"{IMAGE}:good"))
    assert drifted.batches == [["h2"]] and [t.moves for t in drifted.targets] == [False, True]


def test_a_failed_repair_of_a_drifted_target_goes_back_to_nothing_older(memory_ledger: LedgerBackend) -> None:
    """h1, h2 run #2 (good), h2 drifted; the cron deploy of good moves h2 only and it fails there:
    no revert to #1 (old) on h2, #2 stays current, exit 3 naming h2; the plan said so (review P2-1)."""
    from rollout.errors import EXIT_UNRECOVERED

    targets = [FakeTarget(name) for name in NAMES[:2]]
    resolver = FakeResolver({"old": fake_digest("old"), "good": fake_digest("good")})
    orchestrator = Orchestrator(app_config(NAMES[:2]), memory_ledger, resolver, targets, scripted_verifier,
                                RecordingReporter())  # type: ignore[arg-type]
    assert orchestrator.deploy(parse(f"{IMAGE}:old")).exit_code == EXIT_OK
    current = orchestrator.deploy(parse(f"{IMAGE}:good")).entry
    targets[1].halted = True
    targets[1].behaviours[fake_digest("good")] = crashes()
    plan = orchestrator.plan_deploy(parse(f"{IMAGE}:good"))
    assert plan.repair and plan.on_failure is None
    assert any(line.startswith("  on failure: no revert to an older release") for line in plan.lines())

    outcome = orchestrator.deploy(parse(f"{IMAGE}:good"))

    assert outcome.exit_code == EXIT_UNRECOVERED and outcome.revert is None
    assert "failed to bring back h2" in outcome.message and f"#{current.id} stays current" in outcome.message
    assert memory_ledger.current("web").id == current.id
    assert [e.kind for e in memory_ledger.history("web")] == ["deploy", "deploy", "deploy"]
    assert fake_digest("old") not in targets[1].applied()[2:]


# -- the real CLI on the real engine and registry -------------------------------------------------


def rows(project: Project) -> dict[str, list[tuple]]:
    """Every ledger row a command could write (entries, targets, events, locks), in id order."""
    return {"entries": project.ledger_rows("SELECT * FROM entries ORDER BY id"),
            "targets": project.ledger_rows("SELECT * FROM targets ORDER BY id"),
            "events": project.ledger_rows("SELECT * FROM events ORDER BY id"),
            "locks": project.ledger_rows("SELECT * FROM locks")}


def engine_state(docker_client: Any, project: Project, prefix: str) -> dict[str, Any]:
    """`docker inspect` of every container of the project, and the engine's image names under prefix
    (the test's own registry name: other tests pull other names meanwhile)."""
    containers = {c.id: c.attrs for c in docker_client.containers.list(all=True, filters={"name": project.container})}
    images = sorted(image_names(docker_client, prefix))
    return {"containers": containers, "images": images}


@pytest.fixture
def proxy(registry: str) -> Iterator[RegistryProxy]:
    with start_proxy(registry) as started:
        yield started


def forget_proxy_names(docker_client: Any, proxy: RegistryProxy) -> None:
    """Untag whatever the engine holds under the proxy's name (an earlier proxy on the same ephemeral
    port may have pulled through it), so a pull through this proxy would really ask it."""
    for name in image_names(docker_client, f"{proxy.host}/"):
        docker_client.images.remove(name)


def test_dry_run_deploy_and_revert_change_nothing_and_pull_nothing(ledger_project: Project, proxy: RegistryProxy,
                                                                   docker_client: Any) -> None:
    project = ledger_project
    forget_proxy_names(docker_client, proxy)
    write_config(project, image=f"{proxy.host}/rollout-test/app")
    try:
        for tag in ("good1", "good2"):
            deployed = project.run("deploy", f"web:{tag}")
            assert deployed.returncode == 0, deployed.stderr
        good3 = digest_of(docker_client, "good3")
        second, first = (e["id"] for e in project.history())  # PostgreSQL ids skip a reserved one
        before, engine_before = rows(project), engine_state(docker_client, project, proxy.host)
        proxy.reset_counts()

        plan = project.run("deploy", "web:good3", "--dry-run", "--json")
        assert plan.returncode == 0, plan.stderr
        shown = json.loads(plan.stdout)
        [target] = shown["targets"]
        assert (shown["dry_run"], shown["kind"], shown["digest"], shown["current"]["id"]) == (True, "deploy", good3, second)
        assert (target["name"], target["new_digest"], target["moves"], target["pull"]) == ("local", good3, True, True)
        assert target["current_digest"] == digest_of(docker_client, "good2")
        assert project.container in target["changes"]
        assert shown["batches"] == [["local"]] and shown["on_failure_reverts_to"]["id"] == second
        human = project.run("deploy", "web:good3", "--dry-run")
        assert human.returncode == 0 and "pull needed" in human.stdout, human.stdout
        assert f"on failure: revert to #{second}" in human.stdout

        back = project.run("revert", "--dry-run", "--json")
        assert back.returncode == 0, back.stderr
        reverting = json.loads(back.stdout)
        assert (reverting["kind"], reverting["reverts_to"]["id"], reverting["targets"][0]["pull"]) == ("revert", first, False)
        same = project.run("deploy", "web:good2", "--dry-run")
        assert same.returncode == 0 and f"nothing to do: already running #{second} good2" in same.stdout

        # Nothing changed: the ledger (no entry, event or lease), the engine (containers, images), the
        # registry (resolves are HEADs; no manifest or blob GET: nothing pulled).
        assert rows(project) == before
        assert engine_state(docker_client, project, proxy.host) == engine_before
        assert engine_before["images"] and len(engine_before["containers"]) == 2  # good2 runs, good1 kept
        assert proxy.count("GET", "manifest") == proxy.count("GET", "blob") == 0
        assert proxy.count("HEAD", "manifest") == 3  # good3 twice, good2 once; the revert resolves nothing
        assert project.version() == "good2"

        # Bad input and an unreachable registry: the real command's exit code, and still nothing changed.
        for args, code in ((["deploy", "web:no-such-tag"], 2), (["deploy", "nosuchapp:1"], 2),
                           (["revert", "--to", "#99"], 2)):
            dry, real = project.run(*args, "--dry-run"), project.run(*args)
            assert (dry.returncode, real.returncode) == (code, code), (args, dry.stderr, real.stderr)
            assert dry.stdout == "" and dry.stderr.count("\n") == 1 and "Traceback" not in dry.stderr
        proxy_port = proxy.port
        write_config(project, image=f"127.0.0.1:{proxy_port}/rollout-test/app")
        proxy.close()
        dry, real = project.run("deploy", "web:good3", "--dry-run"), project.run("deploy", "web:good3")
        assert (dry.returncode, real.returncode) == (5, 5), (dry.stderr, real.stderr)
        assert rows(project) == before
    finally:
        project.remove_containers(docker_client)


def test_deploying_what_already_runs_records_nothing_unless_forced_and_brings_drift_back(
        project: Project, docker_client: Any) -> None:
    try:
        first = project.run("deploy", "web:good1")
        assert first.returncode == 0, first.stderr
        container = docker_client.containers.get(project.container)

        again = project.run("deploy", "web:good1")
        assert (again.returncode, again.stdout.strip()) == (0, "already running #1 good1")
        as_json = json.loads(project.run("deploy", "web:good1", "--json").stdout)
        assert (as_json["outcome"], as_json["entry"], as_json["exit_code"]) == ("unchanged", 1, 0)
        assert [e["id"] for e in project.history()] == [1]
        assert docker_client.containers.get(project.container).id == container.id  # not touched

        forced = project.run("deploy", "web:good1", "--force")
        assert forced.returncode == 0 and forced.stdout.strip() == "#2 healthy", forced.stderr
        assert docker_client.containers.get(project.container).id != container.id

        docker_client.containers.get(project.container).stop(timeout=1)  # drift: the app is down
        brought = project.run("deploy", "web:good1")
        assert brought.returncode == 0 and brought.stdout.strip() == "#3 healthy", brought.stderr
        newest = project.history()[0]
        assert (newest["id"], newest["status"], newest["reason"]) == (3, "healthy", "bring back local: drifted from #2")
        drift = [e for e in json.loads(project.run("show", "#3", "--json").stdout)["events"] if e["event"] == "drift"]
        assert [d["detail"] for d in drift] == [{"targets": ["local"], "from_entry": 2}]
        assert project.version_once_listening() == "good1"
    finally:
        project.remove_containers(docker_client)


def test_json_results_of_deploy_and_revert(project: Project, docker_client: Any) -> None:
    try:
        assert project.run("deploy", "web:good1").returncode == 0
        crashed = project.run("deploy", "web:crash", "--json")
        assert crashed.returncode == EXIT_REVERTED, crashed.stderr
        result = json.loads(crashed.stdout)  # the whole of stdout is one JSON object
        assert (result["entry"], result["kind"], result["app"], result["tag"], result["outcome"], result["exit_code"]) \
            == (2, "deploy", "web", "crash", "failed", 1)
        assert result["digest"] == digest_of(docker_client, "crash")
        assert [(t["name"], t["outcome"]) for t in result["targets"]] == [("local", "failed")]
        assert "exited" in result["targets"][0]["detail"]
        revert = result["revert"]
        assert (revert["entry"], revert["kind"], revert["tag"], revert["outcome"]) == (3, "revert", "good1", "healthy")
        assert [(t["name"], t["outcome"]) for t in revert["targets"]] == [("local", "healthy")]
        durations = result["durations"]
        assert set(durations) == {"resolve", "pull", "apply", "verify", "revert"}
        assert all(isinstance(v, float) and v >= 0 for v in durations.values()), durations
        assert durations["revert"] > 0 and durations["apply"] > 0
        assert "#2 deploy web crash" in crashed.stderr  # progress stays on stderr

        assert project.run("deploy", "web:good2").returncode == 0
        back = project.run("revert", "--json", "--to", "#1")
        assert back.returncode == 0, back.stderr
        reverted = json.loads(back.stdout)
        assert (reverted["kind"], reverted["outcome"], reverted["revert"], reverted["durations"]["resolve"]) \
            == ("revert", "healthy", None, None)
        # Again: #1's release already runs (in #1's own container): nothing to do, nothing recorded.
        again = project.run("revert", "--json", "--to", "#1")
        assert again.returncode == 0, again.stderr
        assert (json.loads(again.stdout)["outcome"], json.loads(again.stdout)["entry"]) == ("unchanged", reverted["entry"])

        refused = project.run("deploy", "web:no-such-tag", "--json")
        assert refused.returncode == 2
        error = json.loads(refused.stdout)
        assert (error["entry"], error["app"], error["outcome"], error["exit_code"]) == (None, "web", "error", 2)
        assert error["error"] in refused.stderr
    finally:
        project.remove_containers(docker_client)


SECRET = "s3cr3t-token-never-shown"


def test_show_has_the_failed_containers_log_tail_without_its_secrets(tmp_path: Path, registry: str,
                                                                     docker_client: Any) -> None:
    project = Project.create(tmp_path)
    project.config.write_text(f"""
[apps.job]
image = "{REGISTRY}/rollout-test/busybox"

[apps.job.health]
timeout = 20
stable = 1

[[apps.job.targets]]
name = "local"
kind = "docker"
container = "{project.container}"
network = "host"
env = {{ API_TOKEN = "{SECRET}" }}
command = "echo starting with token $API_TOKEN; echo fatal: no database; exit 3"
""")
    try:
        failed = project.run("deploy", "job:base")
        assert failed.returncode == 3, failed.stderr
        shown = project.run("show", "#1", "--json")
        assert shown.returncode == 0, shown.stderr
        entry = json.loads(shown.stdout)
        assert (entry["entry"]["id"], entry["entry"]["status"]) == (1, "failed")
        assert entry["log_tails"] == {"local": ["starting with token ***", "fatal: no database"]}
        assert [t["outcome"] for t in entry["targets"]] == ["failed"]
        events = [e["event"] for e in entry["events"]]
        assert events[0] == "recorded" and events.index("log-tail") < events.index("status:failed")
        assert [e["at"] for e in entry["events"]] == sorted(e["at"] for e in entry["events"])
        assert set(entry["durations"]) >= {"resolve", "pull", "apply", "verify"}
        human = project.run("show", "1")
        assert human.returncode == 0
        for line in ("#1 deploy job base", "who: ", "timings: resolve", "target local: failed",
                     "local: last 2 log lines at the failure:", "| fatal: no database"):
            assert line in human.stdout, human.stdout
        # The secret is on no screen and in no ledger row.
        ledger_text = json.dumps(rows(project), default=str)
        for text in (failed.stdout, failed.stderr, shown.stdout, human.stdout, ledger_text):
            assert SECRET not in text
    finally:
        project.remove_containers(docker_client)


# -- show and --version: bad input, versions -------------------------------------------------------


def test_show_refuses_what_names_no_entry(project: Project) -> None:
    for text, says in (("abc", "is not an entry id"), ("#0", "is not an entry id"), ("#12", "no entry #12")):
        result = project.run("show", text)
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert result.stderr.count("\n") == 1 and says in result.stderr and "Traceback" not in result.stderr


def test_version_names_rollout_python_and_the_clients(tmp_path: Path) -> None:
    result = run_rollout("--version", env={}, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"rollout {importlib.metadata.version('rollout')}", f"python {platform.python_version()}",
        f"docker {importlib.metadata.version('docker')}", f"kubernetes {importlib.metadata.version('kubernetes')}"]


# -- log tails of the other kinds: masked, or not stored (review of issue 17, P1-2) ----------------


def test_a_compose_replicas_log_tail_is_masked_on_stderr_and_in_the_ledger(stack: Any) -> None:
    """A compose replica that prints a setting at its crash: the value is *** on stderr and in the
    ledger's log-tail event, as for a docker target (the same masking)."""
    stack.write("good1", environment={"PORT": str(stack.port), "API_TOKEN": SECRET},
                command=["sh", "-c", "echo starting with token $$API_TOKEN; echo fatal: no database; exit 3"])
    failed = stack.run("deploy", "web:good1")
    assert failed.returncode == 3, failed.stderr
    assert SECRET not in failed.stderr and "starting with token ***" in failed.stderr
    shown = stack.run("show", "#1", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["log_tails"] == {"local": ["starting with token ***", "fatal: no database"]}


def test_a_kubernetes_containers_log_tail_is_masked_and_not_stored_with_secret_env(kube: Any, tmp_path: Path) -> None:
    """The crash image prints "fatal: cannot read /etc/app.conf": a literal env value equal to that
    path is masked (stderr and ledger); once the container also takes a value from a Secret, which
    rollout cannot mask, the tail is shown on stderr but not stored."""
    from support.kube import KubeApp

    conf = {"name": "APP_CONF", "value": "/etc/app.conf"}
    secret = {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}
    for env, stored in (([conf], True), ([conf, secret], False)):
        container = {"name": "app", "image": f"{REGISTRY}/rollout-test/app:good1",
                     "env": [{"name": "PORT", "value": "8080"}, *env]}
        (tmp_path / str(len(env))).mkdir()
        cluster = KubeApp(tmp_path / str(len(env)), kube, {"terminationGracePeriodSeconds": 5,
                                                           "containers": [container]}, prefix="lt")
        try:
            cluster.write_config()
            assert cluster.run("deploy", "web:good1").returncode == 0
            failed = cluster.run("deploy", "web:crash")
            assert failed.returncode == 1, failed.stderr
            assert "fatal: cannot read ***" in failed.stderr and "/etc/app.conf" not in failed.stderr
            shown = cluster.run("show", "#2", "--json")
            assert shown.returncode == 0, shown.stderr
            tails = json.loads(shown.stdout)["log_tails"]
            assert tails == ({"cluster": ["fatal: cannot read ***"]} if stored else {}), (env, tails)
        finally:
            cluster.kubectl("delete", "deployment", cluster.name, "--wait=false")


def test_a_plan_creates_no_ledger_and_a_plan_on_an_existing_one_writes_nothing_to_it(project: Project) -> None:
    """--dry-run opens the ledger read-only (review P2-2): before the first deploy it creates no
    state/ledger.db (nor the state directory); afterwards the file is byte for byte as it was and
    its write-ahead log holds no write (SQLite's reader of a WAL database may create an empty -wal
    and the -shm index)."""
    write_config(project)
    state = project.root / "state"
    assert not state.exists()
    plan = project.run("deploy", "web:good1", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "on failure: no healthy entry" in plan.stdout
    assert not state.exists(), sorted(p.name for p in state.iterdir())
    assert project.run("deploy", "web:good1").returncode == 0
    before = (state / "ledger.db").read_bytes()
    assert project.run("deploy", "web:good2", "--dry-run").returncode == 0
    assert project.run("revert", "--dry-run").returncode == 2  # nothing to revert to: refused, read-only too
    assert (state / "ledger.db").read_bytes() == before
    wal = state / "ledger.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


# -- a plan refuses what the deploy would refuse, behind a router (review of issue 17, P1-3) ------


def test_a_plan_behind_a_router_refuses_what_the_deploy_refuses(project: Project, tmp_path: Path,
                                                                docker_client: Any) -> None:
    """--dry-run with a traffic section runs the deploy's read-only refusals: an idle slot without a
    HAProxy server line (2), something else listening on the idle slot (2), an unreachable admin
    socket (5); each changes nothing."""
    import socket

    from support.ports import free_port
    from support.routers import proxy
    from support.traffic import deploy, write_traffic_config

    slots = [free_port(), free_port()]
    with proxy("haproxy", tmp_path, [f"127.0.0.1:{s}" for s in slots]) as running:
        write_traffic_config(project, running, slots)
        assert deploy(project, "good1").returncode == 0
        live = docker_client.containers.get(project.container)
        [idle] = [s for s in slots if s != int(live.labels["rollout.slot"])]

        def plan_fails(code: int, words: str) -> None:
            result = project.run("deploy", "web:good2", "--dry-run")
            assert result.returncode == code, result.stderr
            [error] = [line for line in result.stderr.splitlines() if line.startswith("rollout: error:")]
            assert words in error and "Traceback" not in result.stderr, result.stderr
            assert [(e["tag"], e["status"]) for e in project.history()] == [("good1", "healthy")]
            assert [c.id for c in docker_client.containers.list(all=True, filters={"name": project.container})] == [live.id]

        squatter = socket.socket()
        try:
            squatter.bind(("127.0.0.1", idle))
            squatter.listen()
            plan_fails(2, f"slot {idle} is in use by something")
        finally:
            squatter.close()
        unknown = free_port()
        write_traffic_config(project, running, [int(live.labels["rollout.slot"]), unknown])
        plan_fails(2, f"no server at 127.0.0.1:{unknown}")
        write_traffic_config(project, running, slots, admin="unix:///nonexistent/admin.sock")
        plan_fails(5, "cannot be reached")
        write_traffic_config(project, running, slots)
        assert project.run("deploy", "web:good2", "--dry-run").returncode == 0


def test_a_plan_on_an_on_delete_statefulset_is_refused_like_the_deploy(kube: Any, tmp_path: Path) -> None:
    """--dry-run runs the kubernetes target's refusals (Workload.refusal) as prepare does: an
    OnDelete StatefulSet is exit 2 naming it, not a plan (review of issue 17, P1-4)."""
    from support.kube import KubeApp

    container = {"name": "app", "image": f"{REGISTRY}/rollout-test/app:good1", "env": [{"name": "PORT", "value": "8080"}]}
    cluster = KubeApp(tmp_path, kube, {"terminationGracePeriodSeconds": 5, "containers": [container]}, prefix="od",
                      workload="statefulset", strategy={"type": "OnDelete"})
    try:
        cluster.write_config()
        plan = cluster.run("deploy", "web:good2", "--dry-run")
        assert plan.returncode == 2, plan.stderr
        [line] = [line for line in plan.stderr.splitlines() if line.startswith("rollout: error:")]
        assert f"statefulset {cluster.name} has updateStrategy OnDelete" in line and "Traceback" not in plan.stderr
        assert cluster.run("history", "--json").stdout.strip() in ("", "[]")
    finally:
        cluster.kubectl("delete", "statefulset", cluster.name, "--wait=false")


def test_a_plan_for_a_router_that_drifted_says_it_only_switches_back(project: Project, tmp_path: Path,
                                                                     docker_client: Any) -> None:
    """The router was pointed at the idle slot by hand (nothing runs there): deploying the current
    release again only switches back to the container that runs it. The plan says so (no container
    started beside), and the deploy does exactly that (issue 14 left-alone item)."""
    from rollout.routers import open_router
    from support.ports import free_port
    from support.routers import proxy
    from support.traffic import deploy, routed, write_traffic_config

    slots = [free_port(), free_port()]
    with proxy("haproxy", tmp_path, [f"127.0.0.1:{s}" for s in slots]) as running:
        write_traffic_config(project, running, slots)
        assert deploy(project, "good1").returncode == 0
        live = docker_client.containers.get(project.container)
        slot = int(live.labels["rollout.slot"])
        [idle] = [s for s in slots if s != slot]
        open_router(running.kind, running.admin, running.route).switch(f"127.0.0.1:{idle}")
        # What looks like another rollout's new container (a plan holds no lock): a plan must not remove it.
        theirs = docker_client.containers.create(f"{APP_IMAGE}:good1", name=f"{project.container}.rollout-new-99-abcdef",
                                                 network_mode="host", environment={"PORT": str(free_port())})
        plan = project.json("deploy", "web:good1", "--dry-run", "--json")
        theirs.reload()  # NotFound when the plan removed it
        [target] = plan["targets"]
        assert target["moves"] and plan["repair"], plan
        assert f"switches to {project.container}, which runs this release on slot {slot}" in target["changes"], target
        assert "started beside" not in target["changes"]
        assert routed(running) == [f"127.0.0.1:{idle}"]  # the plan changed nothing
        result = deploy(project, "good1")
        assert result.returncode == 0, result.stderr
        assert routed(running) == [f"127.0.0.1:{slot}"]
        assert [c.id for c in docker_client.containers.list(all=True, filters={"name": project.container})] == [live.id]
