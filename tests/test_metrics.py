"""`--metrics-file` / `--pushgateway`: what a cron job's alerting reads, checked with prometheus-client's own parser."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.project import Project
from support.receiver import start_receiver

pytestmark = pytest.mark.usefixtures("project")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of a Prometheus text exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, frozenset(labels.items()))]


def read(path: Path) -> dict:
    return samples(path.read_text())


def test_a_healthy_deploy_writes_its_run_and_the_current_digest(project: Project, tmp_path: Path) -> None:
    metrics = tmp_path / "textfile" / "rollout.prom"
    metrics.parent.mkdir()
    before = time.time()
    result = project.run("deploy", "web:good1", "--metrics-file", str(metrics))
    after = time.time()
    assert result.returncode == 0, result.stderr
    [entry] = project.history()

    parsed = read(metrics)
    run = {"app": "web", "command": "deploy"}
    assert value(parsed, "rollout_last_run_exit_code", **run) == 0
    assert value(parsed, "rollout_last_run_success", **run) == 1
    assert value(parsed, "rollout_last_run_outcome", **run, outcome="ok") == 1
    assert value(parsed, "rollout_last_run_outcome", **run, outcome="reverted") == 0
    assert before <= value(parsed, "rollout_last_run_timestamp_seconds", **run) <= after
    assert 0 < value(parsed, "rollout_last_run_duration_seconds", **run) <= after - before
    assert value(parsed, "rollout_current_info", app="web", tag="good1", digest=entry["digest"]) == 1
    assert value(parsed, "rollout_current_entry", app="web") == entry["id"]
    assert value(parsed, "rollout_reverts_total", app="web") == 0
    assert value(parsed, "rollout_entries_total", app="web", kind="deploy", status="healthy") == 1
    # Written by rename: no temporary file is left for the textfile collector to trip over.
    assert sorted(p.name for p in metrics.parent.iterdir() if not p.name.startswith(".")) == ["rollout.prom"]


def test_after_a_revert_the_file_shows_the_outcome_and_counts_it(project: Project, tmp_path: Path) -> None:
    metrics = tmp_path / "rollout.prom"
    assert project.run("deploy", "web:good1", "--metrics-file", str(metrics)).returncode == 0
    assert project.run("deploy", "web:good2", "--metrics-file", str(metrics)).returncode == 0
    result = project.run("deploy", "web:crash", "--metrics-file", str(metrics))
    assert result.returncode == 1, result.stderr
    revert, failed, good, _ = project.history()

    parsed = read(metrics)
    run = {"app": "web", "command": "deploy"}
    assert value(parsed, "rollout_last_run_exit_code", **run) == 1
    assert value(parsed, "rollout_last_run_success", **run) == 0
    assert value(parsed, "rollout_last_run_outcome", **run, outcome="reverted") == 1
    assert value(parsed, "rollout_last_run_outcome", **run, outcome="ok") == 0
    # Current is the revert entry: good2's digest again, and only one current series.
    current = [labels for (name, labels), v in parsed.items() if name == "rollout_current_info"]
    assert current == [frozenset({"app": "web", "tag": "good2", "digest": good["digest"]}.items())]
    assert value(parsed, "rollout_current_entry", app="web") == revert["id"]
    assert value(parsed, "rollout_reverts_total", app="web") == 1
    assert value(parsed, "rollout_entries_total", app="web", kind="deploy", status="failed") == 1

    # A manual revert (to good1, not running) is another command: its series join the deploy's,
    # which stay as they were.
    result = project.run("revert", "--to", "good1", "--metrics-file", str(metrics))
    assert result.returncode == 0, result.stderr
    parsed = read(metrics)
    assert value(parsed, "rollout_last_run_exit_code", app="web", command="revert") == result.returncode
    assert value(parsed, "rollout_last_run_exit_code", **run) == 1
    assert value(parsed, "rollout_reverts_total", app="web") == 2


def test_a_config_error_still_records_the_run_for_a_known_app(project: Project, tmp_path: Path) -> None:
    metrics = tmp_path / "rollout.prom"
    result = project.run("deploy", "web:no-such-tag", "--metrics-file", str(metrics))
    assert result.returncode == 2, result.stderr
    parsed = read(metrics)
    assert value(parsed, "rollout_last_run_outcome", app="web", command="deploy", outcome="usage_error") == 1
    assert not any(name == "rollout_current_info" for name, _ in parsed)


def test_an_unwritable_metrics_path_does_not_change_the_exit_code(project: Project, tmp_path: Path) -> None:
    result = project.run("deploy", "web:good1", "--metrics-file", str(tmp_path / "missing-dir" / "rollout.prom"))
    assert result.returncode == 0, result.stderr
    assert project.version() == "good1"
    [warning] = [line for line in result.stderr.splitlines() if "metrics" in line]
    assert "not written" in warning


def test_pushgateway_gets_the_same_metrics(project: Project) -> None:
    with start_receiver() as gateway:
        result = project.run("deploy", "web:good1", "--pushgateway", f"http://127.0.0.1:{gateway.port}")
        assert result.returncode == 0, result.stderr
        [push] = gateway.requests
    assert (push.method, push.path) == ("PUT", "/metrics/job/rollout/app/web")
    parsed = samples(push.body.decode())
    assert value(parsed, "rollout_last_run_success", app="web", command="deploy") == 1
    [entry] = project.history()
    assert value(parsed, "rollout_current_info", app="web", tag="good1", digest=entry["digest"]) == 1


def test_a_pushgateway_that_is_down_is_a_warning_without_its_credentials(project: Project) -> None:
    from support.ports import free_port

    result = project.run("deploy", "web:good1", "--pushgateway", f"http://job:gw-Secret@127.0.0.1:{free_port()}")
    assert result.returncode == 0, result.stderr
    [warning] = [line for line in result.stderr.splitlines() if "pushed" in line]
    assert "127.0.0.1" in warning and "gw-Secret" not in result.stderr + result.stdout
