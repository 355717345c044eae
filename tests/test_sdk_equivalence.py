"""Issue 12, item 6: does the Docker SDK's own code do the same job as ours, on the same inputs?

Docker contexts (`docker.context.ContextAPI`) against rollout.targets.docker.endpoint.resolve_endpoint,
and config.json credentials (`docker.auth.load_config(...).resolve_authconfig`, credential helpers
through `docker.credentials`) against rollout.credentials.credentials_for. Where both give the same
answer the case is listed as equal; where the SDK differs in a way a user would notice, ours is kept
and the case asserts both answers, so a future SDK that agrees makes the test fail and says to
reconsider switching. Secrets here are dummies; none is printed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import docker.auth
import pytest
from docker.context import ContextAPI

from rollout.credentials import credentials_for
from rollout.errors import ConfigError
from rollout.targets.docker.endpoint import resolve_endpoint

SDK_AGREES = "the SDK now gives the same answer: consider using it instead of ours (issue 12, item 6)"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- Docker contexts ----------------------------------------------------------------------------


def _context(config_dir: Path, name: str, host: str, tls: bool) -> None:
    """A context as `docker context create NAME --docker host=HOST,ca=...,cert=...,key=...` stores it."""
    key = hashlib.sha256(name.encode()).hexdigest()
    meta = config_dir / "contexts" / "meta" / key
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps(
        {"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}}}))
    if tls:
        material = config_dir / "contexts" / "tls" / key / "docker"
        material.mkdir(parents=True)
        for file in ("ca.pem", "cert.pem", "key.pem"):
            (material / file).write_text("not a real certificate")


def _tls(tls: Any) -> tuple[Any, ...] | None:
    return None if tls is None else (tls.ca_cert, tls.cert, tls.verify)


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    _context(tmp_path, "remote", "tcp://10.0.0.5:2376", tls=True)
    _context(tmp_path, "plain", "ssh://deploy@10.0.0.6", tls=False)
    return tmp_path


@pytest.mark.parametrize("name", ["remote", "plain"])
def test_a_context_resolves_as_the_sdk_resolves_it(docker_config: Path, name: str) -> None:
    (docker_config / "config.json").write_text("{}")
    ours = resolve_endpoint(f"context:{name}")
    sdk = ContextAPI.get_context(name)
    assert (ours.host, _tls(ours.tls)) == (sdk.Host, _tls(sdk.TLSConfig))


def test_the_sdk_differs_where_users_notice_so_ours_is_kept(docker_config: Path) -> None:
    # 1. No config.json in DOCKER_CONFIG (`docker context create` does not write one): the docker
    #    CLI finds the context; the SDK looks for contexts relative to the working directory.
    assert resolve_endpoint("context:remote").host == "tcp://10.0.0.5:2376"
    assert ContextAPI.get_context("remote") is None, SDK_AGREES
    # 2. The default context is DOCKER_HOST for the docker CLI; the SDK says the local socket.
    (docker_config / "config.json").write_text("{}")
    assert resolve_endpoint("context:default").host == "tcp://127.0.0.1:2375"
    assert ContextAPI.get_context("default").Host == "unix:///var/run/docker.sock", SDK_AGREES
    # 3. A context that does not exist: ours is a one-line config error naming the known ones
    #    and what to do; the SDK answers None, which would surface much later.
    with pytest.raises(ConfigError, match=r"no Docker context 'gone' in .*known: plain, remote\): create it"):
        resolve_endpoint("context:gone")
    assert ContextAPI.get_context("gone") is None, SDK_AGREES


# -- config.json credentials --------------------------------------------------------------------

HELPER = """#!/bin/sh
read server
case "$server" in
  helped.example:5000|https://index.docker.io/v1/) printf '{"ServerURL":"%s","Username":"helped-user","Secret":"helped-secret"}' "$server";;
  *) echo "credentials not found in native keychain"; exit 1;;
