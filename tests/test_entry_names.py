"""Naming a ledger entry (`rollout revert --to`): `#ID`/`id:ID` is an entry, a bare value is a tag,
and a bare number that could be either is refused naming both readings (rollout.entries).

With CI build numbers as tags (`1`, `2`, `3`), `--to 2` used to revert silently to entry #2,
whatever its tag. The rule's cases run on a real ledger of each backend (a SQLite file and a
PostgreSQL database: ledger_location, issue 13; ids beyond either's integer type included); the
refusals through the real CLI (no engine needed: they stop before anything is asked); one test
reverts on the real engine and registry to show which release each form brings back.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from rollout.entries import name_entry
from rollout.errors import UserError
from rollout.ledger import HEALTHY, LedgerBackend, NewEntry, open_ledger
from support.cli import ROLLOUT, rollout_env
from support.images import APP_IMAGE
from support.project import Project, write_config
from support.raw_ledger import is_postgres, raw
NUMBERED = f"{APP_IMAGE.rsplit('/', 1)[0]}/numbered"  # tags 1, 2, 3: the test builds good1, good2, good3


def plant(ledger: LedgerBackend, app: str, tag: str | None, status: str = HEALTHY) -> int:
    entry = ledger.record(NewEntry(app=app, repository=f"127.0.0.1:1/shop/{app}", tag=tag,
                                   digest="sha256:" + uuid.uuid4().hex * 2))
    ledger.set_status(entry.id, status, error=None if status == HEALTHY else "planted")
    return entry.id


@pytest.fixture
def empty(ledger_location: str) -> Iterator[LedgerBackend]:
    """A new ledger, once per backend (ledger_location), closed after the test."""
    opened = open_ledger(ledger_location)
    yield opened
    opened.close()


@pytest.fixture
def ledger(empty: LedgerBackend) -> Iterator[LedgerBackend]:
    """web: #1 tag 0.9, #2 tag 1, #3 tag 2, #4 tag 3; api: #5 tag 1; web: #6 tag 2 failed, #7 tag 1.0.5."""
    opened = empty
    for tag in ("0.9", "1", "2", "3"):
        plant(opened, "web", tag)
    plant(opened, "api", "1")
    plant(opened, "web", "2", status="failed")
    plant(opened, "web", "1.0.5")
    yield opened


@pytest.mark.parametrize(("text", "entry_id"), [
    ("#2", 2), ("id:2", 2), ("#02", 2),  # an entry, by its id
    ("tag:2", 3), ("tag:3", 4), ("1.0.5", 7), ("tag:1.0.5", 7),  # a tag: its newest healthy entry
    ("7", 7),  # a number that is only an entry id of web (no tag 7): that entry, as always
])
def test_each_form_names_the_entry_a_user_means(ledger: LedgerBackend, text: str, entry_id: int) -> None:
    named = name_entry(ledger, "web", text)
    assert named.entry.id == entry_id and named.entry.app == "web"
    assert f"entry #{entry_id}" in named.how


def test_a_bare_number_that_is_an_entry_and_a_tag_is_refused_naming_both(ledger: LedgerBackend) -> None:
    with pytest.raises(UserError) as refused:
        name_entry(ledger, "web", "2")
    assert str(refused.value) == ("--to 2 is ambiguous: entry #2 (tag 1) or tag 2 (entry #3):"
                                  " write --to '#2' (or id:2) or --to tag:2")


def test_a_number_whose_two_readings_are_one_entry_is_not_ambiguous(empty: LedgerBackend) -> None:
    ledger = empty
    plant(ledger, "web", "1")
    assert name_entry(ledger, "web", "1").entry.id == 1


def test_a_tag_deployed_twice_names_its_newest_healthy_entry_and_says_so(ledger: LedgerBackend) -> None:
    again = plant(ledger, "web", "2")
    named = name_entry(ledger, "web", "tag:2")
    assert named.entry.id == again
    assert named.how == f"--to tag:2: entry #{again} (tag 2, the newest healthy of #3, #{again})"


def test_a_number_only_an_entry_id_says_which_entry_it_took(ledger: LedgerBackend) -> None:
    assert name_entry(ledger, "web", "7").how == "--to 7: entry #7 (tag 1.0.5); no entry of web has tag 7"


@pytest.mark.parametrize(("text", "said"), [
    ("#5", "entry #5 belongs to app api, not web"),
    ("9", "no entry of web has tag '9' and there is no entry #9"),
    ("5", "no entry of web has tag '5' and entry #5 belongs to app api"),
    ("#99", "there is no entry #99"),
    ("#99999999999999999999", "there is no entry #99999999999999999999"),  # beyond SQLite's INTEGER
    ("99999999999999999999", "no entry of web has tag '99999999999999999999'"),
    ("#" + "1" * 5000, "there is no entry #" + "1" * 5000),  # beyond what int() reads (4300 digits)
    ("1" * 5000, "no entry of web has tag"),
    ("#abc", "'abc' is not an entry id"),
    ("id:", "'' is not an entry id"),
    ("#²", "'²' is not an entry id"),
    ("tag:9.9", "no entry of web has tag '9.9'"),
    ("02", "no entry of web has tag '02'"),  # leading zero: a tag, never entry #2
    ("", "--to needs an entry ('#ID') or a tag"),
])
def test_what_names_no_entry_of_the_app_is_refused(ledger: LedgerBackend, text: str, said: str) -> None:
    with pytest.raises(UserError) as refused:
        name_entry(ledger, "web", text)
    assert said in str(refused.value) and "\n" not in str(refused.value)


