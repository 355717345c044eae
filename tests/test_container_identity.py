"""A redeployed container keeps its whole identity (issue 11, items 2-4), on the real engine.

The oracle is the engine: a container is made with `docker create`/`docker run` and the options
below, rollout replaces it, and `docker inspect` of the new container must equal the old one's
except where a value must change (ids, times, state, image, rollout's labels, paths derived
from the id). DOCKER_RUN_OPTIONS is the list of `docker run` options this covers (the README's
"What a deploy carries over" points here).
"""

from __future__ import annotations

import io
import ipaddress
import json
import random
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from support.images import APP_IMAGE
from support.ports import free_port
from support.project import Project, write_config

pytestmark = pytest.mark.usefixtures("project")

APP_COMMAND = ["-c", "trap 'exit 0' TERM INT; httpd -f -p 127.0.0.1:8080 -h /www & wait"]

# Every `docker run` option test_everything_docker_run_set_survives_a_deploy sets, as given to
# `docker create` ({placeholders} are filled per test). Left out, and why: --cpu-period/--cpu-quota
# (the same setting as --cpus), --uts (refused with --hostname), --userns (needs the daemon's
# userns-remap), --storage-opt (needs xfs project quotas), --cpu-rt-* (needs a real-time kernel),
# --gpus, --runtime other than runc, --privileged (hides the capability settings), --rm (deliberately
# not carried: the replaced container is kept for a revert; tests/test_docker_restart.py), -P (random host ports), --platform/--pull/--quiet/
# --disable-content-trust/--detach-keys/--sig-proxy (client side only, nothing stored), --mac-address
# (this docker CLI sends it per network, which needs API 1.44; the engine here has 1.41: the unit
# tests cover Config.MacAddress).
DOCKER_RUN_OPTIONS: list[tuple[str, ...]] = [
    ("--add-host", "db.internal:192.0.2.10"),
    ("--attach", "stdout"),
    ("--blkio-weight", "300"),
    ("--cap-add", "SYS_PTRACE"), ("--cap-drop", "NET_RAW"),
    ("--cgroupns", "private"),
    ("--cidfile", "{tmp}/cidfile"),
    ("--cpu-shares", "512"), ("--cpus", "1.5"), ("--cpuset-cpus", "0"), ("--cpuset-mems", "0"),
    ("--device", "/dev/null:/dev/app-null:rwm"), ("--device-cgroup-rule", "c 1:3 mr"),
    ("--dns", "192.0.2.53"), ("--dns-option", "ndots:2"), ("--dns-search", "example.test"),
    ("--domainname", "example.test"), ("--hostname", "api-1"),
    ("--entrypoint", "sh"),
    ("--env", "MODE=prod"), ("--env", "PORT=8080"),
    ("--expose", "9000"),
    ("--group-add", "123"),
    ("--health-cmd", "true"), ("--health-interval", "1s"), ("--health-retries", "2"),
    ("--health-start-period", "2s"), ("--health-timeout", "2s"),
    ("--init",), ("--interactive",), ("--tty",),
    ("--ip", "{ip4}"), ("--ip6", "{ip6}"), ("--link-local-ip", "169.254.7.7"),
    ("--ipc", "shareable"),
    ("--isolation", "default"),
    ("--label", "team=payments"),
    ("--link", "{peer}:lnk"),
    ("--log-driver", "json-file"), ("--log-opt", "max-size=1m"), ("--log-opt", "max-file=2"),
    ("--memory", "64m"), ("--memory-reservation", "32m"), ("--memory-swap", "128m"), ("--memory-swappiness", "10"),
    ("--mount", "type=volume,dst=/anon-mount"),
    ("--mount", "type=volume,src={volume},dst=/named-mount"),
    ("--mount", "type=bind,src={tmp}/bound,dst=/bind-mount,readonly"),
    ("--mount", "type=tmpfs,dst=/tmpfs-mount,tmpfs-size=1048576"),
    ("--network", "{net1}"), ("--network-alias", "api"), ("--network-alias", "web-api"),
    ("--oom-kill-disable",), ("--oom-score-adj", "100"),
    ("--pid", "host"), ("--pids-limit", "100"),
    ("--publish", "127.0.0.1:{port}:8080/tcp"),
    ("--read-only",),
    ("--restart", "on-failure:3"),
    ("--runtime", "runc"),
    ("--security-opt", "no-new-privileges"),
    ("--shm-size", "32m"),
    ("--stop-signal", "SIGINT"), ("--stop-timeout", "7"),
    ("--sysctl", "net.core.somaxconn=1024"),
    ("--tmpfs", "/run/app:size=1m"),
    ("--ulimit", "nofile=1024:2048"),
    ("--user", "1000:1000"),
    ("--volume", "/anon-volume"), ("--volume", "{volume}:/named-volume"), ("--volume", "{tmp}/bound:/bind-volume:ro"),
    ("--volume-driver", "local"),
    ("--volumes-from", "{peer}:ro"),
    ("--workdir", "/www"),
]
# ...and `docker network connect` to a second network.
NETWORK_CONNECT_OPTIONS = [("--alias", "other"), ("--ip", "{ip4_b}"), ("--link", "{peer}:peer-b"),
                           ("--driver-opt", "com.example.note=kept")]

