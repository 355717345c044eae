"""A fleet of Docker hosts: four real engines, one of them behind a real sshd, one named by a Docker context.

Targets h1 and h2 are engines on unix sockets, h3 is `host = "context:fleet-h3"` (Docker's
context store in the fleet's $DOCKER_CONFIG), and `far` is `host = "ssh://..."` through the
system ssh client with its host key checked. Every target's container listens on its own
port of 127.0.0.1 (host network).

h2 stands for a host where the new release cannot run (say, an older kernel): its
container's command refuses to serve good2, while good1 runs there as well as anywhere.
"""

from __future__ import annotations

import json
import os
import pty
import re
import struct
import subprocess
import termios
import threading
import uuid
from dataclasses import dataclass
from fcntl import ioctl
from pathlib import Path
from typing import Iterator

import pytest

from rollout.ledger import Ledger
from support.bed import need
from support.cli import ROLLOUT
from support.fleet import Engine, Fleet, FleetUnavailable, start_fleet
from support.images import APP_IMAGE
from support.ports import free_port
from support.project import http_get

BREAKS_ON_GOOD2 = ("trap 'exit 0' TERM INT;"
                   " if grep -q good2 /www/version; then echo 'fatal: good2 needs a newer kernel' >&2; exit 1; fi;"
                   " httpd -f -p 127.0.0.1:$PORT -h /www & wait")


@pytest.fixture(scope="module")
def fleet(registry: str) -> Iterator[Fleet]:
    try:
        started = start_fleet(engines=4, ssh=True, images=[f"{APP_IMAGE}:good1", f"{APP_IMAGE}:good2"])
    except FleetUnavailable as exc:
        need(False, f"a fleet of Docker engines with sshd ({exc})")
    started.add_context("fleet-h3", started.engines[2].host, "third engine of the fleet")
    yield started
    started.close()


@dataclass
class Host:
    name: str
    engine: Engine
    host: str  # as written in rollout.toml
    port: int
    command: str | None = None

    def version(self) -> str | None:
        return http_get(f"http://127.0.0.1:{self.port}/version")


@dataclass
class FleetProject:
    root: Path
    fleet: Fleet
    container: str
    hosts: list[Host]

    @property
    def config(self) -> Path:
        return self.root / "rollout.toml"

    def write(self, rollout: str) -> None:
        text = f"""
[apps.web]
image = "{APP_IMAGE}"

[apps.web.rollout]
{rollout}

[apps.web.health]
timeout = 20
interval = 0.5
stable = 1.5
"""
        for host in self.hosts:
            text += f"""
[[apps.web.targets]]
name = "{host.name}"
kind = "docker"
host = "{host.host}"
container = "{self.container}"
network = "host"
env = {{ PORT = "{host.port}" }}
{f'command = ["sh", "-c", {json.dumps(host.command)}]' if host.command else ""}

[apps.web.targets.health]
http = "http://127.0.0.1:{host.port}/health"
"""
        self.config.write_text(text)

    def command(self, *args: str) -> tuple[list[str], dict[str, str]]:
        env = {**self.fleet.env(), "ROLLOUT_CONFIG": str(self.config)}
        env.pop("ROLLOUT_LEDGER", None)
        return self.fleet.command([*ROLLOUT, *args]), env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv, env = self.command(*args)
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=self.root, timeout=180,
                              stdin=subprocess.DEVNULL)

    def run_on_terminal(self, *args: str) -> tuple[int, str]:
        """Run with stderr on a pseudo-terminal (120 columns): the exit code and what the terminal received."""
        argv, env = self.command(*args)
        master, slave = pty.openpty()
        ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        received = bytearray()

        def drain() -> None:
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the last writer closed the terminal
                    return
                if not chunk:
                    return
                received.extend(chunk)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            process = subprocess.run(argv, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
                                     env=env, cwd=self.root, timeout=180)
        finally:
            os.close(slave)
            reader.join(timeout=10)
            os.close(master)
        return process.returncode, received.decode("utf-8", "replace")

    def history(self) -> list[dict]:
        result = self.run("history", "--json", "-n", "100")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def target_rows(self, entry_id: int) -> dict[str, str]:
        ledger = Ledger(self.root / "state" / "ledger.db")
        try:
            return {row.target: row.outcome for row in ledger.targets(entry_id)}
        finally:
            ledger.close()

    def running_image(self, host: Host) -> str:
        container = host.engine.client.containers.get(self.container)
        assert container.status == "running", f"{host.name}: {container.status}"
        return container.attrs["Config"]["Image"]


