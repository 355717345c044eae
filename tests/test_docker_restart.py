"""Restart policies, container states and shutdown settings on the real engine (issue 11, items 1 and 7).

Every restart policy (`no`, `on-failure:N`, `always`, `unless-stopped`, and `--rm`) crossed with every
state the operator's container may be in when a deploy starts (running, restarting, paused, exited,
created): the deploy and the automatic revert must each leave the app on a healthy release, the stop
of a failed first release must leave the operator's container as it was, with the operator's policy on
the live container and every retired container down for good (policy "no": the engine never starts it
again, not even when dockerd restarts). An apply that fails at any step (ROLLOUT_TEST_FAIL_AT,
rollout.faults) leaves the old container as it was too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from support.images import APP_IMAGE, digest_of
from support.project import Project, write_config

POLICIES = {
    "no": {"Name": "no", "MaximumRetryCount": 0},
    # Enough retries that a crash loop is still looping when the test looks at it.
    "on-failure:30": {"Name": "on-failure", "MaximumRetryCount": 30},
    "always": {"Name": "always", "MaximumRetryCount": 0},
    "unless-stopped": {"Name": "unless-stopped", "MaximumRetryCount": 0},
}
STATES = ("running", "restarting", "paused", "exited", "created")
NO_RESTART = POLICIES["no"]
RM = "--rm"  # `docker run --rm`: no restart policy, and the engine removes the container once it stops
RM_STATES = ("running", "paused", "created")  # an exited one is gone; without a policy nothing restarts
RM_WARNING = "was started with --rm: rollout keeps the replaced container for a fast revert"
STATE_TIMEOUT = 30.0  # seconds for the engine to reach a state; a loaded 2-core CI machine is slow


def wait_for(what: str, check: Any, seconds: float = STATE_TIMEOUT) -> None:
    """Poll check() (engine state, no fixed sleep) until it is true; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds:g}s waiting for {what}")
        time.sleep(0.05)


def operators_container(docker_client: Any, project: Project, policy: str, state: str, **extra: Any) -> Any:
    """What an operator's `docker run -d --restart POLICY --network host -e PORT=...` left in `state`.

    A restarting container is one that crash-loops: it runs the crash build (its CMD exits 1).
    """
    tag = "crash" if state == "restarting" else "good1"
    options = dict(name=project.container, network_mode="host", environment={"PORT": str(project.port)},
                   restart_policy=policy_of(policy), **extra)
    if policy == RM:
        options["auto_remove"] = True
    if state == "created":
        return docker_client.containers.create(f"{APP_IMAGE}:{tag}", **options)
    container = docker_client.containers.run(f"{APP_IMAGE}:{tag}", detach=True, **options)
    if state == "restarting":
        wait_for("the crash loop", lambda: inspect(docker_client, container.id)["State"]["Restarting"])
    elif state == "paused":
        # The freezer refuses while processes still fork ("unable to freeze"): pause once it serves.
        wait_for("the container to listen", lambda: project.version() is not None)
        wait_for("the pause", lambda: _paused(container))
    elif state == "exited":
        container.stop()
    return container


def policy_of(policy: str) -> dict[str, Any]:
    """The RestartPolicy the engine reports for a container run with `policy`."""
    return POLICIES.get(policy, NO_RESTART)


def _paused(container: Any) -> bool:
    try:
        container.pause()
    except docker.errors.APIError as exc:
        if "freeze" not in str(exc):
            raise
        return False
    return True


def inspect(docker_client: Any, name_or_id: str) -> dict[str, Any]:
    return docker_client.api.inspect_container(name_or_id)


def retired(docker_client: Any, project: Project) -> list[dict[str, Any]]:
    prefix = f"{project.container}.rollout-"
    return [inspect(docker_client, c.id) for c in docker_client.containers.list(all=True, filters={"name": prefix})
            if c.name.startswith(prefix)]