# What must differ between the old container and its replacement (dotted paths; "*" any one key).
MUST_CHANGE = [
    "Id", "Created", "Image", "Name", "State", "ResolvConfPath", "HostnamePath", "HostsPath", "LogPath",
    "GraphDriver", "ExecIDs", "RestartCount", "Config.Image", "NetworkSettings.SandboxID", "NetworkSettings.SandboxKey",
    "NetworkSettings.Networks.*.EndpointID",
]


def docker(*args: str) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def inspect(name: str) -> dict[str, Any]:
    return json.loads(docker("inspect", "--type", "container", name))[0]


def write_plain_config(project: Project) -> None:
    """No setting that overrides the container's own (no network, env or probe on the host's loopback)."""
    project.config.write_text(f"""
[apps.web]
image = "{APP_IMAGE}"

[apps.web.health]
timeout = 30
interval = 0.5
stable = 1

[[apps.web.targets]]
name = "local"
kind = "docker"
container = "{project.container}"
""")


def remove_retired(docker_client, project: Project) -> None:  # type: ignore[no-untyped-def]
    """Forget the kept containers, so the next revert has to create its container."""
    for container in docker_client.containers.list(all=True, filters={"name": f"{project.container}.rollout-"}):
        container.remove(force=True)


@pytest.fixture
def networks(docker_client) -> Iterator[list[Any]]:  # type: ignore[no-untyped-def]
    """Two user-defined bridge networks (the first also IPv6) on subnets no other test uses; no traffic is sent."""
    import docker.errors
    import docker.types

    made: list[Any] = []
    while len(made) < 2:
        n = random.randrange(256)
        pools = [docker.types.IPAMPool(subnet=f"172.31.{n}.0/24")]
        if not made:
            pools.append(docker.types.IPAMPool(subnet=f"fd00:31:{n}::/64"))
        try:
            made.append(docker_client.networks.create(f"rt-net-{uuid.uuid4().hex[:8]}", driver="bridge",
                                                      enable_ipv6=not made, ipam=docker.types.IPAMConfig(pool_configs=pools)))
        except docker.errors.APIError as exc:
            if "overlap" not in str(exc):
                raise
    yield made
    for network in made:
        network.reload()
        for container in network.containers:
            network.disconnect(container, force=True)
        network.remove()


def address(network: Any, host: int, version: int = 4) -> str:
    subnet = next(c["Subnet"] for c in network.attrs["IPAM"]["Config"] if ipaddress.ip_network(c["Subnet"]).version == version)
    return str(ipaddress.ip_network(subnet)[host])


