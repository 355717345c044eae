"""What the container that replaces another is created with: everything `docker run` set on the
old one, nothing that came from the old image, and the target's rollout.toml settings on top.

Pure functions over `docker inspect` dicts (Engine API v1.41: GET /containers/{id}/json and
GET /images/{id}/json), so every rule is unit-tested without an engine. The result is the body
of POST /containers/create, sent whole: the SDK's `create_container` keyword arguments cannot
express several settings (StopTimeout, MacAddress, Attach*, endpoint settings of a network...).

Three kinds of values in an inspected container are not carried:
- those the old image supplied (ENV, CMD, ENTRYPOINT, LABEL, HEALTHCHECK, EXPOSE, VOLUME...):
  the new image's own take their place;
- those the engine derived from the container itself (its id as hostname and network alias,
  addresses and MACs it allocated, paths under its directory): carrying them would copy the
  old container's identity, not the operator's settings;
- rollout's own labels, which the caller sets for the new release.
"""

from __future__ import annotations

import copy
import posixpath
from dataclasses import dataclass, field
from typing import Any

# Config fields that only the operator sets (no Dockerfile instruction sets them): carried as they are.
OPERATOR_ONLY = ("Domainname", "MacAddress", "StopTimeout", "Tty", "OpenStdin", "StdinOnce",
                 "AttachStdin", "AttachStdout", "AttachStderr", "NetworkDisabled")
# Config fields an image sets too: carried only when the container's value is not the old image's.
UNLESS_FROM_IMAGE = ("Cmd", "Entrypoint", "User", "WorkingDir", "Healthcheck", "StopSignal")
# Config maps merged key by key from the image and the operator: only the operator's keys are carried.
MERGED_WITH_IMAGE = ("ExposedPorts", "Volumes", "Labels")
BUILTIN_NETWORKS = {"host", "none", "bridge", "default"}
# Network modes that join no other network: the engine refuses `docker network connect` with them
# (moby daemon/container_operations.go: "container sharing network namespace with another container
# or host cannot be connected to any other network"). The default bridge is not one of them.
ALONE_NETWORK_MODES = ("host", "none")
# EndpointSettings the operator chooses (`--ip`, `--ip6`, `--link-local-ip`, `--network-alias`,
# `--link`, `docker network connect --driver-opt`); the rest (ids, gateway, allocated addresses) is derived.
ENDPOINT_SETTINGS = ("IPAMConfig", "Links", "Aliases", "DriverOpts")
ROLLOUT_LABEL_PREFIX = "rollout."


@dataclass(frozen=True)
class CreateSpec:
    """One new container: `body` for POST /containers/create (Config fields, HostConfig and at
    most one network in NetworkingConfig), and `more_networks` (network name -> EndpointSettings)
    to connect before it starts: API versions before 1.44 refuse a create with several endpoints
    ("Container cannot be connected to network endpoints: a, b")."""

    body: dict[str, Any]
    more_networks: dict[str, dict[str, Any]] = field(default_factory=dict)