def assert_retired_stay_down(docker_client: Any, project: Project) -> None:
    kept = retired(docker_client, project)
    assert kept, "the replaced container is kept for a fast revert"
    for attrs in kept:
        assert attrs["State"]["Status"] == "exited", (attrs["Name"], attrs["State"])
        assert attrs["HostConfig"]["RestartPolicy"] == NO_RESTART, (attrs["Name"], attrs["HostConfig"]["RestartPolicy"])


def deploy(project: Project, tag: str) -> Any:
    result = project.run("deploy", f"web:{tag}")
    assert "Traceback" not in result.stdout + result.stderr
    return result


MATRIX = [pytest.param(policy, state, id=f"{policy}-{state}") for policy in POLICIES for state in STATES
          if not (policy == "no" and state == "restarting")]  # without a policy nothing restarts
MATRIX += [pytest.param(RM, state, id=f"rm-{state}") for state in RM_STATES]


def assert_as_the_operator_left_it(project: Project, live: dict[str, Any], policy: str, state: str) -> None:
    """The operator's container (live) is in the state it was in before the deploy, with its policy.

    Up before (running, restarting, paused), up after: a paused one comes back running, since
    stopping it ended the processes the pause had frozen. Exited or created, it stays so.
    """
    assert live["Name"] == f"/{project.container}"
    assert live["HostConfig"]["RestartPolicy"] == policy_of(policy)
    if state == "restarting":
        assert live["State"]["Running"], live["State"]  # crash-looping again, as the operator left it
    elif state in ("exited", "created"):
        assert live["State"]["Status"] == state, live["State"]
        assert project.version() is None
    else:
        assert project.version_once_listening() == "good1"


@pytest.mark.parametrize(("policy", "state"), MATRIX)
def test_a_failed_first_release_gives_the_name_back_in_every_policy_and_state(
        project: Project, docker_client: Any, policy: str, state: str) -> None:
    """Apply onto the operator's container in `state`, then stop() of the failed release.

    A failed first release has no healthy entry to go back to (exit 3): it is stopped for good and
    the operator's container takes its name back with its own policy, in the state it was in. A
    `--rm` container, which the engine removed when the deploy stopped it, is created again from
    its own settings (the engine's inspect before and after is the oracle), without `--rm`.
    """
    write_config(project, timeout=15, stable=0.5)
    operator = operators_container(docker_client, project, policy, state)
    before = inspect(docker_client, operator.id)

    result = deploy(project, "crash")

    assert result.returncode == 3, result.stderr
    live = inspect(docker_client, project.container)
    assert_as_the_operator_left_it(project, live, policy, state)
    if policy == RM:
        assert result.stderr.count(RM_WARNING) == 1, result.stderr
        # One that ran was removed by the engine when the deploy stopped it: created again. One that
        # never ran (created) is not removed: it is the operator's own, back under its name.
        assert (live["Id"] == operator.id) == (state == "created")
        assert live["Config"] == before["Config"]
        assert {**live["HostConfig"], "AutoRemove": True} == before["HostConfig"]
    else:
        assert live["Id"] == operator.id
    assert_retired_stay_down(docker_client, project)


# After a deploy the live container runs (or, for a crash-looping one, loops) whatever state it
# started in, so an upgrade and a revert differ only between these two.
UPGRADES = [pytest.param(policy, state, id=f"{policy}-{state}") for policy in POLICIES
            for state in ("running", "restarting") if not (policy == "no" and state == "restarting")]
UPGRADES += [pytest.param(RM, "running", id="rm-running")]