def endpoints(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the operator chose on each network, and the addresses it has, without the container's own id alias."""
    short_id = container["Id"][:12]
    chosen = {}
    for name, endpoint in container["NetworkSettings"]["Networks"].items():
        chosen[name] = {key: endpoint[key] for key in ("IPAMConfig", "Links", "DriverOpts", "IPAddress", "GlobalIPv6Address",
                                                       "MacAddress")}
        chosen[name]["Aliases"] = sorted(a for a in endpoint["Aliases"] or [] if a != short_id)
    return chosen


def test_data_in_the_images_volume_survives_deploy_and_revert(project: Project, docker_client, registry: str) -> None:  # type: ignore[no-untyped-def]
    tag = f"volume-{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {APP_IMAGE}:good1\nVOLUME /data\n"
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=f"{APP_IMAGE}:{tag}", network_mode="host",
                               rm=True, pull=False)
    volume = None
    try:
        for line in docker_client.images.push(APP_IMAGE, tag, stream=True, decode=True):
            assert "error" not in line, line
        assert project.run("deploy", f"web:{tag}").returncode == 0
        first = docker_client.containers.get(project.container)
        [volume] = [m["Name"] for m in first.attrs["Mounts"] if m["Destination"] == "/data"]
        first.exec_run(["sh", "-c", "echo written-by-v1 > /data/state"], user="root")

        def state() -> str:
            result = docker_client.containers.get(project.container).exec_run(["cat", "/data/state"])
            return result.output.decode().strip()

        for release in ("good2", "good3"):  # good2/good3 declare no VOLUME: the data still comes along
            result = project.run("deploy", f"web:{release}")
            assert result.returncode == 0, result.stderr
            assert project.version() == release and state() == "written-by-v1"
        # A revert that has to create its container (the kept ones are gone) carries it too.
        remove_retired(docker_client, project)
        result = project.run("revert", "--to", tag)
        assert result.returncode == 0, result.stderr
        assert state() == "written-by-v1"
        assert [m["Name"] for m in inspect(project.container)["Mounts"] if m["Destination"] == "/data"] == [volume]
    finally:
        for container in docker_client.containers.list(all=True, filters={"name": project.container}):
            container.remove(force=True)
        if volume:
            docker_client.volumes.get(volume).remove()
        docker_client.images.remove(f"{APP_IMAGE}:{tag}")


def test_networks_with_aliases_and_static_addresses_survive_deploy_and_revert(project: Project, docker_client,  # type: ignore[no-untyped-def]
                                                                               networks: list[Any]) -> None:
    net1, net2 = networks
    write_plain_config(project)
    peer = f"{project.container}-peer"
    docker("run", "-d", "--name", peer, "--network", net2.name, f"{APP_IMAGE}:good1")
    try:
        docker("run", "-d", "--name", project.container, "--network", net1.name, "--network-alias", "api",
               "--network-alias", "web-api", "--ip", address(net1, 10), "--ip6", address(net1, 10, version=6),
               f"{APP_IMAGE}:good1")
        docker("network", "connect", "--alias", "other", "--ip", address(net2, 9), "--link", f"{peer}:lnk",
               "--driver-opt", "com.example.note=kept", net2.name, project.container)
        before = inspect(project.container)
        assert endpoints(before)[net1.name]["Aliases"] == ["api", "web-api"]

        replaced = before
        for release in ("good2", "good3"):
            result = project.run("deploy", f"web:{release}")
            assert result.returncode == 0, result.stderr
            after = inspect(project.container)
            assert after["Id"] != replaced["Id"]
            # The old container still exists (stopped): the engine freed its static addresses at stop.
            assert inspect(replaced["Id"])["State"]["Running"] is False
            assert endpoints(after) == endpoints(before)
            replaced = after

        remove_retired(docker_client, project)
        result = project.run("revert")  # to good2, whose container is gone: created again
        assert result.returncode == 0, result.stderr
        reverted = inspect(project.container)
        assert reverted["Id"] != replaced["Id"] and reverted["Config"]["Labels"]["rollout.tag"] == "good2"
        assert endpoints(reverted) == endpoints(before)
    finally:
        for name in (project.container, peer):
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def user_defined(container: dict[str, Any]) -> list[str]:
    return sorted(name for name in container["NetworkSettings"]["Networks"] if name not in ("bridge", "host", "none"))