def test_a_tag_that_was_never_healthy_says_so(empty: LedgerBackend) -> None:
    ledger = empty
    plant(ledger, "web", "1")
    plant(ledger, "web", "8", status="failed")
    with pytest.raises(UserError) as refused:
        name_entry(ledger, "web", "8")
    assert "tag 8 of web was never healthy (#2 failed)" in str(refused.value)
    # Both readings exist, even if the tag never got healthy: still refused, not a silent entry.
    plant(ledger, "web", "2", status="failed")
    with pytest.raises(UserError) as refused:
        name_entry(ledger, "web", "2")
    assert "--to 2 is ambiguous: entry #2 (tag 8) or tag 2 (never healthy: #3 failed)" in str(refused.value)


# -- through the command ----------------------------------------------------------------------

CONFIG = """
[apps.web]
image = "127.0.0.1:1/shop/web"

[[apps.web.targets]]
name = "local"
kind = "docker"
container = "rollout-entry-names-never-created"
network = "host"
"""


def revert_cli(root: Path, ledger_location: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`rollout revert web ARGS...` with root's rollout.toml on the ledger at ledger_location
    (a PostgreSQL URL as $ROLLOUT_LEDGER_URL; a SQLite file as the config's [ledger] path)."""
    config = root / "rollout.toml"
    if is_postgres(ledger_location):
        config.write_text(CONFIG)
        env = rollout_env({"ROLLOUT_LEDGER_URL": ledger_location})
    else:
        config.write_text(CONFIG + f"[ledger]\npath = {str(ledger_location)!r}\n")
        env = rollout_env()
    return subprocess.run([*ROLLOUT, "-c", str(config), "revert", "web", *args], capture_output=True,
                          text=True, env=env, cwd=root, stdin=subprocess.DEVNULL, timeout=60)


@pytest.mark.parametrize(("to", "said"), [
    ("2", "--to 2 is ambiguous: entry #2 (tag 1) or tag 2 (entry #3): write --to '#2' (or id:2) or --to tag:2"),
    ("#99999999999999999999", "there is no entry #99999999999999999999"),
    ("#5", "entry #5 belongs to app api, not web"),
])
def test_the_command_refuses_in_one_line_and_changes_nothing(tmp_path: Path, ledger: LedgerBackend,
                                                              ledger_location: str, to: str, said: str) -> None:
    result = revert_cli(tmp_path, ledger_location, "--to", to)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"rollout: error: {said}" if said.startswith("--to") else
                                          f"rollout: error: --to {to}: {said}: see `rollout history web`"]
    with raw(ledger_location) as conn:
        assert conn.one("SELECT count(*) FROM entries") == 7
        assert conn.one("SELECT count(*) FROM locks") == 0


# -- on the real engine -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def numbered_tags(docker_client: Any, registry: str) -> Iterator[str]:
    """CI build numbers as tags: NUMBERED:1, :2, :3 are good1, good2, good3 (pushed again: same content)."""
    numbers = (("1", "good1"), ("2", "good2"), ("3", "good3"))
    for number, build in numbers:
        docker_client.images.get(f"{APP_IMAGE}:{build}").tag(NUMBERED, number)
        for line in docker_client.images.push(NUMBERED, number, stream=True, decode=True):
            assert "error" not in line, line
    yield NUMBERED
    for number, _ in numbers:  # the engine's tags only; the images keep their own names
        docker_client.images.remove(f"{NUMBERED}:{number}")


def test_revert_to_build_numbers_on_the_engine(project: Project, numbered_tags: str) -> None:
    write_config(project, image=numbered_tags, timeout=20, stable=1)
    for tag in ("3", "1", "2", "3"):  # entries #1 tag 3, #2 tag 1, #3 tag 2, #4 tag 3
        deployed = project.run("deploy", f"web:{tag}")
        assert deployed.returncode == 0, deployed.stderr
    assert project.version() == "good3"

    refused = project.run("revert", "--to", "2")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip() == ("rollout: error: --to 2 is ambiguous: entry #2 (tag 1) or tag 2 (entry #3):"
                                      " write --to '#2' (or id:2) or --to tag:2")
    assert len(project.history()) == 4 and project.version() == "good3"

    by_entry = project.run("revert", "--to", "#2")
    assert by_entry.returncode == 0, by_entry.stderr
    assert "--to #2: entry #2 (tag 1)" in by_entry.stderr
    assert project.version() == "good1"  # #5

    by_tag = project.run("revert", "--to", "tag:2")
    assert by_tag.returncode == 0, by_tag.stderr
    assert project.version() == "good2"  # #6, tag 2 again

    only_an_entry = project.run("revert", "--to", "5")  # no tag 5: entry #5, as a bare id always meant
    assert only_an_entry.returncode == 0, only_an_entry.stderr
    assert "--to 5: entry #5 (tag 1); no entry of web has tag 5" in only_an_entry.stderr
    assert project.version() == "good1"  # #7

    newest = project.run("revert", "--to", "tag:2")
    assert newest.returncode == 0, newest.stderr
    assert "--to tag:2: entry #6 (tag 2, the newest healthy of #3, #6)" in newest.stderr
    assert project.version() == "good2"
    history = project.history()
    assert [(e["kind"], e["tag"], e["reverts_to"], e["status"]) for e in history[:4]] == [
        ("revert", "2", 6, "healthy"), ("revert", "1", 5, "healthy"),
        ("revert", "2", 3, "healthy"), ("revert", "1", 2, "healthy")]
