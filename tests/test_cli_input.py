"""The real `rollout` command on bad input: exit codes, one-line errors, no traceback, nothing written.

None of these paths needs the Docker engine or a registry: they fail before either is asked,
or point the image at a closed port.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from support.cli import run_rollout
from support.errors import one_line_error
from support.raw_ledger import is_postgres, run_sql

CONFIG = """
[apps.web]
image = "{image}"

[apps.web.health]
timeout = 5

[[apps.web.targets]]
name = "local"
kind = "docker"
container = "rollout-cli-input-never-created"
network = "host"
"""


class Cli:
    def __init__(self, root: Path, ledger_url: str | None = None) -> None:
        self.root = root
        self.config = root / "rollout.toml"
        self.ledger = root / "state" / "ledger.db"
        # A PostgreSQL ledger reaches every run as $ROLLOUT_LEDGER_URL; None: the SQLite file above.
        self.env = {"ROLLOUT_LEDGER_URL": ledger_url} if ledger_url else {}

    def write(self, text: str | None = None, image: str = "127.0.0.1:1/shop/web") -> None:
        self.config.write_text(text if text is not None else CONFIG.format(image=image))

    def run(self, *args: str, config: bool = True) -> subprocess.CompletedProcess[str]:
        return run_rollout(*(["-c", str(self.config)] if config else []), *args, env=self.env, cwd=self.root,
                           timeout=60)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    bed = Cli(tmp_path)
    bed.write()
    return bed


@pytest.fixture
def ledger_cli(tmp_path: Path, ledger_location: str) -> Cli:
    """`cli` once per ledger backend (ledger_location): the lock commands on SQLite and PostgreSQL (issue 13)."""
    bed = Cli(tmp_path, ledger_location if is_postgres(ledger_location) else None)
    assert bed.env or Path(ledger_location) == bed.ledger  # the SQLite ledger is the config's default file
    bed.write()
    return bed


def test_unknown_app_is_refused_before_the_ledger_exists(cli: Cli) -> None:
    line = one_line_error(cli.run("deploy", "shop:v1"), 2)
    assert "names no configured app" in line and "web (127.0.0.1:1/shop/web)" in line
    assert not cli.ledger.exists() and not cli.ledger.parent.exists()


def test_malformed_toml_names_the_file(cli: Cli) -> None:
    cli.write("[apps.web\nimage = 'x'\n")
    line = one_line_error(cli.run("deploy", "web:v1"), 2)
    assert str(cli.config) in line and "not valid TOML" in line
    assert not cli.ledger.exists()


def test_unknown_key_is_named(cli: Cli) -> None:
    cli.write(CONFIG.format(image="127.0.0.1:1/shop/web").replace("timeout = 5", "timeout = 5\nretries = 3"))
    line = one_line_error(cli.run("deploy", "web:v1"), 2)
    assert "unknown key apps.web.health.retries" in line and str(cli.config) in line


def test_missing_config_names_the_path(cli: Cli) -> None:
    cli.config.unlink()
    line = one_line_error(cli.run("deploy", "web:v1"), 2)
    assert f"config file {cli.config} not found" in line


def test_missing_default_config(cli: Cli) -> None:
    cli.config.unlink()
    line = one_line_error(cli.run("deploy", "web:v1", config=False), 2)
    assert "rollout.toml not found" in line


def test_app_without_tag_is_refused(cli: Cli) -> None:
    line = one_line_error(cli.run("deploy", "web"), 2)
    assert "give a tag or digest: rollout deploy web:TAG" in line
    assert not cli.ledger.exists()


@pytest.mark.parametrize("release", ["web:bad tag", "web:$(rm -rf /)", "web:v1\nmalicious", "web:v1\r\nx", "web:",
                                     "web@sha256:abc", "web:-v1", "web:v1;reboot"])
def test_invalid_reference_is_one_line_and_changes_nothing(cli: Cli, release: str) -> None:
    line = one_line_error(cli.run("deploy", release), 2)
    assert "invalid" in line or "give a tag" in line
    assert not cli.ledger.exists()


def test_unreachable_registry_exits_5_and_records_nothing(cli: Cli) -> None:
    last = one_line_error(cli.run("deploy", "web:v1"), 5, after="warnings")
    assert "127.0.0.1:1" in last
    if cli.ledger.exists():
        with sqlite3.connect(cli.ledger) as conn:
            assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM locks").fetchone()[0] == 0


def test_history_json_on_an_empty_ledger(cli: Cli) -> None:
    result = cli.run("history", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_history_of_an_unknown_app(cli: Cli) -> None:
    line = one_line_error(cli.run("history", "shop"), 2)
    assert "unknown app 'shop'" in line and "web" in line


def test_history_without_a_config(tmp_path: Path) -> None:
    bed = Cli(tmp_path)
    result = bed.run("history", config=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:3] == ["ID", "APP", "KIND"]


def test_lock_status_with_no_locks(ledger_cli: Cli) -> None:
    cli = ledger_cli
    result = cli.run("lock", "status")
    assert (result.returncode, result.stdout.strip()) == (0, "no locks held")
    result = cli.run("lock", "status", "--json")
    assert (result.returncode, json.loads(result.stdout)) == (0, [])


def test_lock_release_of_an_unlocked_app(ledger_cli: Cli) -> None:
    cli = ledger_cli
    result = cli.run("lock", "release", "web")
    assert (result.returncode, result.stdout.strip()) == (0, "web was not locked")


def test_lock_status_and_release_of_a_planted_lease(ledger_cli: Cli, ledger_location: str) -> None:
    from rollout.ledger import open_ledger

    cli = ledger_cli
    ledger = open_ledger(ledger_location)
    try:
        run_sql(ledger, "INSERT INTO locks (app, holder, host, pid, acquired_at, expires_at)"
                        " VALUES ('web', 'bob@elsewhere', 'elsewhere.invalid', 4242, ?, 9e12)",
                ["2024-05-01T10:00:00+00:00"])
    finally:
        ledger.close()
    status = cli.run("lock", "status")
    assert status.returncode == 0 and "bob@elsewhere" in status.stdout and "held" in status.stdout
    released = cli.run("lock", "release", "web")
    assert released.returncode == 0 and "released web (held by bob@elsewhere (pid 4242" in released.stdout
    assert cli.run("lock", "status").stdout.strip() == "no locks held"


def test_corrupted_ledger_is_a_one_line_error(cli: Cli) -> None:
    cli.ledger.parent.mkdir()
    cli.ledger.write_bytes(os.urandom(4096))
    line = one_line_error(cli.run("history"), 2)
    assert str(cli.ledger) in line


@pytest.mark.parametrize(("args", "named", "command"), [
    (("history", "-n", "0"), "0 is not in the range", "rollout history"),
    (("deploy", "--no-such-option", "web:v1"), "No such option: --no-such-option", "rollout deploy"),
    (("no-such-command",), "No such command 'no-such-command'", "rollout"),
    (("deploy", "web:v1", "--wait", "soon"), "'soon' is not a valid float", "rollout deploy"),
])
def test_usage_errors_are_one_line_naming_the_help_to_read(cli: Cli, args: tuple[str, ...], named: str,
                                                            command: str) -> None:
    line = one_line_error(cli.run(*args), 2)
    assert named in line and line.endswith(f"see `{command} --help`")
    assert not cli.ledger.exists()


def test_bare_rollout_prints_the_help() -> None:
    result = run_rollout(timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "deploy" in result.stdout and "revert" in result.stdout