def create_spec(image: str, labels: dict[str, str], old: dict[str, Any] | None, old_image_config: dict[str, Any],
                settings: dict[str, Any], engine_name: str | None = None) -> CreateSpec:
    """The create body of a container running `image` that replaces `old`.

    old: the inspected container being replaced (None: a first deploy gets Docker's defaults);
    old_image_config: the `Config` of old's image inspected ({} when that image is gone);
    settings: the target's rollout.toml settings (command, entrypoint, env, labels, user, network,
    restart, volumes, ports), which win over what is carried; labels: rollout's own, which win over all;
    engine_name: the engine's host name (`docker info` Name), the hostname a `--network host`
    container gets when the operator set none.
    """
    if old is None:
        config: dict[str, Any] = {}
        host_config: dict[str, Any] = {"NetworkMode": "default"}
        endpoints: dict[str, dict[str, Any]] = {}
    else:
        config = operator_config(old, old_image_config, engine_name)
        host_config = copy.deepcopy(old.get("HostConfig") or {})
        host_config["Links"] = legacy_links(host_config.get("Links"))
        endpoints = operator_endpoints(old)
    old_mode = host_config.get("NetworkMode") or "default"
    # `--rm` is not carried: stopping the replaced container would make the engine delete it,
    # and with it the fast revert (docker.py warns when the old one had it).
    host_config.pop("AutoRemove", None)
    apply_overrides(config, host_config, settings)
    if old is not None:
        reuse_anonymous_volumes(host_config, anonymous_volumes(old))
    config["Labels"] = {**config.get("Labels", {}), **labels}
    primary, more = network_plan(host_config.get("NetworkMode") or "default", old_mode, endpoints,
                                 network_ids(old) if old is not None else {})
    body = {**config, "Image": image, "HostConfig": host_config}
    if primary:
        body["NetworkingConfig"] = {"EndpointsConfig": primary}
    return CreateSpec(body, more)


def operator_config(old: dict[str, Any], image_config: dict[str, Any], engine_name: str | None = None) -> dict[str, Any]:
    """The Config fields of `old` that the operator set: what its image set yields to the new image.

    A value equal to the old image's is taken as the image's (an operator who repeated it loses
    nothing unless the new image changes it). Hostname is carried only when it is not the one
    the engine made up: the container id's first 12 hex digits, or under `--network host` the
    engine's host name (moby daemon/container.go `setHostnameIfEmpty` / `initializeNetworking`).
    """
    container = old.get("Config") or {}
    carried: dict[str, Any] = {}
    env_from_image = set(image_config.get("Env") or [])
    env = [e for e in container.get("Env") or [] if e not in env_from_image]
    if env:
        carried["Env"] = env
    for key in UNLESS_FROM_IMAGE:
        value = container.get(key)
        if value and value != image_config.get(key):
            carried[key] = value
    for key in MERGED_WITH_IMAGE:
        from_image = image_config.get(key) or {}
        own = {k: v for k, v in (container.get(key) or {}).items()
               if k not in from_image or from_image[k] != v}
        if key == "Labels":
            own = {k: v for k, v in own.items() if not k.startswith(ROLLOUT_LABEL_PREFIX)}
        if own:
            carried[key] = own
    for key in OPERATOR_ONLY:
        if container.get(key):
            carried[key] = container[key]
    hostname = container.get("Hostname")
    if hostname and hostname not in derived_hostnames(old, engine_name):
        carried["Hostname"] = hostname
    return carried


def derived_hostnames(old: dict[str, Any], engine_name: str | None) -> set[str]:
    """Hostnames the engine gives a container whose operator set none."""
    mode = (old.get("HostConfig") or {}).get("NetworkMode") or ""
    derived = {str(old.get("Id", ""))[:12]}
    if mode == "host" and engine_name:
        derived.add(engine_name)
    if mode.startswith("container:"):
        # It shares that container's UTS namespace: the engine refuses a hostname of its own.
        derived.add(str(old["Config"].get("Hostname")))
    return derived


def legacy_links(links: list[str] | None) -> list[str] | None:
    """HostConfig.Links as a create body takes them ("name:alias"): inspect shows legacy links of
    the default bridge as "/name:/container/alias", naming the old container."""
    if not links:
        return links
    return [f"{name.lstrip('/')}:{alias.rsplit('/', 1)[-1]}" for name, _, alias in (link.partition(":") for link in links)]


