"""The create body of a replacing container, from `docker inspect` dicts (no engine needed).

The engine tests in test_container_identity.py check the same rules against the real engine;
these pin each rule and its edge cases (what is derived, what yields to the image, what the
rollout.toml settings override).
"""

from __future__ import annotations

import copy
from typing import Any

from rollout.targets.docker.spec import (
    anonymous_volumes,
    create_spec,
    legacy_links,
    network_plan,
    operator_config,
    operator_endpoints,
    reuse_anonymous_volumes,
)

OLD_ID = "4c1097fa82e2" + "0" * 52
IMAGE_CONFIG = {
    "Env": ["PATH=/bin", "PORT=18080"],
    "Cmd": ["sh", "-c", "serve"],
    "Labels": {"org.opencontainers.image.version": "1", "team": "image"},
    "ExposedPorts": {"8080/tcp": {}},
    "Volumes": {"/data": {}},
    "Healthcheck": {"Test": ["CMD", "true"]},
    "StopSignal": "SIGQUIT",
    "WorkingDir": "/app",
}
LABELS = {"rollout.entry": "7", "rollout.app": "web"}


def inspected(**changes: Any) -> dict[str, Any]:
    """An inspected container of IMAGE_CONFIG's image, on network `net1`, as the engine reports it."""
    container: dict[str, Any] = {
        "Id": OLD_ID,
        "Image": "sha256:" + "1" * 64,
        "Config": {
            "Hostname": OLD_ID[:12], "Domainname": "", "User": "", "Tty": False, "OpenStdin": False,
            "AttachStdout": True, "Env": ["PATH=/bin", "PORT=18080", "EXTRA=kept"], "Cmd": ["sh", "-c", "serve"],
            "Image": "reg/web@sha256:" + "2" * 64, "Volumes": {"/data": {}}, "WorkingDir": "/app",
            "Entrypoint": None, "Labels": {"org.opencontainers.image.version": "1", "team": "payments",
                                           "rollout.entry": "6"},
            "ExposedPorts": {"8080/tcp": {}}, "Healthcheck": {"Test": ["CMD", "true"]}, "StopSignal": "SIGQUIT",
        },
        "HostConfig": {"NetworkMode": "net1", "Binds": None, "Mounts": None, "Tmpfs": None,
                       "RestartPolicy": {"Name": "always", "MaximumRetryCount": 0}, "Links": None},
        "Mounts": [{"Type": "volume", "Name": "a" * 64, "Source": "/var/lib/docker/volumes/x/_data",
                    "Destination": "/data", "Driver": "local", "RW": True}],
        "NetworkSettings": {"Networks": {
            "net1": {"IPAMConfig": {"IPv4Address": "172.30.77.10", "IPv6Address": ""}, "Links": None,
                     "Aliases": ["api", "web-api", OLD_ID[:12]], "NetworkID": "f" * 64, "EndpointID": "e" * 64,
                     "IPAddress": "172.30.77.10", "MacAddress": "02:42:ac:1e:4d:0a", "DriverOpts": None},
            "net2": {"IPAMConfig": None, "Links": ["peer:lnk"], "Aliases": [OLD_ID[:12]], "NetworkID": "9" * 64,
                     "DriverOpts": {"foo": "bar"}, "IPAddress": "172.30.78.3"},
        }},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        container[section][field] = value
    return container


def test_only_what_the_operator_set_is_carried_and_the_old_images_settings_yield() -> None:
    carried = operator_config(inspected(), IMAGE_CONFIG)
    assert carried == {"Env": ["EXTRA=kept"], "Labels": {"team": "payments"}, "AttachStdout": True}


def test_the_operators_own_values_are_carried_even_where_an_image_sets_them_too() -> None:
    config = inspected()["Config"]
    config.update(Cmd=["httpd"], Entrypoint=["/init"], User="1000", WorkingDir="/srv", StopSignal="SIGINT",
                  Healthcheck={"Test": ["CMD", "false"], "Interval": 5_000_000_000},
                  ExposedPorts={"8080/tcp": {}, "9000/tcp": {}}, Volumes={"/data": {}, "/cache": {}},
                  Domainname="example.test", MacAddress="02:42:ac:11:00:99", StopTimeout=7, Tty=True, OpenStdin=True)
    carried = operator_config({**inspected(), "Config": config}, IMAGE_CONFIG)
    assert carried["Cmd"] == ["httpd"] and carried["Entrypoint"] == ["/init"] and carried["User"] == "1000"
    assert carried["WorkingDir"] == "/srv" and carried["StopSignal"] == "SIGINT"
    assert carried["Healthcheck"]["Test"] == ["CMD", "false"]
    assert carried["ExposedPorts"] == {"9000/tcp": {}} and carried["Volumes"] == {"/cache": {}}
    assert (carried["Domainname"], carried["MacAddress"], carried["StopTimeout"]) == ("example.test",
                                                                                        "02:42:ac:11:00:99", 7)
    assert carried["Tty"] is True and carried["OpenStdin"] is True


def test_a_hostname_the_engine_made_up_is_not_carried_one_the_operator_set_is() -> None:
    assert "Hostname" not in operator_config(inspected(), IMAGE_CONFIG)  # the old container's id
    on_host = inspected(HostConfig__NetworkMode="host", Config__Hostname="web-1")
    assert "Hostname" not in operator_config(on_host, IMAGE_CONFIG, engine_name="web-1")  # the engine's name
    assert operator_config(on_host, IMAGE_CONFIG, engine_name="vm")["Hostname"] == "web-1"
    assert operator_config(inspected(Config__Hostname="api-1"), IMAGE_CONFIG)["Hostname"] == "api-1"
    shared = inspected(HostConfig__NetworkMode="container:db", Config__Hostname="db-host")
    assert "Hostname" not in operator_config(shared, IMAGE_CONFIG)


def test_endpoint_settings_are_the_operators_without_the_old_containers_own_alias() -> None:
    endpoints = operator_endpoints(inspected())
    assert endpoints == {"net1": {"IPAMConfig": {"IPv4Address": "172.30.77.10"}, "Aliases": ["api", "web-api"]},
                         "net2": {"Links": ["peer:lnk"], "DriverOpts": {"foo": "bar"}}}
    host = inspected()
    host["NetworkSettings"]["Networks"] = {"host": {"Aliases": None, "NetworkID": "h" * 64}}
    assert operator_endpoints(host) == {}


def test_one_network_at_create_and_the_others_connected_before_start() -> None:
    spec = create_spec("reg/web@sha256:" + "3" * 64, LABELS, inspected(), IMAGE_CONFIG, {})
    assert spec.body["HostConfig"]["NetworkMode"] == "net1"
    assert spec.body["NetworkingConfig"] == {"EndpointsConfig": {"net1": {
        "IPAMConfig": {"IPv4Address": "172.30.77.10"}, "Aliases": ["api", "web-api"]}}}
    assert spec.more_networks == {"net2": {"Links": ["peer:lnk"], "DriverOpts": {"foo": "bar"}}}


def test_network_plan_when_the_mode_is_an_id_or_overridden() -> None:
    endpoints = {"net1": {"Aliases": ["api"]}, "net2": {}}
    ids = {"net1": "f" * 64, "net2": "9" * 64}
    # `--network <id prefix>`: the same network, keyed as the CLI keys it, not joined twice.
    assert network_plan("ffff", "ffff", endpoints, ids) == ({"ffff": {"Aliases": ["api"]}}, {"net2": {}})
    # rollout.toml network = "net2": it replaces net1, with net2's own settings.
    assert network_plan("net2", "net1", endpoints, ids) == ({}, {})
    # A network the old container was not on: the others still join.
    assert network_plan("net3", "net1", endpoints, ids) == ({}, {"net2": {}})
    # host (or none, or container:) takes no other network.
    assert network_plan("host", "net1", endpoints, ids) == ({}, {})


def test_anonymous_volumes_are_mounted_again_and_named_or_bound_paths_are_not_touched() -> None:
    old = inspected()
    old["Config"]["Volumes"] = {"/data": {}, "/anon": {}, "/named": {}, "/bound": {}}
    old["HostConfig"]["Binds"] = ["cache:/named", "/srv/x:/bound:ro"]
    old["HostConfig"]["Mounts"] = [{"Type": "volume", "Target": "/mnt/anon-mount"},
                                   {"Type": "volume", "Source": "logs", "Target": "/logs"}]
    old["Mounts"] = [
        {"Type": "volume", "Name": "a" * 64, "Destination": "/data", "RW": True},
        {"Type": "volume", "Name": "b" * 64, "Destination": "/anon/", "RW": False},
        {"Type": "volume", "Name": "cache", "Destination": "/named", "RW": True},
        {"Type": "bind", "Source": "/srv/x", "Destination": "/bound", "RW": False},
        {"Type": "volume", "Name": "c" * 64, "Destination": "/mnt/anon-mount", "RW": True},
        {"Type": "volume", "Name": "logs", "Destination": "/logs", "RW": True},
    ]
    assert [v["Name"][:1] for v in anonymous_volumes(old)] == ["a", "b", "c"]
    spec = create_spec("reg/web@sha256:" + "3" * 64, LABELS, old, IMAGE_CONFIG, {})
    assert spec.body["HostConfig"]["Binds"] == ["cache:/named", "/srv/x:/bound:ro"]
    assert spec.body["HostConfig"]["Mounts"] == [
        {"Type": "volume", "Target": "/mnt/anon-mount", "Source": "c" * 64},
        {"Type": "volume", "Source": "logs", "Target": "/logs"},
        {"Type": "volume", "Source": "a" * 64, "Target": "/data", "ReadOnly": False},
        {"Type": "volume", "Source": "b" * 64, "Target": "/anon", "ReadOnly": True},
    ]
    # The container created from that body carries them in HostConfig: the next deploy finds
    # nothing anonymous left to add, and mounts the same volumes again through HostConfig.
    second = copy.deepcopy(old)
    second["HostConfig"] = spec.body["HostConfig"]
    assert anonymous_volumes(second) == []
    again = create_spec("reg/web@sha256:" + "4" * 64, LABELS, second, IMAGE_CONFIG, {})
    assert again.body["HostConfig"]["Mounts"] == spec.body["HostConfig"]["Mounts"]


def test_a_volumes_setting_binding_the_path_wins_over_the_anonymous_volume() -> None:
    host_config: dict[str, Any] = {"Binds": ["/srv/data:/data"], "Mounts": None}
    reuse_anonymous_volumes(host_config, anonymous_volumes(inspected()))
    assert host_config["Mounts"] is None
    spec = create_spec("img", LABELS, inspected(), IMAGE_CONFIG, {"volumes": ["/srv/data:/data"]})
    assert spec.body["HostConfig"]["Binds"] == ["/srv/data:/data"] and not spec.body["HostConfig"]["Mounts"]


def test_rollout_toml_settings_win_over_carried_values_and_rollouts_labels_over_all() -> None:
    settings = {"env": {"EXTRA": "set", "PORT": 9}, "command": "serve --fast", "entrypoint": "/init",
                "labels": {"team": "web", "rollout.entry": "forged"}, "user": "1000", "network": "host",
                "restart": "on-failure:3", "volumes": ["/srv:/srv"], "ports": {"80": "127.0.0.1:8080"}}
    body = create_spec("reg/web@sha256:" + "3" * 64, LABELS, inspected(), IMAGE_CONFIG, settings).body
    assert body["Image"] == "reg/web@sha256:" + "3" * 64
    assert body["Env"] == ["EXTRA=set", "PORT=9"]
    assert body["Cmd"] == ["sh", "-c", "serve --fast"] and body["Entrypoint"] == ["/init"]
    assert body["Labels"] == {"team": "web", "rollout.entry": "7", "rollout.app": "web"}
    assert body["User"] == "1000"
    host = body["HostConfig"]
    assert host["NetworkMode"] == "host" and "NetworkingConfig" not in body
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert host["Binds"] == ["/srv:/srv"]
    assert host["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}
    assert body["ExposedPorts"] == {"80/tcp": {}}


def test_a_first_deploy_gets_dockers_defaults_and_the_settings() -> None:
    spec = create_spec("img", LABELS, None, {}, {"env": {"PORT": "1"}})
    assert spec.body == {"Env": ["PORT=1"], "Labels": LABELS, "Image": "img", "HostConfig": {"NetworkMode": "default"}}
    assert spec.more_networks == {}


def test_legacy_links_are_given_back_as_create_takes_them() -> None:
    assert legacy_links(["/db:/web/database", "/cache:/web/cache"]) == ["db:database", "cache:cache"]
    assert legacy_links(None) is None


def test_a_container_on_the_default_bridge_keeps_the_user_defined_networks_it_was_connected_to() -> None:
    """`docker run` without --network (mode "default", or --network bridge), then `docker network
    connect --alias api net2`: the default bridge takes other networks, unlike host/none/container:."""
    for mode in ("default", "bridge"):
        old = inspected(HostConfig__NetworkMode=mode)
        old["NetworkSettings"]["Networks"] = {
            "bridge": {"IPAMConfig": None, "Links": None, "Aliases": None, "NetworkID": "", "IPAddress": ""},
            "net2": {"IPAMConfig": {}, "Links": None, "Aliases": ["api", OLD_ID[:12]], "NetworkID": "9" * 64,
                     "DriverOpts": {}},
        }
        spec = create_spec("reg/web@sha256:" + "3" * 64, LABELS, old, IMAGE_CONFIG, {})
        assert spec.body["HostConfig"]["NetworkMode"] == mode and "NetworkingConfig" not in spec.body
        assert spec.more_networks == {"net2": {"Aliases": ["api"]}}, mode
    ids = {"net2": "9" * 64}
    for alone in ("host", "none", "container:" + OLD_ID):
        assert network_plan(alone, "default", {"net2": {"Aliases": ["api"]}}, ids) == ({}, {}), alone


def test_rm_is_not_carried_so_the_replaced_container_is_kept() -> None:
    old = inspected(HostConfig__AutoRemove=True, HostConfig__RestartPolicy={"Name": "no", "MaximumRetryCount": 0})
    body = create_spec("reg/web@sha256:" + "3" * 64, LABELS, old, IMAGE_CONFIG, {}).body
    assert not body["HostConfig"].get("AutoRemove")
    assert body["HostConfig"]["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}


def test_the_restart_setting_is_parsed_once_and_its_count_is_bounded_at_load(tmp_path: Any) -> None:
    from rollout.config import load
    from rollout.errors import ConfigError
    from rollout.targets.docker.spec import restart_policy

    assert restart_policy("on-failure:123456789") == {"Name": "on-failure", "MaximumRetryCount": 123456789}
    assert restart_policy("always") == {"Name": "always", "MaximumRetryCount": 0}
    config = tmp_path / "rollout.toml"
    template = ('[apps.web]\nimage = "reg/web"\n[[apps.web.targets]]\nname = "local"\nkind = "docker"\n'
                'container = "web"\nrestart = "{}"\n')
    config.write_text(template.format("on-failure:123456789"))
    [target] = load(str(config)).apps["web"].targets
    assert target.settings["restart"] == "on-failure:123456789"
    # 10 digits and more: refused at load (exit 2) instead of failing the create, or int() itself.
    config.write_text(template.format("on-failure:" + "9" * 5000))
    try:
        load(str(config))
    except ConfigError as exc:
        assert "restart" in str(exc) and "9 digits" in str(exc)
    else:
        raise AssertionError("a 5000-digit retry count was accepted")
