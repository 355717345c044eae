"""Hostile input through the real CLI: one-line error, documented exit code, nothing changed.

Every input of the table is one test. After each: exactly one `rollout: error:` line on stderr,
no traceback, the documented exit code, and the ledger's rows and lock table exactly as they
were. Inputs refused while reading the config or the reference (pure) run without the engine:
DOCKER_HOST points at a socket that does not exist, so touching the engine would show as exit 5.
Inputs that get further (an unreachable registry or engine, a broken ledger, a revert lookup) run
against a healthy app on the real engine, whose container must be exactly as it was. The config
loader is also fuzzed with Hypothesis: whatever TOML-shaped data it gets, only ConfigError may
come out.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.config import APP_KEYS, HEALTH_KEYS, TARGET_KEYS, TOP_KEYS, parse
from rollout.errors import ConfigError
from rollout.ledger import HEALTHY, Ledger, NewEntry
from support.cli import run_rollout
from support.errors import one_line_error
from support.fakes import fake_digest
from support.images import APP_IMAGE
from support.project import Project

SHA = "0" * 64
Edit = Callable[[str], str]


@dataclass(frozen=True)
class Hostile:
    name: str
    args: tuple[str, ...]
    code: int
    needle: str  # a word the error line must contain (case-insensitive)
    config: Edit | None = None  # how to spoil the config text
    ledger: str | None = None  # which broken ledger the config points at (see broken_ledger)
    engine: bool = False  # gets past config and reference parsing: run against the real engine

    @property
    def pure(self) -> bool:
        return not self.engine


def ref(name: str, release: str, needle: str = "invalid") -> Hostile:
    return Hostile(name, ("deploy", release), 2, needle)


def conf(name: str, edit: Edit, needle: str, code: int = 2, args: tuple[str, ...] = ("deploy", "web:good2")) -> Hostile:
    return Hostile(name, args, code, needle, config=edit)


def ledger(name: str, kind: str, needle: str, args: tuple[str, ...] = ("deploy", "web:good2")) -> Hostile:
    return Hostile(name, args, 2, needle, ledger=kind, engine=True)


def replace(old: str, new: str) -> Edit:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new)
    return edit


def append(extra: str) -> Edit:
    return lambda text: text + extra + "\n"  # lands in the last table: the target


def prepend(extra: str) -> Edit:
    return lambda text: extra + "\n" + text


HOSTILE = [
    # Image references: shell metacharacters, control characters, spaces, sizes, digests.
    ref("space in tag", "web:bad tag"),
    ref("command substitution", "web:$(rm -rf /)"),
    ref("backticks", "web:`id`"),
    ref("semicolon", "web:v1;reboot"),
    ref("pipe", "web:v1|cat /etc/passwd"),
    ref("and-and", "web:v1&&id"),
    ref("redirect", "web:v1>/etc/passwd"),
    ref("newline", "web:v1\nmalicious"),
    ref("carriage return", "web:v1\r\nx"),
    ref("tab", "web:v1\tx"),
    ref("escape sequence", "web:v1\x1b[2J"),
    ref("SQL in tag", "web:v1'; DROP TABLE entries; --"),
    ref("unicode tag", "web:ünïcode"),
    ref("tag of 129 characters", "web:" + "a" * 129),
    ref("tag of 100,000 characters", "web:" + "a" * 100_000),
    ref("empty tag", "web:"),
    ref("tag starting with -", "web:-v1"),
    ref("tag starting with .", "web:.v1"),
    ref("two tags", "web:v1:v2"),
    ref("md5 digest", f"web@md5:{SHA[:32]}", "digest"),
    ref("unknown algorithm", f"web@blake3:{SHA}", "digest"),
    ref("short sha256", "web@sha256:abc", "digest"),
    ref("uppercase hex", f"web@sha256:{'A' * 64}", "digest"),
    ref("non-hex digest", f"web@sha256:{'g' * 64}", "digest"),
    ref("sha512 of 64 digits", f"web@sha512:{SHA}", "digest"),
    ref("tag and bad digest", "web:v1@sha256:abc", "digest"),
    ref("no tag or digest", "web", "give a tag"),
    ref("empty argument", "", "invalid"),
    ref("unknown app", "shop:v1", "names no configured app"),
    ref("uppercase app", "WEB:v1", "invalid"),
    ref("path traversal", "../../etc/passwd:v1", "invalid"),
    ref("another registry's repository", "127.0.0.1:5000/other/repo:v1", "names no configured app"),
    Hostile("SQL in revert --to", ("revert", "--to", "1; DROP TABLE entries"), 2, "no entry of web has tag", engine=True),
    Hostile("revert to an unknown id", ("revert", "--to", "999999"), 2, "999999", engine=True),
    Hostile("history of an unknown app", ("history", "shop"), 2, "unknown app"),
    Hostile("status of an unknown app", ("status", "shop"), 2, "unknown app"),
    # The config: malformed, wrong-typed, unknown keys, dangerous values.
    conf("malformed TOML", replace("[apps.web]", "[apps.web"), "not valid TOML"),
    conf("duplicate table", prepend('[apps.web]\nimage = "x"\n'), "not valid TOML"),
    conf("image is a number", replace('image = "', 'image = 5 #"'), "image"),
    conf("image with shell metacharacters", replace("/rollout-test/app", "/app;rm -rf /"), "image"),
    conf("timeout is a string", replace("timeout = 20", 'timeout = "soon"'), "timeout"),
    conf("negative stable", replace("stable = 1.5", "stable = -1"), "stable"),
    conf("zero interval", replace("interval = 0.5", "interval = 0"), "interval"),
    conf("health probe is not http", replace('http = "http://', 'http = "file:///etc/passwd#'), "http"),
    conf("unknown top-level key", prepend('colour = "blue"'), "unknown key colour"),
    conf("unknown target key", append("privileged = true"), "unknown key"),
    conf("unknown target kind", replace('kind = "docker"', 'kind = "ftp"'), "kind"),
    conf("target kind is a table", replace('kind = "docker"', "kind = { a = 1 }"), "kind"),
    conf("container is an array", replace('container = "', 'container = ["a"] #"'), "container"),
    conf("env is a string", replace("env = {", 'env = "PORT=1" #'), "env"),
    conf("volumes is a string", append('volumes = "/:/host"'), "volumes"),
    conf("targets is a table", replace("[[apps.web.targets]]", "[apps.web.targets]"), "targets"),
    conf("no targets", lambda text: text.split("[[apps.web.targets]]")[0], "no targets"),
    conf("ledger path is a number", prepend("[ledger]\npath = 3"), "ledger.path"),
    conf("apps is a string", lambda text: 'apps = "web"\n', "apps"),
    Hostile("registry unreachable", ("deploy", "web:good2"), 5, "unreachable",
            config=replace("127.0.0.1:5000/", "127.0.0.1:1/"), engine=True),
    Hostile("engine unreachable", ("deploy", "web:good2"), 5, "unreachable",
            config=append('host = "tcp://127.0.0.1:1"'), engine=True),
    # The ledger: corrupted, from a newer rollout, not a ledger, where it cannot be.
    ledger("corrupted ledger", "corrupt", "ledger"),
    ledger("corrupted ledger, history", "corrupt", "ledger", args=("history",)),
    ledger("ledger from a newer schema", "newer", "upgrade rollout"),
    ledger("garbage schema version", "garbage-version", "schema"),
    ledger("another program's SQLite database", "foreign", "not a rollout ledger"),
    ledger("ledger path is a directory", "directory", "ledger"),
    ledger("ledger below a regular file", "under-a-file", "ledger"),
    ledger("ledger on a read-only file system", "read-only", "ledger"),
]


def broken_ledger(root: Path, kind: str) -> Path:
    """A ledger path of the given kind of brokenness, created under root."""
    if kind == "read-only":
        return Path("/proc/rollout-hostile-input/ledger.db")  # even root cannot create it
    path = root / kind / "ledger.db"
    path.parent.mkdir(parents=True)
    if kind == "corrupt":
        path.write_bytes(b"SQLite format 3\x00" + hashlib.sha256(b"x").digest() * 128)
    elif kind in ("newer", "garbage-version"):
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", ["99" if kind == "newer" else "two"])
    elif kind == "foreign":
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE entries (title TEXT, body TEXT)")
            conn.execute("INSERT INTO entries VALUES ('my diary', 'private')")
    elif kind == "directory":
        path.mkdir()
    elif kind == "under-a-file":
        (path.parent / "file").write_text("not a directory")
        return path.parent / "file" / "ledger.db"
    return path


def tree_digest(path: Path) -> str:
    """What is on disk at path (file bytes, or nothing), to prove a broken ledger was not touched."""
    if not path.exists():
        return "absent"
    if path.is_dir():
        return "directory:" + ",".join(sorted(p.name for p in path.iterdir()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/rollout-hostile-input-no-engine.sock"}


def ledger_state(project: Project) -> dict[str, object]:
    rows = {table: project.ledger_rows(f"SELECT * FROM {table}") for table in ("entries", "events", "targets", "locks")}
    return {**rows, "mode": oct(project.ledger.stat().st_mode & 0o777)}


def app_state(project: Project, docker_client) -> dict[str, object]:  # type: ignore[no-untyped-def]
    containers = sorted((c.name, c.id, c.status, c.attrs["Config"]["Image"], c.attrs["State"]["StartedAt"])
                        for c in docker_client.containers.list(all=True, filters={"name": project.container}))
    return {**ledger_state(project), "containers": containers}


def refuse(project: Project, case: Hostile, scratch: Path, state: Callable[[], object],
           env: dict[str, str] | None = None) -> None:
    """Throw case at rollout with project's config (spoilt as the case says): one error line,
    its exit code, `state` unchanged, a broken ledger left as it was."""
    base = project.config.read_text()
    text = case.config(base) if case.config else base
    broken = None
    if case.ledger:
        broken = broken_ledger(scratch, case.ledger)
        text = f'[ledger]\npath = "{broken}"\n' + text
    # Next to rollout.toml: the default ledger path is relative to the config file.
    config = project.root / "hostile.toml"
    config.write_text(text)
    on_disk = tree_digest(broken) if broken else None
    before = state()
    result = run_rollout("-c", str(config), *case.args, env=env, cwd=project.root, timeout=120)
    # Retry warnings may precede the error of an unreachable registry; nothing may follow it.
    line = one_line_error(result, case.code, after="warnings")
    assert case.needle.lower() in line.lower(), line
    if broken is not None:
        assert tree_digest(broken) == on_disk, f"the broken ledger {broken} was modified"
    assert state() == before, "the ledger or the container changed"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project whose ledger holds a healthy entry of web, recorded through the ledger's own API;
    no engine: its container is never created."""
    project = Project.create(tmp_path_factory.mktemp("hostile-pure"))
    ledger = Ledger(project.ledger)
    entry = ledger.record(NewEntry(app="web", repository=APP_IMAGE, tag="good1", digest=fake_digest("good1")))
    ledger.set_status(entry.id, HEALTHY)
    ledger.close()
    return project


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, docker_client, registry: str) -> Iterator[Project]:  # type: ignore[no-untyped-def]
    """A healthy app on the real engine, deployed once for every case that needs the engine."""
    project = Project.create(tmp_path_factory.mktemp("hostile-engine"))
    result = project.run("deploy", "web:good1")
    assert result.returncode == 0, result.stderr
    yield project
    project.remove_containers(docker_client)