def pinned(fleet: Fleet, tag: str) -> str:
    image = fleet.engines[0].client.images.get(f"{APP_IMAGE}:{tag}")
    digest = next(d.split("@")[1] for d in image.attrs["RepoDigests"] if d.startswith(APP_IMAGE + "@"))
    return f"{APP_IMAGE}@{digest}"


def make_project(tmp_path: Path, fleet: Fleet, ssh_host: str) -> FleetProject:
    engines = fleet.engines
    hosts = [
        Host("h1", engines[0], engines[0].host, free_port()),
        Host("h2", engines[1], engines[1].host, free_port(), command=BREAKS_ON_GOOD2),
        Host("h3", engines[2], "context:fleet-h3", free_port()),
        Host("far", engines[3], ssh_host, free_port()),
    ]
    return FleetProject(root=tmp_path, fleet=fleet, container=f"fl-{uuid.uuid4().hex[:8]}", hosts=hosts)


@pytest.fixture
def project(tmp_path: Path, fleet: Fleet) -> Iterator[FleetProject]:
    """This module's project spans the fleet (it replaces conftest's one-engine project)."""
    assert fleet.ssh is not None
    # The short form: address, port and user of `fleet-ssh` come from ~/.ssh/config.
    bed = make_project(tmp_path, fleet, fleet.ssh.alias_url)
    yield bed
    fleet.remove_containers(bed.container)


