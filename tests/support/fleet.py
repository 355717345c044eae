"""A fleet of Docker hosts on one machine: several real `dockerd` engines and a real `sshd`.

`start_fleet` starts N separate engines, each with its own data root, exec root, pid
file and unix socket, no bridge network and no iptables (containers use the host
network, as everywhere in rollout's tests). Each engine starts its own managed
containerd under its exec root: sharing the system engine's containerd works too
(`--containerd SOCK --containerd-namespace X --containerd-plugins-namespace Y`), but that
containerd belongs to the system dockerd and dies or restarts with it, which would take
the fleet's containers along.

One engine is also reachable over SSH, as a remote host would be: Debian's `sshd` on
127.0.0.1 with a generated host key, accepting one generated user key whose
authorized_keys line sets `DOCKER_HOST` to that engine's socket (`PermitUserEnvironment
yes`), so the Docker SDK's `ssh ... docker system dial-stdio` reaches that engine.

The client side lives in a temporary home: `~/.ssh/config`, `~/.ssh/id_ed25519` and
`~/.ssh/known_hosts` (host keys are checked: `StrictHostKeyChecking yes`), and
`~/.docker` for Docker contexts. OpenSSH finds `~` in the password database, not in
`$HOME`, so `Fleet.command` runs a program in a private mount namespace where
/etc/passwd gives root that temporary home; nothing outside that process changes.

`Fleet.close` removes every container, stops the engines and sshd, unmounts what the
engines left mounted and deletes the temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from .ports import free_port

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SSH_ALIAS = "fleet-ssh"  # a Host entry of the fleet's ~/.ssh/config


class FleetUnavailable(Exception):
    """The fleet could not be started on this machine (what is missing is in the message)."""


@dataclass
class Engine:
    """One dockerd with its own state, reachable at `host` (a unix socket)."""

    name: str
    root: Path
    process: subprocess.Popen[bytes]
    _client: docker.DockerClient | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.host, timeout=60)
        return self._client

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.root / "dockerd.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def containers_with_image(self, image: str) -> list[Any]:
        """Every container (running or not) ever created here from exactly `image`."""
        return [c for c in self.client.containers.list(all=True) if c.attrs["Config"]["Image"] == image]


@dataclass
class SshHost:
    """An sshd on 127.0.0.1 whose logins reach `engine`."""

    port: int
    engine: Engine
    process: subprocess.Popen[bytes]
    host_public_key: str  # "ssh-ed25519 AAAA..."

    @property
    def url(self) -> str:
        """The explicit form: user, address and port in the URL."""
        return f"ssh://root@127.0.0.1:{self.port}"

    @property
    def alias_url(self) -> str:
        """The short form: user, address and port come from ~/.ssh/config."""
        return f"ssh://{SSH_ALIAS}"


@dataclass
class Fleet:
    root: Path
    engines: list[Engine]
    ssh: SshHost | None = None

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def docker_config(self) -> Path:
        return self.home / ".docker"

    def env(self) -> dict[str, str]:
        """Environment for a client process: the fleet's home and Docker config, no DOCKER_HOST."""
        env = {**os.environ, "HOME": str(self.home), "DOCKER_CONFIG": str(self.docker_config)}
        env.pop("DOCKER_HOST", None)
        env.pop("DOCKER_CONTEXT", None)
        return env

    def command(self, argv: list[str]) -> list[str]:
        """argv run where OpenSSH sees the fleet's home as root's home (see the module docstring)."""
        return ["unshare", "--mount", "--propagation", "private", "--",
                "/bin/sh", "-c", 'mount --bind "$0" /etc/passwd && exec "$@"', str(self.root / "passwd"), *argv]

    def add_context(self, name: str, host: str, description: str = "") -> Path:
        """Write a Docker context the way `docker context create NAME --docker host=HOST` does."""
        meta_dir = self.docker_config / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
        meta_dir.mkdir(parents=True, exist_ok=True)
        meta = {"Name": name, "Metadata": {"Description": description},
                "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}}}
        (meta_dir / "meta.json").write_text(json.dumps(meta))
        return meta_dir / "meta.json"

    def pull(self, images: list[str]) -> None:
        """Each engine pulls the images itself, all engines at once."""
        def pull_into(engine: Engine) -> None:
            for image in images:
                repository, _, tag = image.rpartition(":")
                try:
                    engine.client.images.pull(repository, tag=tag)
                except docker.errors.APIError as exc:
                    raise FleetUnavailable(f"engine {engine.name} cannot pull {image}: {exc}") from None

        with ThreadPoolExecutor(max_workers=len(self.engines)) as pool:
            list(pool.map(pull_into, self.engines))

    def remove_containers(self, name_prefix: str) -> None:
        for engine in self.engines:
            for container in engine.client.containers.list(all=True):
                if container.name.startswith(name_prefix):
                    container.remove(force=True)

    def close(self) -> None:
        for engine in self.engines:
            try:
                for container in engine.client.containers.list(all=True):
                    container.remove(force=True)
                engine.client.close()
            except Exception:  # noqa: BLE001 - an engine that already died has nothing left to remove
                pass
        if self.ssh is not None:
            _stop(self.ssh.process)
        for engine in self.engines:
            _stop(engine.process)
            _stop_pid_file(engine.root / "exec" / "containerd" / "containerd.pid")
        _unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def start_fleet(engines: int = 3, *, ssh: bool = True, images: list[str] | None = None) -> Fleet:
    """Start `engines` dockerd instances (the last one also behind sshd when `ssh`), pull `images` into each.

    Raises FleetUnavailable, with the reason, when this machine cannot run it.
    """
    missing = [tool for tool in ("dockerd", "docker", "ssh", "ssh-keygen", "unshare") if shutil.which(tool) is None]
    if ssh and not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    if missing:
        raise FleetUnavailable(f"missing {', '.join(missing)} (apt-get install docker.io openssh-server)")
    if os.geteuid() != 0:
        raise FleetUnavailable("dockerd needs root")
    # Short, fixed-depth paths: unix socket paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="rollout-fleet-", dir="/tmp"))
    fleet = Fleet(root=root, engines=[])
    try:
        _prepare_home(fleet)
        fleet.engines = [_launch_engine(root / f"e{i}", f"e{i}") for i in range(1, engines + 1)]
        for engine in fleet.engines:
            _wait_for_engine(engine)
        if ssh:
            fleet.ssh = _start_sshd(fleet, fleet.engines[-1])
        if images:
            fleet.pull(images)
    except BaseException:
        fleet.close()
        raise
    return fleet


# -- engines -------------------------------------------------------------------


def _launch_engine(root: Path, name: str) -> Engine:
    for sub in ("data", "exec"):
        (root / sub).mkdir(parents=True)
    # An empty daemon.json of its own: /etc/docker/daemon.json belongs to the system engine.
    (root / "daemon.json").write_text("{}")
    command = [
        "dockerd", "--config-file", str(root / "daemon.json"),
        "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "docker.pid"), "-H", f"unix://{root / 'docker.sock'}",
        "--bridge=none", "--iptables=false", "--ip-masq=false", "--log-level=warn",
    ]
    with open(root / "dockerd.log", "wb") as log:
        # Own session: a Ctrl-C meant for pytest must not stop the engines before teardown.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    return Engine(name=name, root=root, process=process)


def _wait_for_engine(engine: Engine) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if engine.process.poll() is not None:
            raise FleetUnavailable(f"dockerd {engine.name} exited with {engine.process.returncode}:\n{engine.log_tail()}")
        if engine.socket.exists():
            try:
                engine.client.ping()
                return
            except Exception:  # noqa: BLE001 - not answering yet
                pass
        if time.monotonic() > deadline:
            raise FleetUnavailable(f"dockerd {engine.name} did not answer within {START_TIMEOUT:g}s:\n{engine.log_tail()}")
        time.sleep(0.2)


# -- ssh ---------------------------------------------------------------------------


def _prepare_home(fleet: Fleet) -> None:
    """The client's home: a user key, and a password database naming this home for root."""
    ssh_dir = fleet.home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    fleet.docker_config.mkdir(mode=0o700)
    _keygen(ssh_dir / "id_ed25519")
    lines = []
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[2] == "0":
            fields[5] = str(fleet.home)
        lines.append(":".join(fields))
    (fleet.root / "passwd").write_text("\n".join(lines) + "\n")


def _start_sshd(fleet: Fleet, engine: Engine) -> SshHost:
    server = fleet.root / "sshd"
    server.mkdir(mode=0o700)
    host_key = _keygen(server / "host_ed25519_key")
    user_key = (fleet.home / ".ssh" / "id_ed25519.pub").read_text().strip()
    # The login's DOCKER_HOST is this engine's socket, so `docker system dial-stdio` reaches it.
    (server / "authorized_keys").write_text(f'environment="DOCKER_HOST={engine.host}" {user_key}\n')
    port = free_port()
    (server / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {server / 'host_ed25519_key'}
PidFile {server / 'sshd.pid'}
AuthorizedKeysFile {server / 'authorized_keys'}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitUserEnvironment yes
StrictModes no
LogLevel VERBOSE
""")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory (Debian's unit creates it)
    check = subprocess.run([SSHD, "-t", "-f", str(server / "sshd_config")], capture_output=True, text=True)
    if check.returncode != 0:
        raise FleetUnavailable(f"sshd rejects its config: {check.stderr.strip()}")
    with open(server / "sshd.log", "wb") as log:
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(server / "sshd_config")], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    host = SshHost(port=port, engine=engine, process=process, host_public_key=host_key)
    ssh_dir = fleet.home / ".ssh"
    (ssh_dir / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    (ssh_dir / "config").write_text(f"""\
Host {SSH_ALIAS}
  HostName 127.0.0.1
  Port {port}
  User root

Host *
  StrictHostKeyChecking yes
  BatchMode yes
  IdentitiesOnly yes
  IdentityFile ~/.ssh/id_ed25519
""")
    (ssh_dir / "config").chmod(0o600)
    _wait_for_port(port, process, server / "sshd.log")
    # The whole path once, as rollout will use it: system ssh, host key checked, dial-stdio on the far side.
    probe = subprocess.run(fleet.command(["docker", "-H", host.url, "info", "--format", "{{.DockerRootDir}}"]),
                           capture_output=True, text=True, env=fleet.env(), timeout=60)
    if probe.returncode != 0 or probe.stdout.strip() != str(engine.root / "data"):
        raise FleetUnavailable(f"docker over ssh to {host.url} failed: {probe.stdout.strip()} {probe.stderr.strip()}"
                               f"\nsshd log:\n{(server / 'sshd.log').read_text(errors='replace')[-2000:]}")
    return host


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rollout-fleet", "-f", str(path)],
                   check=True, capture_output=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise FleetUnavailable(f"sshd exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise FleetUnavailable(f"sshd did not listen on 127.0.0.1:{port}") from None
            time.sleep(0.1)


# -- teardown --------------------------------------------------------------------


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _stop_pid_file(pid_file: Path) -> None:
    """A containerd left behind by a dockerd that had to be killed (it is ours: we started that dockerd)."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def _unmount_under(root: Path) -> None:
    """Unmount what the engines left mounted below root (their network namespace at least), deepest first."""
    prefix = f"{root}/"
    mounts = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
