"""End to end on the real engine and registry: `rollout deploy / revert / status` on a docker host."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

from support.cli import finish
from support.errors import one_line_error
from support.images import APP_IMAGE, digest_of
from support.ports import free_port
from support.project import Project, write_config

pytestmark = pytest.mark.usefixtures("project")


def deploy(project: Project, tag: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return project.run("deploy", f"web:{tag}", *extra)


def test_first_deploy_runs_the_exact_digest_and_records_it(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    result = deploy(project, "good1")
    assert result.returncode == 0, result.stderr
    assert project.version() == "good1"
    container = docker_client.containers.get(project.container)
    digest = digest_of(docker_client, "good1")
    # Pinned by digest, never by the mutable tag.
    assert container.attrs["Config"]["Image"] == f"{APP_IMAGE}@{digest}"
    [entry] = project.history()
    assert (entry["kind"], entry["tag"], entry["digest"], entry["status"]) == ("deploy", "good1", digest, "healthy")
    assert container.labels["rollout.entry"] == str(entry["id"])
    assert container.labels["rollout.digest"] == digest
    status = project.json("status", "--json")
    assert status["current"]["id"] == entry["id"]
    assert status["targets"] == [{"name": "local", "image": f"{APP_IMAGE}@{digest}", "digest": digest, "running": True,
                                  "in_sync": True, "error": None, "warning": None, "deploying": False}]
    assert status["in_progress"] is None
    # A stopped container is not "in sync", whatever digest it has.
    container.stop(timeout=1)
    stopped = project.json("status", "--json")["targets"][0]
    assert (stopped["running"], stopped["in_sync"]) == (False, False)
    human = project.run("status")
    assert human.returncode == 0 and "STOPPED" in human.stdout, human.stderr


def test_upgrade_keeps_the_old_container_stopped_for_a_fast_revert(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    assert deploy(project, "good1").returncode == 0
    first_id = docker_client.containers.get(project.container).id
    result = deploy(project, "good2")
    assert result.returncode == 0, result.stderr
    assert project.version() == "good2"
    retired = docker_client.containers.get(first_id)
    assert retired.name.startswith(f"{project.container}.rollout-") and retired.status == "exited"
    # A revert starts that very container again: no pull, no create.
    result = project.run("revert")
    assert result.returncode == 0, result.stderr
    assert project.version() == "good1"
    assert docker_client.containers.get(project.container).id == first_id
    newest = project.history()[0]
    assert newest["kind"] == "revert" and newest["status"] == "healthy" and newest["tag"] == "good1"


def test_a_deploy_after_editing_the_settings_creates_anew_and_a_revert_puts_back_what_ran(  # type: ignore[no-untyped-def]
        project: Project, docker_client) -> None:
    """A kept container of the deployed digest is taken back by a deploy only if rollout.toml is
    unchanged since it was created; a revert takes it back whatever the settings say now."""
    assert deploy(project, "good1").returncode == 0
    first_id = docker_client.containers.get(project.container).id
    assert deploy(project, "good2").returncode == 0
    second_id = docker_client.containers.get(project.container).id
    # Unchanged settings: deploying good1 again takes its kept container back (no create).
    assert deploy(project, "good1").returncode == 0
    assert docker_client.containers.get(project.container).id == first_id
    write_config(project, extra='labels = { edited = "yes" }')
    assert deploy(project, "good2").returncode == 0
    live = docker_client.containers.get(project.container)
    # The kept good2 container had the old settings: a new one runs the edited ones.
    assert live.id != second_id and live.labels.get("edited") == "yes"
    assert project.version() == "good2"
    # A revert puts back what ran: the kept good1 container, with the settings it ran with.
    result = project.run("revert")
    assert result.returncode == 0, result.stderr
    back = docker_client.containers.get(project.container)
    assert back.id == first_id and "edited" not in back.labels and project.version() == "good1"


def test_an_edit_of_rollout_toml_is_flagged_not_hidden_by_an_idempotent_deploy(project: Project) -> None:
    """After a settings edit, deploying the tag that runs is still a no-op, but it and `status` say
    the settings changed and how to apply them; once applied, the warning is gone."""
    assert deploy(project, "good1").returncode == 0
    assert "changed since" not in project.run("status").stderr
    write_config(project, extra='labels = { edited = "yes" }')
    again = deploy(project, "good1")
    assert again.returncode == 0 and "already running" in again.stdout, again.stderr
    assert "settings for local changed since" in again.stderr and "deploy web:good1 --force" in again.stderr
    status = project.run("status")
    assert status.returncode == 0 and "deploy web:good1 --force" in status.stdout + status.stderr
    assert project.json("status", "--json")["targets"][0]["warning"].startswith("rollout.toml's settings for local")
    assert deploy(project, "good1", "--force").returncode == 0
    assert project.json("status", "--json")["targets"][0]["warning"] is None


BROKEN_COMMAND = 'command = ["sh", "-c", "echo broken settings; exit 1"]'  # a settings edit that cannot run


def test_a_failed_forced_redeploy_after_an_edit_goes_back_to_the_same_release_not_an_older_one(  # type: ignore[no-untyped-def]
        project: Project, docker_client) -> None:
    """The digest ran healthy until the edit, so a failure is the edit's: the current entry comes
    back in the very container it ran in, not the release before it (a downgrade)."""
    assert deploy(project, "good1").returncode == 0
    assert deploy(project, "good2").returncode == 0
    good2 = docker_client.containers.get(project.container).id
    write_config(project, extra=BROKEN_COMMAND)
    result = deploy(project, "good2", "--force")
    assert result.returncode == 1, result.stderr
    revert, failed, current, _ = project.history()
    assert (failed["tag"], failed["status"]) == ("good2", "failed")
    assert (revert["kind"], revert["tag"], revert["status"], revert["reverts_to"]) == ("revert", "good2", "healthy", current["id"])
    assert project.version() == "good2" and docker_client.containers.get(project.container).id == good2
    # Reverting to the release that runs changes nothing, as deploying it does.
    entries = len(project.history())
    again = project.run("revert", "--to", "good2")
    assert again.returncode == 0 and "already running" in again.stdout, again.stderr
    assert len(project.history()) == entries and docker_client.containers.get(project.container).id == good2


def test_a_killed_forced_redeploy_after_an_edit_is_not_kept_by_recovery(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    """`deploy --force` of the running digest after an edit, SIGKILLed once its new container runs
    under the name: that container was never verified, so recovery puts back the one the healthy
    entry ran in, although both run the same digest (an unverified release is never kept)."""
    from support.cli import finish

    assert deploy(project, "good1").returncode == 0
    healthy = docker_client.containers.get(project.container).id
    write_config(project, extra='labels = { edited = "yes" }')
    process = project.start("deploy", "web:good1", "--force", kill_at="docker:started#1")
    code, stderr = finish(process, timeout=120)
    assert code == -9, f"not killed at docker:started: {code}: {stderr[-300:]}"
    assert docker_client.containers.get(project.container).id != healthy  # the unverified one holds the name
    recovery = project.run("status")
    assert recovery.returncode == 0 and "was interrupted" in recovery.stderr, recovery.stderr
    live = docker_client.containers.get(project.container)
    assert live.id == healthy and live.status == "running" and "edited" not in live.labels
    assert [(e["kind"], e["status"]) for e in project.history()[:2]] == [("revert", "healthy"), ("deploy", "interrupted")]


def test_a_revert_to_an_older_entry_of_the_same_digest_puts_back_its_container(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    """good1 ran healthy (#1); an edit then `deploy --force` ran it healthy in a new container (#2).
    `revert --to #1` is not "already running": it puts back #1's container and settings."""
    assert deploy(project, "good1").returncode == 0
    first = docker_client.containers.get(project.container).id
    write_config(project, extra='labels = { edited = "yes" }')
    assert deploy(project, "good1", "--force").returncode == 0
    assert docker_client.containers.get(project.container).id != first
    [_, original] = project.history()
    result = project.run("revert", "--to", f"#{original['id']}")
    assert result.returncode == 0 and "already running" not in result.stdout, result.stdout + result.stderr
    live = docker_client.containers.get(project.container)
    assert live.id == first and "edited" not in live.labels


def test_a_revert_never_takes_back_the_container_of_a_failed_entry(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    """good2 ran healthy in one container; later a deploy of good2 with broken settings failed in
    another, stopped more recently. `revert --to` the healthy good2 entry starts the first."""
    assert deploy(project, "good1").returncode == 0
    assert deploy(project, "good2").returncode == 0
    healthy_good2 = docker_client.containers.get(project.container).id
    assert deploy(project, "good1").returncode == 0
    write_config(project, extra=BROKEN_COMMAND)
    assert deploy(project, "good2").returncode == 1  # a new container (the settings changed), crashing
    write_config(project)  # the operator fixes rollout.toml
    good2_entry = next(e for e in project.history() if e["tag"] == "good2" and e["status"] == "healthy")
    result = project.run("revert", "--to", f"#{good2_entry['id']}")
    assert result.returncode == 0, result.stderr
    assert project.version() == "good2" and docker_client.containers.get(project.container).id == healthy_good2
    assert project.history()[0]["status"] == "healthy"


def test_carries_over_the_old_containers_settings(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    assert deploy(project, "good1").returncode == 0
    old = docker_client.containers.get(project.container)
    # Settings made outside rollout must survive the replacement.
    old.stop(timeout=1)
    old.remove()
    docker_client.containers.run(
        f"{APP_IMAGE}:good1", name=project.container, detach=True, network_mode="host",
        environment={"PORT": str(project.port), "EXTRA": "kept"}, labels={"team": "payments"},
        restart_policy={"Name": "on-failure", "MaximumRetryCount": 3}, security_opt=["no-new-privileges"],
        cap_drop=["NET_RAW"], working_dir="/www", mem_limit="64m",
    )
    result = deploy(project, "good2")
    assert result.returncode == 0, result.stderr
    new = docker_client.containers.get(project.container)
    assert "EXTRA=kept" in new.attrs["Config"]["Env"]
    assert new.labels["team"] == "payments"
    assert new.attrs["Config"]["WorkingDir"] == "/www"
    host = new.attrs["HostConfig"]
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["CapDrop"] == ["NET_RAW"] and not host.get("CapAdd") and not host["Privileged"]
    assert host["Memory"] == 64 * 1024 * 1024
    assert project.version() == "good2"


def test_crash_at_start_reverts_to_the_previous_digest(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    assert deploy(project, "good1").returncode == 0
    result = deploy(project, "crash")
    assert result.returncode == 1, result.stderr
    assert project.version() == "good1"
    assert "fatal: cannot read /etc/app.conf" in result.stderr  # the failed container's last log lines
    assert "exited with code 1" in result.stderr
    revert, failed, good = project.history()
    assert failed["status"] == "failed" and failed["tag"] == "crash"
    assert revert["kind"] == "revert" and revert["reverts_to"] == good["id"] and revert["status"] == "healthy"
    assert revert["digest"] == good["digest"] == digest_of(docker_client, "good1")
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("broken", ["unhealthy-http", "unhealthy-check"])
def test_never_healthy_release_is_reverted(project: Project, broken: str) -> None:
    write_config(project, timeout=6)
    assert deploy(project, "good2").returncode == 0
    result = deploy(project, broken)
    assert result.returncode == 1, result.stderr
    assert project.version() == "good2"
    statuses = [(e["tag"], e["kind"], e["status"]) for e in project.history()]
    assert statuses == [("good2", "revert", "healthy"), (broken, "deploy", "failed"), ("good2", "deploy", "healthy")]


def test_two_broken_releases_in_a_row_land_on_the_last_healthy_one(project: Project) -> None:
    assert deploy(project, "good1").returncode == 0
    assert deploy(project, "crash").returncode == 1
    result = deploy(project, "unhealthy-check")
    assert result.returncode == 1, result.stderr
    assert project.version() == "good1"
    newest = project.history()[0]
    assert newest["kind"] == "revert" and newest["tag"] == "good1" and newest["status"] == "healthy"


def test_first_deploy_failing_has_nothing_to_revert_to(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    result = deploy(project, "crash")
    assert result.returncode == 3, result.stderr
    assert "no healthy entry" in result.stdout
    [entry] = project.history()
    assert entry["status"] == "failed"
    assert docker_client.containers.get(project.container).status != "running"


def test_revert_to_a_chosen_entry_or_tag(project: Project) -> None:
    for tag in ("good1", "good2", "good3"):
        assert deploy(project, tag).returncode == 0
    first = project.history()[-1]
    result = project.run("revert", "--to", str(first["id"]))
    assert result.returncode == 0, result.stderr
    assert project.version() == "good1"
    result = project.run("revert", "web", "--to", "good2")
    assert result.returncode == 0, result.stderr
    assert project.version() == "good2"
    assert project.history()[0]["reverts_to"] == project.history()[-2]["id"]
    # Default: the healthy entry before the current one with another digest.
    assert project.run("revert").returncode == 0
    assert project.version() == "good1"


def test_revert_to_unknown_entry_changes_nothing(project: Project) -> None:
    assert deploy(project, "good1").returncode == 0
    before = project.history()
    for target in ("999", "no-such-tag"):
        one_line_error(project.run("revert", "--to", target), 2)
    assert project.history() == before


def test_a_retagged_image_is_refused(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    tag = f"retag-{project.container}"
    image = docker_client.images.get(f"{APP_IMAGE}:good1")
    image.tag(APP_IMAGE, tag)
    docker_client.images.push(APP_IMAGE, tag)
    assert deploy(project, tag).returncode == 0
    docker_client.images.get(f"{APP_IMAGE}:good2").tag(APP_IMAGE, tag)
    docker_client.images.push(APP_IMAGE, tag)
    before = project.history()
    result = deploy(project, tag)
    assert result.returncode == 2
    assert "immutable" in result.stderr and "--allow-retag" in result.stderr
    assert project.history() == before and project.version() == "good1"
    result = deploy(project, tag, "--allow-retag")
    assert result.returncode == 0, result.stderr
    assert project.version() == "good2"


def test_unknown_tag_changes_nothing(project: Project) -> None:
    assert deploy(project, "good1").returncode == 0
    before = project.history()
    assert "not found" in one_line_error(deploy(project, "no-such-tag"), 2, after="progress")
    assert project.history() == before and project.version() == "good1"


def test_registry_down_exits_5_and_changes_nothing(project: Project) -> None:
    assert deploy(project, "good1").returncode == 0
    before = project.history()
    write_config(project, image=f"127.0.0.1:{free_port()}/rollout-test/app")
    assert "unreachable" in one_line_error(deploy(project, "good2"), 5, after="warnings")
    assert project.history() == before and project.version() == "good1"


def test_engine_unreachable_exits_5_before_anything_is_recorded(project: Project, tmp_path) -> None:  # type: ignore[no-untyped-def]
    project.env["DOCKER_HOST"] = f"unix://{tmp_path}/no-engine.sock"
    result = deploy(project, "good1")
    assert result.returncode == 5, result.stderr
    assert "unreachable" in result.stderr
    assert project.history() == []


def test_deploy_by_digest_and_by_full_reference(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    digest = digest_of(docker_client, "good2")
    result = project.run("deploy", f"web@{digest}")
    assert result.returncode == 0, result.stderr
    assert project.version() == "good2"
    result = project.run("deploy", f"{APP_IMAGE}:good1")
    assert result.returncode == 0, result.stderr
    assert project.version() == "good1"
    result = project.run("deploy", f"web:good1@{digest}")  # tag and digest disagree
    assert result.returncode == 2 and "not the digest given" in result.stderr
    entries = project.history()
    assert [(e["tag"], e["digest"]) for e in entries] == [("good1", digest_of(docker_client, "good1")), (None, digest)]


def test_lock_held_by_another_rollout_exits_4(ledger_project: Project) -> None:
    """On both ledger backends (issue 13): the lease is the ledger's."""
    from rollout import lock

    project = ledger_project
    assert deploy(project, "good1").returncode == 0
    ledger = project.open_ledger()
    lease = lock.acquire(ledger, "web")
    try:
        result = deploy(project, "good2", "--wait", "0.5")
        assert result.returncode == 4
        assert f"pid {os.getpid()}" in result.stderr
    finally:
        lock.release(ledger, lease)
        ledger.close()
    assert project.version() == "good1"
    assert deploy(project, "good2").returncode == 0


def test_a_killed_holders_lock_does_not_block(ledger_project: Project) -> None:
    """On both ledger backends (issue 13): the lease is the ledger's."""
    from support.raw_ledger import run_sql

    project = ledger_project
    holder = subprocess.Popen(
        ["python3", "-c", "import time; time.sleep(60)"],
    )
    ledger = project.open_ledger()
    try:
        run_sql(ledger, "INSERT INTO locks (app, holder, host, pid, acquired_at, expires_at)"
                        " VALUES ('web', 'someone@host', ?, ?, 'then', 9e12)",
                [__import__("socket").gethostname(), holder.pid])
    finally:
        ledger.close()
    holder.kill()
    holder.wait()
    result = deploy(project, "good1")
    assert result.returncode == 0, result.stderr


def test_drift_is_reported(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    assert deploy(project, "good1").returncode == 0
    container = docker_client.containers.get(project.container)
    container.stop(timeout=1)
    container.remove()
    docker_client.containers.run(f"{APP_IMAGE}:good2", name=project.container, detach=True, network_mode="host",
                                 environment={"PORT": str(project.port)})
    [target] = project.json("status", "--json")["targets"]
    assert target["digest"] == digest_of(docker_client, "good2") and target["in_sync"] is False
    human = project.run("status")
    assert human.returncode == 0 and "DRIFT" in human.stdout, human.stderr


def test_a_deploy_in_progress_is_shown_as_such_not_as_drift(ledger_project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    """While a deploy verifies, its target runs a digest the ledger does not call current yet: `status`
    and `check` name the rollout (entry, holder, pid) and show the target DEPLOYING, not DRIFT, and a
    cron `check` exits 0, not 10; once the deploy is over, everything is in sync again."""
    project = ledger_project
    write_config(project, timeout=60)
    assert deploy(project, "good1").returncode == 0
    good = project.history()[0]
    # A long stable window: every command below runs while good2 is being verified.
    write_config(project, timeout=60, stable=25)
    process = project.start("deploy", "web:good2")
    try:
        assert project.wait_for_entry(process, good["id"], "deploy", "verifying"), process.communicate()
        [entry] = [e for e in project.history() if e["id"] > good["id"]]
        new_digest = digest_of(docker_client, "good2")
        said = f"rollout in progress: #{entry['id']} deploy good2 (verifying) by {entry['actor']} (pid {process.pid}), started "

        status = project.json("status", "--json")
        assert status["current"]["id"] == good["id"]
        assert status["in_progress"]["entry"]["id"] == entry["id"]
        assert status["in_progress"]["lock"]["pid"] == process.pid
        [target] = status["targets"]
        assert (target["digest"], target["in_sync"], target["deploying"]) == (new_digest, False, True)
        human = project.run("status")
        assert human.returncode == 0, human.stderr
        assert f"web: {said}" in human.stdout and "DEPLOYING" in human.stdout, human.stdout
        assert "DRIFT" not in human.stdout

        checked = project.run("check")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        first, second = checked.stdout.splitlines()[:2]
        assert first == "web: IN PROGRESS" and second.startswith(f"web:   {said}"), checked.stdout
        [report] = project.json("check", "--json")
        assert (report["changed"], report["changes"], report["errors"]) == (False, [], [])
        assert report["in_progress"]["entry"]["id"] == entry["id"] and report["targets"][0]["deploying"] is True
        # All of it happened during the rollout, not after it.
        assert project.ledger_rows("SELECT status FROM entries WHERE id = ?", (entry["id"],)) == [("verifying",)]
    finally:
        returncode, stderr = finish(process, timeout=180)
    assert returncode == 0, stderr

    status = project.json("status", "--json")
    assert status["current"]["id"] == entry["id"] and status["in_progress"] is None
    assert (status["targets"][0]["in_sync"], status["targets"][0]["deploying"]) == (True, False)
    human = project.run("status")
    assert "in progress" not in human.stdout and "in sync" in human.stdout, human.stdout
    checked = project.run("check")
    assert (checked.returncode, checked.stdout) == (0, "web: unchanged\n"), checked.stderr


def test_ledger_is_private_and_immutable(project: Project) -> None:
    assert deploy(project, "good1").returncode == 0
    assert oct(project.ledger.stat().st_mode & 0o777) == "0o600"
    assert oct(project.ledger.parent.stat().st_mode & 0o777) == "0o700"
    conn = sqlite3.connect(project.ledger)
    for statement in ("UPDATE entries SET digest = 'sha256:' || hex(randomblob(32))",
                      "UPDATE entries SET tag = 'other'", "DELETE FROM entries", "DELETE FROM events"):
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(statement)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_keeps_the_last_three_retired_containers(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    for tag, code in (("good1", 0), ("good2", 0), ("good3", 0), ("checked", 0), ("crash", 1)):
        result = deploy(project, tag)
        assert result.returncode == code, result.stderr
    assert project.version() == "checked"  # crash was reverted by restarting the kept container
    retired = [c for c in docker_client.containers.list(all=True, filters={"name": project.container})
               if c.name != project.container]
    assert len(retired) == 3
    kept = {c.attrs["Config"]["Image"].split("@")[1] for c in retired}
    assert kept == {digest_of(docker_client, t) for t in ("good2", "good3", "crash")}
    # The operator's own tag of the pruned build is left alone.
    assert docker_client.images.get(f"{APP_IMAGE}:good1")


def test_first_deploy_over_a_hand_made_container_puts_it_back_on_failure(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    docker_client.containers.run(f"{APP_IMAGE}:good1", name=project.container, detach=True, network_mode="host",
                                 environment={"PORT": str(project.port)})
    result = deploy(project, "crash")
    assert result.returncode == 3, result.stderr  # no healthy entry in the ledger to revert to
    assert project.version_once_listening() == "good1"  # but the container it replaced runs again
    assert docker_client.containers.get(project.container).attrs["Config"]["Image"] == f"{APP_IMAGE}:good1"