def test_user_defined_networks_of_a_container_on_the_default_bridge_survive_a_deploy(  # type: ignore[no-untyped-def]
        project: Project, docker_client, networks: list[Any]) -> None:
    """`docker run` without --network (the default bridge: mode "default"), later `docker network connect
    --alias api NET`: the new container is on NET with its alias too (this engine runs with
    --bridge=none, yet it takes and starts such a container, and connects it)."""
    net = networks[1]
    write_plain_config(project)
    try:
        docker("run", "-d", "--name", project.container, f"{APP_IMAGE}:good1")
        docker("network", "connect", "--alias", "api", "--alias", "web-api", net.name, project.container)
        before = inspect(project.container)
        assert before["HostConfig"]["NetworkMode"] == "default"
        assert endpoints(before)[net.name]["Aliases"] == ["api", "web-api"]

        result = project.run("deploy", "web:good2")

        assert result.returncode == 0, result.stderr
        after = inspect(project.container)
        assert after["Id"] != before["Id"] and after["HostConfig"]["NetworkMode"] == "default"
        # The default bridge does not exist on this engine (--bridge=none): it disables such a
        # container's own networking (Config.NetworkDisabled, carried), and its "bridge" entry is an
        # empty placeholder. Every network that exists is compared.
        assert user_defined(after) == user_defined(before) == [net.name]
        assert endpoints(after)[net.name]["Aliases"] == ["api", "web-api"]
    finally:
        for container in docker_client.containers.list(all=True, filters={"name": project.container}):
            container.remove(force=True)
        # A container whose networking the engine disabled keeps its endpoints when it stops or is
        # removed (moby 20.10 releaseNetwork returns early): only a forced disconnect by name frees them.
        net.reload()
        for endpoint in (net.attrs.get("Containers") or {}).values():
            subprocess.run(["docker", "network", "disconnect", "-f", net.name, endpoint["Name"]],
                           capture_output=True, timeout=60)


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Dotted paths where two inspected JSON trees differ (a list differing in length is one difference)."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [d for key in sorted(set(before) | set(after))
                for d in differences(before.get(key), after.get(key), f"{path}.{key}" if path else key)]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{path}[{i}]")]
    return [] if before == after else [path]


def must_change(path: str) -> bool:
    for allowed in MUST_CHANGE:
        parts, actual = allowed.split("."), path.split(".")
        if len(actual) >= len(parts) and all(p in ("*", a) for p, a in zip(parts, actual)):
            return True
    return path.startswith("Config.Labels.rollout.")


def comparable(container: dict[str, Any], carried_volumes: set[str], volume_paths: set[str]) -> dict[str, Any]:
    """container with what the oracle explains on its own terms: the container's own id alias, the
    mounts' order, and the old container's anonymous volumes that rollout mounts by name.

    carried_volumes: the old container's volume names; volume_paths: its Config.Volumes paths
    (image VOLUME, `-v /path`), whose anonymous volumes rollout adds to HostConfig.Mounts.
    """
    container = json.loads(json.dumps(container))
    for endpoint in container["NetworkSettings"]["Networks"].values():
        endpoint["Aliases"] = sorted(a for a in endpoint["Aliases"] or [] if a != container["Id"][:12])
    container["Mounts"] = sorted(container["Mounts"], key=lambda m: m["Destination"])
    for mount in container["Mounts"]:
        if mount.get("Name") in carried_volumes and mount["Mode"] == "z":
            # A volume mounted by name reports the engine's default mode for --mount volumes
            # ("z": shared SELinux label, which volumes get anyway); one from Config.Volumes reports "".
            mount["Mode"] = ""
    mounts = []
    for mount in container["HostConfig"].get("Mounts") or []:
        if mount.get("Source") in carried_volumes:
            if mount["Target"] in volume_paths:
                continue  # rollout's: the anonymous volume of a Config.Volumes path, by name
            mount = {k: v for k, v in mount.items() if k != "Source"}  # a --mount without source, now named
        mounts.append(mount)
    container["HostConfig"]["Mounts"] = mounts
    return container