def test_the_table_is_whole() -> None:
    assert len(HOSTILE) >= 40
    assert len({case.name for case in HOSTILE}) == len(HOSTILE), "each input names its own test"


@pytest.mark.parametrize("case", [c for c in HOSTILE if c.pure], ids=lambda c: c.name)
def test_pure_hostile_input_is_refused_in_one_line_without_the_engine(recorded: Project, tmp_path: Path,
                                                                      case: Hostile) -> None:
    refuse(recorded, case, tmp_path, lambda: ledger_state(recorded), env=NO_ENGINE)


@pytest.mark.parametrize("case", [c for c in HOSTILE if c.engine], ids=lambda c: c.name)
def test_hostile_input_is_refused_in_one_line_and_changes_nothing(deployed: Project, docker_client, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                  case: Hostile) -> None:
    refuse(deployed, case, tmp_path, lambda: app_state(deployed, docker_client))
    assert deployed.version() == "good1"


# -- fuzzing the config loader ---------------------------------------------------------------
#
# Each case starts from a complete, valid config and applies up to six mutations chosen by a short
# Hypothesis byte string: set any key anywhere to an awkward value, delete it, or add a key (known
# or junk). Near-valid input reaches the deep checks; one cheap draw per case keeps 10,000 cases
# within seconds, and Hypothesis still shrinks a failure to its shortest bytes.