def render(terminal: str) -> list[str]:
    """The screen a terminal shows after this output: text, \\r, \\n, ESC[K and ESC[nA (all rollout uses)."""
    screen, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[\d*[A-Za-z]|\r|\n|[^\x1b\r\n]+", terminal):
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
        elif token.startswith("\x1b["):
            count = int(token[2:-1] or 1)
            if token.endswith("A"):
                row = max(0, row - count)
            elif token.endswith("K"):
                screen[row] = screen[row][:col]
            else:
                raise AssertionError(f"unexpected escape sequence {token!r}")
        else:
            while len(screen) <= row:
                screen.append("")
            line = screen[row].ljust(col)
            screen[row] = line[:col] + token + line[col + len(token):]
            col += len(token)
        while len(screen) <= row:
            screen.append("")
    return [line for line in screen if line]


def test_parallel_deploy_reaches_every_host_and_one_broken_host_sends_all_back(project: FleetProject,
                                                                                fleet: Fleet) -> None:
    project.write('strategy = "parallel"')
    good1, good2 = pinned(fleet, "good1"), pinned(fleet, "good2")

    code, terminal = project.run_on_terminal("deploy", "web:good1")
    assert code == 0, terminal
    assert [host.version() for host in project.hosts] == ["good1"] * 4
    assert [project.running_image(host) for host in project.hosts] == [good1] * 4
    [first] = project.history()
    assert project.target_rows(first["id"]) == {"h1": "healthy", "h2": "healthy", "h3": "healthy", "far": "healthy"}
    # On a terminal, progress is a table redrawn in place: one line per target, not a log.
    screen = render(terminal)
    for host in project.hosts:
        assert sum(line.startswith(f"[{host.name}] ") for line in screen) == 1, "\n".join(screen)
    assert "\x1b[4A" in terminal

    result = project.run("deploy", "web:good2")
    assert result.returncode == 1, result.stderr
    # Every host is back on the previous digest, the three where good2 was healthy too.
    assert [host.version() for host in project.hosts] == ["good1"] * 4
    assert [project.running_image(host) for host in project.hosts] == [good1] * 4
    revert, failed, _ = project.history()
    assert (failed["tag"], failed["status"]) == ("good2", "failed")
    assert (revert["kind"], revert["status"], revert["reverts_to"]) == ("revert", "healthy", first["id"])
    assert project.target_rows(failed["id"]) == {"h1": "healthy", "h2": "failed", "h3": "healthy", "far": "healthy"}
    assert project.target_rows(revert["id"]) == {"h1": "healthy", "h2": "healthy", "h3": "healthy", "far": "healthy"}
    assert "fatal: good2 needs a newer kernel" in result.stderr  # h2's own log lines
    assert "Traceback" not in result.stderr
    # good2 did run on the others: the revert took them back, not a failure to start.
    assert all(host.engine.containers_with_image(good2) for host in project.hosts)

    status = json.loads(project.run("status", "--json").stdout)
    assert {t["name"]: t["in_sync"] for t in status["targets"]} == {"h1": True, "h2": True, "h3": True, "far": True}


def ssh_logins(fleet: Fleet) -> int:
    """How many times the fleet's sshd has let a client in so far (its VERBOSE log)."""
    return (fleet.root / "sshd" / "sshd.log").read_text(errors="replace").count("Accepted publickey")


def test_a_deploy_over_ssh_logs_in_a_few_times_not_once_per_engine_call(project: FleetProject, fleet: Fleet) -> None:
    # The SDK starts a new `ssh ... docker system dial-stdio` for every API call (~0.3 s each,
    # ~20 calls a deploy); rollout keeps the connection for the next call.
    project.write('strategy = "parallel"')
    before = ssh_logins(fleet)
    result = project.run("deploy", "web:good1")
    assert result.returncode == 0, result.stderr
    assert project.hosts[3].version() == "good1"
    # One connection for the calls, one for the engine's event stream during verification.
    logins = ssh_logins(fleet) - before
    assert 1 <= logins <= 3, logins


def test_rolling_stops_at_the_first_failing_batch_and_reverts_only_moved_hosts(tmp_path: Path,
                                                                                 fleet: Fleet) -> None:
    assert fleet.ssh is not None
    # The explicit form: user, address and port in the URL.
    project = make_project(tmp_path, fleet, fleet.ssh.url)
    try:
        project.write('strategy = "rolling"\nbatch_size = 1')
        good1, good2 = pinned(fleet, "good1"), pinned(fleet, "good2")
        result = project.run("deploy", "web:good1")
        assert result.returncode == 0, result.stderr
        assert [host.version() for host in project.hosts] == ["good1"] * 4

        result = project.run("deploy", "web:good2")
        assert result.returncode == 1, result.stderr
        assert "batch 2/4: h2" in result.stderr and "batch 3/4" not in result.stderr
        assert [host.version() for host in project.hosts] == ["good1"] * 4
        assert [project.running_image(host) for host in project.hosts] == [good1] * 4
        revert, failed, _ = project.history()
        # h1 (batch 1) was moved and healthy, h2 (batch 2) failed; both went back; h3 and far were never moved.
        assert project.target_rows(failed["id"]) == {"h1": "healthy", "h2": "failed"}
        assert project.target_rows(revert["id"]) == {"h1": "healthy", "h2": "healthy"}
        h1, h2, h3, far = project.hosts
        assert h1.engine.containers_with_image(good2) and h2.engine.containers_with_image(good2)
        assert h3.engine.containers_with_image(good2) == [] and far.engine.containers_with_image(good2) == []
    finally:
        fleet.remove_containers(project.container)


def test_an_unknown_context_is_a_config_error_and_changes_nothing(project: FleetProject) -> None:
    project.hosts[2].host = "context:no-such-context"
    project.write('strategy = "parallel"')
    result = project.run("deploy", "web:good1")
    assert result.returncode == 2, result.stderr
    assert "no Docker context 'no-such-context'" in result.stderr and "fleet-h3" in result.stderr  # the known ones
    assert project.run("history", "--json").stdout.strip() == "[]"
    for host in project.hosts:
        assert host.engine.client.containers.list(all=True, filters={"name": project.container}) == []


def test_an_ssh_host_with_another_host_key_is_refused_before_anything_changes(project: FleetProject,
                                                                            fleet: Fleet) -> None:
    known_hosts = fleet.home / ".ssh" / "known_hosts"
    genuine = known_hosts.read_text()
    impostor = fleet.root / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    address = genuine.split()[0]
    known_hosts.write_text(f"{address} {' '.join(impostor.with_suffix('.pub').read_text().split()[:2])}\n")
    try:
        project.write('strategy = "parallel"')
        result = project.run("deploy", "web:good1")
    finally:
        known_hosts.write_text(genuine)
    assert result.returncode == 5, result.stderr
    assert "far" in result.stderr and "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr
    assert project.run("history", "--json").stdout.strip() == "[]"
    for host in project.hosts:
        assert host.engine.client.containers.list(all=True, filters={"name": project.container}) == []