@pytest.mark.parametrize(("policy", "state"), UPGRADES)
def test_upgrade_then_crash_is_reverted_with_the_operators_policy(
        project: Project, docker_client: Any, policy: str, state: str) -> None:
    """Apply onto a running or crash-looping container, then the automatic revert of a crashing release.

    always-running is the issue's own input (`docker run -d --restart always ...`, then a release
    that exits 1 at start): the revert used to fail renaming the restarting crashed container.
    """
    write_config(project, timeout=15, stable=0.5)
    operators_container(docker_client, project, policy, state)

    result = deploy(project, "good2")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(RM_WARNING) == (1 if policy == RM else 0), result.stderr
    assert project.version() == "good2"
    healthy = inspect(docker_client, project.container)
    assert healthy["HostConfig"]["RestartPolicy"] == policy_of(policy)
    assert healthy["HostConfig"]["AutoRemove"] is False  # kept when it is replaced: a revert starts it
    if policy != RM:  # the engine removed the stopped --rm container: nothing is kept
        assert_retired_stay_down(docker_client, project)

    result = deploy(project, "crash")
    assert result.returncode == 1, result.stderr
    assert "REVERT FAILED" not in result.stdout + result.stderr
    assert RM_WARNING not in result.stderr
    assert project.version_once_listening() == "good2"
    live = inspect(docker_client, project.container)
    assert (live["Id"], live["State"]["Status"]) == (healthy["Id"], "running")
    assert live["HostConfig"]["RestartPolicy"] == policy_of(policy)
    assert_retired_stay_down(docker_client, project)


FLUSH_SECONDS = 11  # longer than the 10 s rollout used to give every container before SIGKILL


def test_retiring_honours_the_containers_stop_signal_and_timeout(
        project: Project, docker_client: Any, tmp_path: Path) -> None:
    """An app that needs longer than 10 s to flush on its own stop signal gets that time.

    The old container stops on SIGUSR1 (`--stop-signal`), allows 120 s (`--stop-timeout`), and
    writes which signal stopped it once its (simulated) flush is done; SIGKILL would leave no file.
    """
    out = tmp_path / "out"
    out.mkdir()
    flush = f"trap 'sleep {FLUSH_SECONDS}; echo USR1 > /out/flushed; exit 0' USR1"
    serve = "httpd -f -p 127.0.0.1:$PORT -h /www & wait"
    created = docker_client.api.create_container(
        f"{APP_IMAGE}:good1", name=project.container, command=["sh", "-c", f"{flush}; {serve}"],
        environment={"PORT": str(project.port)}, stop_signal="SIGUSR1", stop_timeout=120,
        host_config=docker_client.api.create_host_config(network_mode="host", binds={str(out): {"bind": "/out"}}),
    )
    docker_client.api.start(created["Id"])
    assert project.version_once_listening() == "good1"
    result = deploy(project, "good2")
    assert result.returncode == 0, result.stderr
    assert (out / "flushed").read_text().strip() == "USR1"
    old = inspect(docker_client, created["Id"])
    assert old["State"]["ExitCode"] == 0, old["State"]  # it exited on its own, not by SIGKILL (137)
    assert project.version() == "good2"


def refusing_settings(kind: str) -> str:
    """rollout.toml settings the engine cannot run: an invalid host port (refused at create), or a
    network that does not exist (accepted at create by this engine, refused only at start)."""
    if kind == "invalid port":
        return 'ports = { "8080/tcp" = "127.0.0.1:99999" }'
    return 'network = "rollout-test-no-such-network"'


# The new container is created before the old one is touched, whatever state that one is in.
REFUSALS = [("invalid port", "running"), ("invalid port", "paused"), ("invalid port", "exited"),
            ("invalid port", "restarting"), ("unknown network", "running")]


@pytest.mark.parametrize(("kind", "state"), REFUSALS)
def test_a_refused_create_leaves_the_old_container_as_it_was(
        project: Project, docker_client: Any, kind: str, state: str) -> None:
    write_config(project, timeout=15, stable=0.5)
    if kind == "unknown network":
        # `network` replaces the line write_config wrote; the port stays given by env.
        project.config.write_text(project.config.read_text().replace('network = "host"', refusing_settings(kind)))
    else:
        write_config(project, timeout=15, stable=0.5, extra=refusing_settings(kind))
    operator = operators_container(docker_client, project, "always" if state == "restarting" else "no", state)
    before = inspect(docker_client, operator.id)

    result = deploy(project, "good2")

    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rollout: error:")]
    assert len(errors) == 1, result.stderr
    assert ("99999" if kind == "invalid port" else "rollout-test-no-such-network") in errors[0]
    assert "REVERT" not in result.stdout + result.stderr
    [entry] = project.history()  # failed, and no revert entry: nothing changed
    assert (entry["kind"], entry["status"]) == ("deploy", "failed")
    after = inspect(docker_client, project.container)
    assert after["Id"] == operator.id
    assert retired(docker_client, project) == []  # no new container left behind, nothing renamed
    if state == "restarting":
        # Still looping under its own policy (its restart count and start time move on by themselves).
        assert after["HostConfig"]["RestartPolicy"] == POLICIES["always"]
        assert after["State"]["Running"], after["State"]
    else:
        assert after == before  # the engine's own view: not a field changed
    if state == "running":
        assert project.version() == "good1"