def test_everything_docker_run_set_survives_a_deploy(project: Project, docker_client, networks: list[Any],  # type: ignore[no-untyped-def]
                                                    tmp_path: Path) -> None:
    net1, net2 = networks
    write_plain_config(project)
    (tmp_path / "bound").mkdir()
    peer = f"{project.container}-peer"
    volume = f"{project.container}-named"
    values = {"tmp": str(tmp_path), "peer": peer, "volume": volume, "net1": net1.name, "port": str(free_port()),
              "ip4": address(net1, 10), "ip6": address(net1, 10, version=6), "ip4_b": address(net2, 9)}
    docker("volume", "create", volume)
    docker("run", "-d", "--name", peer, "--network", net1.name, "-v", "/peer-data", f"{APP_IMAGE}:good1")
    docker("network", "connect", net2.name, peer)
    try:
        options = [part.format(**values) for option in DOCKER_RUN_OPTIONS for part in option]
        docker("create", "--name", project.container, *options, f"{APP_IMAGE}:good1", *APP_COMMAND)
        connect = [part.format(**values) for option in NETWORK_CONNECT_OPTIONS for part in option]
        docker("network", "connect", *connect, net2.name, project.container)
        docker("start", project.container)
        before = inspect(project.container)

        result = project.run("deploy", "web:good2")
        assert result.returncode == 0, result.stderr
        after = inspect(project.container)
        assert after["Config"]["Image"].startswith(f"{APP_IMAGE}@sha256:")

        carried = {m["Name"] for m in before["Mounts"] if m["Type"] == "volume" and m["Name"] != volume}
        paths = set(before["Config"]["Volumes"] or {})
        changed = differences(comparable(before, carried, paths), comparable(after, carried, paths))
        assert [path for path in changed if not must_change(path)] == []
        # The oracle's own check: the deploy did change what must change.
        assert {"Id", "Config.Image"} <= set(changed)
    finally:
        for name in (project.container, peer):
            subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, timeout=60)
        remove_retired(docker_client, project)
        subprocess.run(["docker", "volume", "rm", volume], capture_output=True, timeout=60)


def test_settings_from_the_old_image_yield_to_the_new_image(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    """ENV, CMD, LABEL, EXPOSE, HEALTHCHECK, STOPSIGNAL and WORKDIR of the old image are the new image's to set."""
    tag = f"image-settings-{uuid.uuid4().hex[:8]}"
    dockerfile = (f"FROM {APP_IMAGE}:good1\nENV FROM_OLD_IMAGE=1\nLABEL old.image=1\nEXPOSE 9999\nSTOPSIGNAL SIGQUIT\n"
                  "WORKDIR /tmp\nHEALTHCHECK --interval=1s CMD true\n")
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=f"{APP_IMAGE}:{tag}", network_mode="host",
                               rm=True, pull=False)
    try:
        for line in docker_client.images.push(APP_IMAGE, tag, stream=True, decode=True):
            assert "error" not in line, line
        write_config(project)
        assert project.run("deploy", f"web:{tag}").returncode == 0
        result = project.run("deploy", "web:good2")
        assert result.returncode == 0, result.stderr
        config = inspect(project.container)["Config"]
        good2 = docker_client.images.get(f"{APP_IMAGE}:good2").attrs["Config"]
        assert "FROM_OLD_IMAGE=1" not in config["Env"] and f"PORT={project.port}" in config["Env"]
        assert "old.image" not in config["Labels"]
        for key in ("Cmd", "ExposedPorts", "StopSignal", "WorkingDir", "Healthcheck"):
            assert config.get(key) == good2.get(key), key
    finally:
        for container in docker_client.containers.list(all=True, filters={"name": project.container}):
            container.remove(force=True)
        docker_client.images.remove(f"{APP_IMAGE}:{tag}")