esac
"""


@pytest.fixture
def helper_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A credential helper speaking the docker-credential-helpers protocol (`get`, server on stdin)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "docker-credential-rollouttest"
    program.write_text(HELPER)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _ours(config_dir: Path, registry: str) -> tuple[str, str] | None:
    found = credentials_for(registry, config_dir)
    return None if found is None else (found.username, found.secret)


def _sdk(config_dir: Path, registry: str) -> tuple[str, str] | None:
    found = docker.auth.load_config(config_path=str(config_dir / "config.json")).resolve_authconfig(registry)
    return (found.get("Username") or found.get("username"), found.get("Password") or found.get("password")) \
        if found else None


EQUAL = {
    "auths, auth": ({"auths": {"reg.example:5000": {"auth": _b64("user:pass")}}}, "reg.example:5000"),
    "auths, another registry": ({"auths": {"reg.example:5000": {"auth": _b64("user:pass")}}}, "other:5000"),
    "auths key with scheme and path": ({"auths": {"https://reg.example:5000/v2/": {"auth": _b64("u:p")}}},
                                       "reg.example:5000"),
    "docker hub as docker.io": ({"auths": {"https://index.docker.io/v1/": {"auth": _b64("hub:pw")}}}, "docker.io"),
    "docker hub as index.docker.io": ({"auths": {"https://index.docker.io/v1/": {"auth": _b64("hub:pw")}}},
                                      "index.docker.io"),
    "credHelpers before auths": ({"credHelpers": {"helped.example:5000": "rollouttest"},
                                  "auths": {"helped.example:5000": {"auth": _b64("auths:pw")}}}, "helped.example:5000"),
    "credsStore": ({"credsStore": "rollouttest"}, "helped.example:5000"),
    "credsStore for docker hub": ({"credsStore": "rollouttest"}, "docker.io"),
    "credsStore without the entry: auths": ({"credsStore": "rollouttest",
                                             "auths": {"other:5000": {"auth": _b64("auths:pw")}}}, "other:5000"),
}


@pytest.mark.parametrize("config, registry", EQUAL.values(), ids=EQUAL.keys())
def test_credentials_are_found_as_the_sdk_finds_them(tmp_path: Path, helper_on_path: None,
                                                     config: dict[str, Any], registry: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert _ours(tmp_path, registry) == _sdk(tmp_path, registry)


DIFFERENT = {
    # The docker CLI reads `username`/`password` entries (types.AuthConfig); the SDK ignores them.
    "auths, username and password": ({"auths": {"reg.example": {"username": "u", "password": "p"}}},
                                     "reg.example", ("u", "p"), None),
    # registry-1.docker.io is Docker Hub too (the host images are pulled from); the SDK knows two names only.
    "docker hub as registry-1.docker.io": ({"auths": {"https://index.docker.io/v1/": {"auth": _b64("hub:pw")}}},
                                           "registry-1.docker.io", ("hub", "pw"), None),
    # Host names are case-insensitive (RFC 4343); the SDK compares them as written.
    "host name case": ({"auths": {"Reg.Example:5000": {"auth": _b64("u:p")}}}, "reg.example:5000", ("u", "p"), None),
}


@pytest.mark.parametrize("config, registry, ours, sdk", DIFFERENT.values(), ids=DIFFERENT.keys())
def test_where_the_sdk_finds_other_credentials_ours_is_kept(tmp_path: Path, config: dict[str, Any], registry: str,
                                                            ours: Any, sdk: Any) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert _ours(tmp_path, registry) == ours
    assert _sdk(tmp_path, registry) == sdk, SDK_AGREES


def test_a_broken_config_json_is_an_error_with_us_and_silence_with_the_sdk(tmp_path: Path) -> None:
    # The SDK logs and goes on without credentials, so the user sees a 401 later, far from the cause.
    (tmp_path / "config.json").write_text('{"auths": {"reg.example": {"auth": "c2VjcmV0')
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON \(line 1, column \d+\)$") as caught:
        credentials_for("reg.example", tmp_path)
    assert "c2VjcmV0" not in str(caught.value)  # the file may hold secrets: its text is not echoed
    assert _sdk(tmp_path, "reg.example") is None, SDK_AGREES
    # An auth entry that is not base64 user:password: one line naming the registry, not a ValueError.
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"reg.example": {"auth": "!!!"}}}))
    with pytest.raises(ConfigError, match=r"the auth entry for reg.example is not base64 user:password$"):
        credentials_for("reg.example", tmp_path)
    with pytest.raises(ValueError, match="not enough values to unpack"):
        _sdk(tmp_path, "reg.example")