# Moments of an apply after the old container was touched (rollout.faults): the old one set aside but
# still running; the new one under the name and the old one stopped; the new one started.
HALF_WAY = ("docker:renamed#1", "docker:stopped#1", "docker:started#1")


@pytest.mark.parametrize("moment", HALF_WAY)
@pytest.mark.parametrize("state", ("running", "exited"))
def test_an_apply_failing_half_way_leaves_the_old_container_as_it_was(
        project: Project, docker_client: Any, moment: str, state: str) -> None:
    """No healthy entry to revert to (the operator's container is the first rollout sees): stop()
    undoes the apply from wherever it failed, and the exit-3 message is true."""
    write_config(project, timeout=15, stable=0.5)
    operator = operators_container(docker_client, project, "always", state)
    project.env["ROLLOUT_TEST_FAIL_AT"] = moment

    result = deploy(project, "good2")

    assert result.returncode == 3, result.stderr
    assert "fault injected at " + moment in result.stdout + result.stderr
    live = inspect(docker_client, project.container)
    assert live["Id"] == operator.id
    assert_as_the_operator_left_it(project, live, "always", state)
    kept = retired(docker_client, project)
    if moment == "docker:started#1":  # it ran: kept, down for good, like any failed release
        assert_retired_stay_down(docker_client, project)
    else:  # it never started: nothing to keep
        assert kept == []


def test_an_error_before_the_old_container_is_touched_is_not_applied(project: Project, docker_client: Any) -> None:
    """Any error while the new container is prepared (here one injected once it is created) changes
    nothing: exit 5, no revert, the new container removed, the old one exactly as it was."""
    write_config(project, timeout=15, stable=0.5)
    operator = operators_container(docker_client, project, "always", "running")
    before = inspect(docker_client, operator.id)
    project.env["ROLLOUT_TEST_FAIL_AT"] = "docker:created#1"

    result = deploy(project, "good2")

    assert result.returncode == 5, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rollout: error:")]
    assert len(errors) == 1 and "fault injected at docker:created#1" in errors[0], result.stderr
    assert f"{project.container} left as it was" in errors[0]
    assert "REVERT" not in result.stdout + result.stderr
    [entry] = project.history()  # failed, and no revert entry: nothing changed
    assert (entry["kind"], entry["status"]) == ("deploy", "failed")
    assert inspect(docker_client, project.container) == before
    assert retired(docker_client, project) == []
    assert project.version() == "good1"


def test_a_new_container_a_killed_run_left_is_pruned_not_taken_back(project: Project, docker_client: Any) -> None:
    """NAME.rollout-new-* (a run killed between create and rename) never served: the next deploy
    removes it, even when it runs the very release asked for, and creates its own."""
    write_config(project, timeout=15, stable=0.5)
    operators_container(docker_client, project, "no", "running")
    image = f"{APP_IMAGE}@{digest_of(docker_client, 'good2')}"
    leftover = docker_client.containers.create(image, name=f"{project.container}.rollout-new-1-0a1b2c",
                                               network_mode="host", environment={"PORT": "1"})

    result = deploy(project, "good2")

    assert result.returncode == 0, result.stderr
    assert project.version() == "good2"
    assert inspect(docker_client, project.container)["Id"] != leftover.id
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(leftover.id)