POOL: list[Any] = [
    "", "x", "\n", "web", "docker", "kubernetes", "127.0.0.1:5000/web", "Web", "a/b:c", "x@sha256:1",
    "http://127.0.0.1:1/h", "file:///etc/passwd", "on-failure:3", "../../etc", "$(id)", "ü" * 3, "-1",
    "rolling", "parallel", 0, 1, -1, 3, 10**9, -(10**18), 0.0, 0.5, -0.5, 1e308, math.inf, -math.inf, math.nan,
    True, False, dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), dt.date(2024, 1, 1), dt.time(1, 2),
    [], ["a"], ["a", 1], [[]], [{}], {}, {"a": "b"}, {"a": 1}, {"a": [1]}, {"": {}},
]
KEYS = sorted(TOP_KEYS | APP_KEYS | HEALTH_KEYS | TARGET_KEYS["docker"] | TARGET_KEYS["kubernetes"]
              | {"strategy", "max_parallel", "batch_size", "pause", "path", "insecure", "ca_bundle", "docker_config"})
KEYS += ["", "x", "\n", "Image", "targets "]


def valid_config() -> dict[str, Any]:
    return {
        "ledger": {"path": "state/ledger.db"},
        "registry": {"insecure": ["registry.lan:5000"], "ca_bundle": "ca.pem", "docker_config": "~/.docker"},
        "apps": {"web": {
            "image": "127.0.0.1:5000/web",
            "health": {"timeout": 5, "interval": 0.5, "stable": 1, "http": "http://127.0.0.1:1/h", "max_restarts": 2},
            "rollout": {"strategy": "rolling", "max_parallel": 1, "batch_size": 1, "pause": 0.5},
            "targets": [
                {"name": "local", "kind": "docker", "container": "web", "command": ["httpd", "-f"], "env": {"A": "1"},
                 "network": "host", "volumes": ["/a:/b"], "ports": {"80": "127.0.0.1:8080"}, "restart": "on-failure:3",
                 "labels": {"a": "b"}, "user": "1", "host": "unix:///var/run/docker.sock", "health": {"timeout": 3}},
                {"name": "k8s", "kind": "kubernetes", "deployment": "web", "namespace": "ns", "container": "app"},
            ],
        }},
    }


