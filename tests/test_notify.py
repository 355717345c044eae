"""Notifications end to end: the real CLI deploys on the real engine and a real HTTP receiver on
127.0.0.1 records what the webhooks get."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from support.ports import free_port
from support.project import Project, write_config
from support.receiver import start_receiver

from rollout import notify
from rollout.config import notify_settings



def notify_config(project: Project, *urls: str, extra: str = "") -> None:
    listed = ", ".join(json.dumps(u) for u in urls)
    write_config(project, extra=f"\n[notify]\nurls = [{listed}]\ntimeout = 2\n{extra}")


def test_a_healthy_deploy_sends_started_then_healthy(project: Project) -> None:
    with start_receiver() as receiver:
        notify_config(project, receiver.url("/hook"), "slack+" + receiver.url("/slack"))
        result = project.run("deploy", "web:good1")
        assert result.returncode == 0, result.stderr
        [entry] = project.history()

        assert receiver.events("/hook") == ["started", "healthy"]
        for request in receiver.at("/hook"):
            body = request.json()
            assert request.headers["Content-Type"] == "application/json"
            assert (body["app"], body["entry"], body["kind"], body["tag"], body["digest"]) == (
                "web", entry["id"], "deploy", "good1", entry["digest"])
            assert body["repository"] == entry["repository"]
        # The Slack-compatible endpoint gets one human line per event, and nothing else.
        texts = [r.json() for r in receiver.at("/slack")]
        assert [set(t) for t in texts] == [{"text"}, {"text"}]
        assert "started" in texts[0]["text"] and "good1" in texts[0]["text"]
        assert "healthy" in texts[1]["text"] and f"#{entry['id']}" in texts[1]["text"]


def test_a_crash_sends_started_failed_reverted(project: Project) -> None:
    assert project.run("deploy", "web:good1").returncode == 0
    with start_receiver() as receiver:
        notify_config(project, receiver.url())
        result = project.run("deploy", "web:crash")
        assert result.returncode == 1, result.stderr
        revert, failed, good = project.history()

        assert receiver.events() == ["started", "failed", "reverted"]
        started, failure, reverted = (r.json() for r in receiver.at("/hook"))
        assert (started["entry"], started["tag"]) == (failed["id"], "crash")
        assert (failure["entry"], failure["failed_targets"]) == (failed["id"], ["local"])
        assert "exited with code 1" in failure["reason"]
        assert (reverted["entry"], reverted["kind"], reverted["tag"], reverted["digest"]) == (
            revert["id"], "revert", "good1", good["digest"])
        assert (reverted["reverts_to"], reverted["failed_entry"]) == (good["id"], failed["id"])


def test_events_can_be_chosen(project: Project) -> None:
    with start_receiver() as receiver:
        notify_config(project, receiver.url(), extra='events = ["failed", "reverted", "revert_failed"]')
        assert project.run("deploy", "web:good1").returncode == 0
        assert receiver.requests == []  # a healthy deploy is not worth a message here
        assert project.run("deploy", "web:crash").returncode == 1
        assert receiver.events() == ["failed", "reverted"]


@pytest.mark.parametrize("tag, exit_code", [("good1", 0), ("crash", 3)])
def test_a_receiver_answering_500_does_not_change_the_outcome(project: Project, tag: str, exit_code: int) -> None:
    with start_receiver(status=500) as receiver:
        notify_config(project, receiver.url())
        result = project.run("deploy", f"web:{tag}")
        assert result.returncode == exit_code, result.stderr
        # Each event was tried a bounded number of times, then given up with one warning line.
        per_event = {}
        for request in receiver.at("/hook"):
            per_event[request.json()["event"]] = per_event.get(request.json()["event"], 0) + 1
        assert per_event["started"] == 3
        warnings = [line for line in result.stderr.splitlines() if "notification" in line]
        assert len(warnings) == len(per_event), result.stderr
        assert all("HTTP 500" in line and f"127.0.0.1:{receiver.port}" in line for line in warnings)
    assert "Traceback" not in result.stderr


def test_a_receiver_that_is_down_does_not_change_the_outcome(project: Project) -> None:
    assert project.run("deploy", "web:good1").returncode == 0
    down = f"http://127.0.0.1:{free_port()}/hook"
    notify_config(project, down)
    result = project.run("deploy", "web:crash")
    assert result.returncode == 1, result.stderr
    assert project.version() == "good1"
    warnings = [line for line in result.stderr.splitlines() if "notification" in line]
    assert len(warnings) == 3 and all("cannot connect" in line for line in warnings), result.stderr


def test_no_secret_is_ever_sent_or_printed(project: Project, tmp_path: Path) -> None:
    registry_password = "registry-Pa55-never-sent"
    encoded = base64.b64encode(f"deployer:{registry_password}".encode()).decode()
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": encoded}}}))
    project.env["DOCKER_CONFIG"] = str(docker_config)
    hook_password, down_password, down_token = "hook-Pa55-in-url", "down-Pa55-in-url", "query-T0ken"
    project.env["HOOK_PATH"] = "services/T000/B000/path-T0ken-from-env"
    with start_receiver() as receiver:
        down = f"http://ops:{down_password}@127.0.0.1:{free_port()}/hook?token={down_token}"
        notify_config(project, receiver.url("/hook", f"ops:{hook_password}"),
                      "slack+" + receiver.url("/${HOOK_PATH}"), down)
        outputs = []
        for tag in ("good1", "crash"):
            result = project.run("deploy", f"web:{tag}")
            outputs += [result.stdout, result.stderr]
        assert result.returncode == 1

        # The webhook's own credentials go where they belong: the Authorization header.
        hook = receiver.at("/hook")
        assert hook and all(r.headers["Authorization"] == "Basic " + base64.b64encode(
            f"ops:{hook_password}".encode()).decode() for r in hook)
        assert len(receiver.at("/" + project.env["HOOK_PATH"])) == len(hook)
        bodies = b"".join(r.body for r in receiver.requests).decode()
        for body in (r.json() for r in hook):
            assert set(body) <= set(notify.PAYLOAD_KEYS) | {"message", "time"}
    printed = "".join(outputs)
    assert f"127.0.0.1:{down.split(':')[3].split('/')[0]}/…" in printed  # the broken URL is named, redacted
    for secret in (registry_password, encoded, hook_password, down_password, down_token, "path-T0ken-from-env"):
        assert secret not in bodies
        assert secret not in printed


def test_a_bad_notify_table_is_a_config_error_and_nothing_changes(project: Project) -> None:
    write_config(project, extra='\n[notify]\nurl = ["http://127.0.0.1:9/hook"]\n')
    result = project.run("deploy", "web:good1")
    assert result.returncode == 2
    assert "notify.url" in result.stderr and str(project.config) in result.stderr
    notify_config(project, "https://hooks.example/${ROLLOUT_TEST_UNSET_HOOK}")
    result = project.run("deploy", "web:good1")
    assert result.returncode == 2
    assert "ROLLOUT_TEST_UNSET_HOOK" in result.stderr and "notify.urls[0]" in result.stderr
    # Only a command that may notify needs the variable: reading the ledger does not.
    assert project.history() == []
    assert project.run("status").returncode == 0
    assert project.version() is None


def test_rebuild_outcomes_the_orchestrator_never_sees_are_sent() -> None:
    from rollout.rebuild import RebuildResult

    warnings: list[str] = []
    with start_receiver() as receiver:
        settings = notify_settings({"urls": [receiver.url()]}, Path("rollout.toml"))
        assert "rebuild_skipped" not in settings.events  # a cron job's "nothing to do" is opt-in
        settings = notify_settings({"urls": [receiver.url()], "events": list(notify.EVENTS)}, Path("rollout.toml"))
        notifier = notify.Notifier(settings, warnings.append)
        skipped = RebuildResult("web", 0, "up-to-date", "web: up to date: build 20250101.3 has these inputs",
                                tag="20250101.3", digest="sha256:" + "a" * 64)
        built = RebuildResult("web", 0, "built", "built and pushed", tag="20250101.4", digest="sha256:" + "b" * 64)
        deployed = RebuildResult("web", 0, "deployed", "#7 healthy")
        for result in (skipped, built, deployed):
            event = notify.rebuild_event(result, "127.0.0.1:5000/web")
            if event is not None:
                notifier(*event)
        assert notifier.drain(30)
        bodies = [r.json() for r in receiver.at("/hook")]
    assert [b["event"] for b in bodies] == ["rebuild_skipped", "rebuild_built"]
    assert bodies[1]["tag"] == "20250101.4" and bodies[1]["repository"] == "127.0.0.1:5000/web"
    assert "20250101.4" in bodies[1]["message"]
    assert warnings == []


def test_apprise_urls_are_sent_through_apprise(project: Project) -> None:
    pytest.importorskip("apprise", reason="the optional `notify` extra (Apprise) is not installed")
    with start_receiver() as receiver:
        notify_config(project, f"json://127.0.0.1:{receiver.port}/apprise")
        result = project.run("deploy", "web:good1")
        assert result.returncode == 0, result.stderr
        bodies: list[dict[str, Any]] = [r.json() for r in receiver.at("/apprise")]
    assert len(bodies) == 2, result.stderr
    assert "started" in bodies[0]["message"] and "healthy" in bodies[1]["message"]


def test_the_url_scheme_decides_the_payload_and_what_is_printed() -> None:
    settings = notify_settings({"urls": [
        "https://hooks.slack.com/services/T0/B0/slackSecret",
        "slack+https://chat.example.com/hooks/mmSecret",
        "https://user:pw@ops.example.com:8443/hook?token=qSecret",
    ]}, Path("rollout.toml"))
    assert [(c.style, c.url) for c in settings.channels] == [
        ("slack", "https://hooks.slack.com/services/T0/B0/slackSecret"),
        ("slack", "https://chat.example.com/hooks/mmSecret"),
        ("json", "https://user:pw@ops.example.com:8443/hook?token=qSecret"),
    ]
    assert [c.shown for c in settings.channels] == [
        "https://hooks.slack.com/…", "https://chat.example.com/…", "https://ops.example.com:8443/…"]
    assert notify.redact_url("tgram://123456:botSecret/chat") == "tgram://…"
    payload = {"event": "failed", "app": "web", "entry": 3, "tag": "1.2", "digest": "sha256:" + "c" * 64,
               "reason": "pull from https://bob:hunter2@reg.example/v2 failed", "registry_auth": "hunter2"}
    cleaned = notify.clean_payload(payload)
    assert "registry_auth" not in cleaned and "hunter2" not in str(cleaned)
    assert "https://***@reg.example/v2" in str(cleaned["reason"])


SENT = {"event": "failed", "app": "web", "entry": 2, "tag": "crash", "digest": "sha256:" + "c" * 64}


@pytest.mark.parametrize("answers, accepted, warning", [
    ([200], True, None),
    ([500, 204], True, None),  # a server error is worth another try
    ([503, 429, 200], True, None),  # so is "too many requests"
    ([500, 502, 500], False, "HTTP 500 (3 tries)"),  # three tries at most, the last answer named
    ([400], False, "HTTP 400 (1 try)"),  # the receiver refused this request: asking again will not help
    ([404], False, "HTTP 404 (1 try)"),
    ([302], False, "HTTP 302 (1 try)"),  # redirects are not followed (they could carry the body elsewhere)
])
def test_a_notification_is_retried_only_when_another_try_can_help(answers: list[int], accepted: bool,
                                                                  warning: str | None) -> None:
    warnings: list[str] = []
    with start_receiver() as receiver:
        receiver.statuses = list(answers)
        channel = notify.Channel(receiver.url("/hook"), "json")
        assert notify.send(channel, SENT, 2.0, warnings.append) is accepted
        arrivals = [r.received_at for r in receiver.at("/hook")]
    assert len(arrivals) == len(answers)
    # Pauses between tries grow (0.5 s, then 1.5 s): a receiver that is briefly overloaded gets air.
    for gap, least in zip([b - a for a, b in zip(arrivals, arrivals[1:])], notify.BACKOFF_SECONDS):
        assert gap >= least
    if warning is None:
        assert warnings == []
    else:
        [line] = warnings
        assert line == (f"warning: notification failed to http://127.0.0.1:{receiver.port}/… failed: {warning};"
                        " the rollout is not affected")


def test_a_receiver_that_is_down_is_tried_three_times() -> None:
    warnings: list[str] = []
    channel = notify.Channel(f"http://127.0.0.1:{free_port()}/hook", "json")
    assert notify.send(channel, SENT, 2.0, warnings.append) is False
    assert warnings == [f"warning: notification failed to {channel.shown} failed: cannot connect (3 tries);"
                        " the rollout is not affected"]


@pytest.mark.parametrize("answers, accepted", [([500, 200], True), ([500, 500, 500], False)])
def test_an_apprise_notification_is_retried_like_a_webhook(answers: list[int], accepted: bool) -> None:
    pytest.importorskip("apprise", reason="the optional `notify` extra (Apprise) is not installed")
    warnings: list[str] = []
    with start_receiver() as receiver:
        receiver.statuses = list(answers)
        channel = notify.Channel(f"json://127.0.0.1:{receiver.port}/apprise", "apprise")
        assert notify.send(channel, SENT, 2.0, warnings.append) is accepted
        assert len(receiver.at("/apprise")) == len(answers)
    assert warnings == ([] if accepted else
                        ["warning: notification failed to json://… failed (3 tries); the rollout is not affected"])