def operator_endpoints(old: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Network name -> the EndpointSettings the operator chose, for every user-defined network old is on.

    The engine adds the container's short id to its aliases on each user-defined network
    (moby daemon/network.go, "Aliases" plus the short id): that alias is the old container's, not
    the operator's. Built-in networks take no endpoint settings (the engine refuses aliases and
    static addresses there).
    """
    short_id = str(old.get("Id", ""))[:12]
    endpoints: dict[str, dict[str, Any]] = {}
    for network, settings in ((old.get("NetworkSettings") or {}).get("Networks") or {}).items():
        if network in BUILTIN_NETWORKS:
            continue
        chosen = {key: settings.get(key) for key in ENDPOINT_SETTINGS}
        chosen["Aliases"] = [a for a in chosen["Aliases"] or [] if a != short_id]
        ipam = {k: v for k, v in (chosen["IPAMConfig"] or {}).items() if v}
        chosen["IPAMConfig"] = ipam
        endpoints[network] = {key: value for key, value in chosen.items() if value}
    return endpoints


def network_ids(old: dict[str, Any]) -> dict[str, str]:
    """Network name -> network id, for every network old is on."""
    networks = (old.get("NetworkSettings") or {}).get("Networks") or {}
    return {name: str(settings.get("NetworkID") or "") for name, settings in networks.items()}


def network_plan(mode: str, old_mode: str, endpoints: dict[str, dict[str, Any]], ids: dict[str, str] | None = None
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """({network: endpoint} for the create body, {network: endpoint} to connect before start).

    `mode` is the new HostConfig.NetworkMode (rollout.toml `network` may have changed it from
    `old_mode`); either may be a network's name or (a prefix of) its id, as `--network` takes
    (ids: name -> id). The network it names keeps the old endpoint settings on it, keyed by
    `mode` as the docker CLI keys them; the old container's other user-defined networks are joined
    too, except the one `network` replaced. `host`, `none` and `container:` modes join nothing
    else (the engine refuses that); the default bridge (`bridge`, `default`) does, as after a
    `docker network connect`.
    """
    ids = ids or {}
    primary_name = _network_named(mode, ids)
    endpoint = endpoints.get(primary_name or "")
    primary = {mode: endpoint} if endpoint else {}
    if joins_no_other_network(mode):
        return primary, {}
    replaced = {primary_name, _network_named(old_mode, ids)}
    more = {name: settings for name, settings in endpoints.items() if name not in replaced}
    return primary, more


def joins_no_other_network(mode: str) -> bool:
    """Whether a container in HostConfig.NetworkMode `mode` cannot be on any other network."""
    return mode in ALONE_NETWORK_MODES or mode.startswith("container:")


def _network_named(mode: str, ids: dict[str, str]) -> str | None:
    if mode in ids:
        return mode
    return next((name for name, network_id in ids.items() if network_id and network_id.startswith(mode)), None)


def anonymous_volumes(old: dict[str, Any]) -> list[dict[str, Any]]:
    """old's anonymous volumes, as its inspected `Mounts` entries (Name, Destination, RW...).

    Anonymous: a volume at a path its Config.Volumes declares (the image's VOLUME, `-v /path`) or
    a `--mount type=volume` without a source, where no bind or named volume was mounted instead.
    """
    host = old.get("HostConfig") or {}
    declared = {_clean(path) for path in (old.get("Config") or {}).get("Volumes") or {}}
    declared |= {_clean(m.get("Target", "")) for m in host.get("Mounts") or []
                 if m.get("Type") == "volume" and not m.get("Source")}
    declared -= _named_destinations(host)
    return [dict(m) for m in old.get("Mounts") or []
            if m.get("Type") == "volume" and m.get("Name") and _clean(m.get("Destination", "")) in declared]


def reuse_anonymous_volumes(host_config: dict[str, Any], volumes: list[dict[str, Any]]) -> None:
    """Mount each of the old container's anonymous volumes at its path in host_config (in place).

    What `docker compose up` does when it recreates a service: docker/compose
    pkg/compose/create.go `buildContainerMountOptions` mounts the replaced container's anonymous
    volumes at the same paths ("inherit previous container's anonymous volume"), as a volume mount
    with the volume's name as source. Compose v2 does it for the paths the new image or the service
    declares; here every anonymous volume is carried, as Compose v1 did (compose/service.py
    `get_container_data_volumes`): data must never be left behind on a retired container. A path
    the target's own `volumes` setting now binds keeps that bind.
    """
    mounts = [dict(m) for m in host_config.get("Mounts") or []]
    taken = _named_destinations(host_config) | {_clean(path) for path in host_config.get("Tmpfs") or {}}
    for volume in volumes:
        destination = _clean(volume["Destination"])
        if destination in taken:
            continue
        sourceless = next((m for m in mounts if m.get("Type") == "volume" and not m.get("Source")
                           and _clean(m.get("Target", "")) == destination), None)
        if sourceless is not None:
            sourceless["Source"] = volume["Name"]
        else:
            mounts.append({"Type": "volume", "Source": volume["Name"], "Target": destination,
                           "ReadOnly": not volume.get("RW", True)})
        taken.add(destination)
    if mounts:
        host_config["Mounts"] = mounts


def _named_destinations(host_config: dict[str, Any]) -> set[str]:
    """Paths where a bind or a named volume is mounted (`-v SRC:DST[:opts]`, `--mount source=...`)."""
    binds = {_clean(bind.split(":")[1]) for bind in host_config.get("Binds") or [] if bind.count(":") >= 1}
    mounts = {_clean(m.get("Target", "")) for m in host_config.get("Mounts") or [] if m.get("Source")}
    return binds | mounts


def _clean(path: str) -> str:
    return posixpath.normpath(path) if path else path


def apply_overrides(config: dict[str, Any], host_config: dict[str, Any], settings: dict[str, Any]) -> None:
    """Apply the target's rollout.toml settings to config and host_config (in place); they win over what was carried.

    command/entrypoint (a string runs under `sh -c` / is one argument) replace; env and labels
    are merged over the carried ones; user, network, restart ("name[:max-retries]"), volumes
    (the whole `-v` list) and ports ({"80/tcp": "[host-ip:]host-port"}, also exposed) replace.
    """
    s = settings
    if "command" in s:
        config["Cmd"] = ["sh", "-c", s["command"]] if isinstance(s["command"], str) else list(s["command"])
    if "entrypoint" in s:
        config["Entrypoint"] = [s["entrypoint"]] if isinstance(s["entrypoint"], str) else list(s["entrypoint"])
    if "env" in s:
        env = {k: v for k, v in (e.split("=", 1) for e in config.get("Env", []) if "=" in e)}
        env.update({k: str(v) for k, v in s["env"].items()})
        config["Env"] = [f"{k}={v}" for k, v in env.items()]
    if "labels" in s:
        config["Labels"] = {**config.get("Labels", {}), **{k: str(v) for k, v in s["labels"].items()}}
    if "user" in s:
        config["User"] = s["user"]
    if "network" in s:
        host_config["NetworkMode"] = s["network"]
    if "restart" in s:
        host_config["RestartPolicy"] = restart_policy(s["restart"])
    if "volumes" in s:
        host_config["Binds"] = list(s["volumes"])
    if "ports" in s:
        bindings: dict[str, list[dict[str, str]]] = {}
        for container_port, host_port in s["ports"].items():
            port = container_port if "/" in container_port else f"{container_port}/tcp"
            host_ip, _, host_port_only = str(host_port).rpartition(":")
            bindings[port] = [{"HostIp": host_ip, "HostPort": host_port_only}]
            config.setdefault("ExposedPorts", {})[port] = {}
        host_config["PortBindings"] = bindings


def restart_policy(setting: str) -> dict[str, Any]:
    """HostConfig.RestartPolicy for a `restart` setting as `docker run --restart` takes it:
    "no", "always", "unless-stopped" or "on-failure[:N]" -> {"Name": ..., "MaximumRetryCount": N}.

    The setting was checked at load (rollout.targets.kinds: N has at most 9 digits, which the
    engine's int field holds). Raises ValueError for a count that is no number.
    """
    name, _, retries = str(setting).partition(":")
    return {"Name": name, "MaximumRetryCount": int(retries or 0)}