class Genome:
    """Spends a byte string on choices; past its end every choice is the first option."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def pick(self, options: Sequence[Any]) -> Any:
        byte = self.data[self.at] if self.at < len(self.data) else 0
        self.at += 1
        return options[byte % len(options)]

    def config(self) -> dict[str, Any]:
        config = valid_config()
        for _ in range(self.pick(range(7))):
            self.mutate(self.pick(list(_containers(config))))
        return config

    def mutate(self, node: dict[str, Any] | list[Any]) -> None:
        action = self.pick(["set", "set", "delete", "add"])
        if isinstance(node, list):
            if action == "delete" and node:
                node.pop(self.pick(range(len(node))))
            elif action == "add" or not node:
                node.append(copy.deepcopy(self.pick(POOL)))  # a shared POOL value could end up inside itself
            else:
                node[self.pick(range(len(node)))] = copy.deepcopy(self.pick(POOL))
            return
        key = self.pick(KEYS) if action == "add" or not node else self.pick(list(node))
        if action == "delete":
            node.pop(key, None)
        else:
            node[key] = copy.deepcopy(self.pick(POOL))


def _containers(node: Any) -> Iterator[dict[str, Any] | list[Any]]:
    """Every table and array in the config, depth first, in a stable order."""
    if isinstance(node, (dict, list)):
        yield node
        for child in node.values() if isinstance(node, dict) else node:
            yield from _containers(child)


@settings(max_examples=10_000, deadline=None, database=None)
@given(st.binary(max_size=24))
def test_the_config_loader_raises_only_config_errors(genome: bytes) -> None:
    data = Genome(genome).config()
    path = Path("/nonexistent/rollout.toml")
    try:
        parse(data, path)
    except ConfigError as exc:
        # The CLI prints it on one line; it must say which file is wrong.
        assert str(exc).startswith(f"{path}: "), (data, str(exc))
