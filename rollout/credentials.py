"""Registry credentials from Docker's config.json, the way the docker CLI finds them.

Lookup order for a registry: its `credHelpers` entry, else the `credsStore`
default, else the `auths` entry. Helpers are run as `docker-credential-NAME get`
with the server name on stdin and answer `{"Username": ..., "Secret": ...}`.
Secrets never reach reprs, logs or exception messages.

Not docker.auth.load_config/resolve_authconfig: on the same config.json and helpers they
find the same credentials in the common cases (tests/test_sdk_equivalence.py), but they
ignore `username`/`password` entries, know Docker Hub under two of its three names, compare
host names case-sensitively, skip a config.json that is not JSON silently (a 401 later instead
of an error naming the file) and raise a bare ValueError for a bad `auth` entry.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout.errors import ConfigError

log = logging.getLogger(__name__)

# Docker keys Docker Hub credentials under its old index URL, for helpers and `auths` alike.
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
HELPER_TIMEOUT = 30.0
# The user name a credential helper answers with when its secret is an identity token (an OAuth2 refresh
# token), not a password (docker/cli cli/config/credentials/native_store.go `tokenUsername`).
TOKEN_USERNAME = "<token>"


@dataclass(frozen=True)
class Credentials:
    """A user name and secret for one registry; the secret never shows in repr/str (logs, tracebacks)."""

    username: str
    secret: str = field(repr=False)
    source: str = ""  # where they came from, e.g. "config.json auths" or "docker-credential-pass"

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, secret=<hidden>, source={self.source!r})"

    __str__ = __repr__


def default_config_dir() -> Path:
    """Where the docker CLI reads config.json from: $DOCKER_CONFIG, else ~/.docker (docker/cli cli/config/config.go)."""
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def load_docker_config(config_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The parsed config.json, or {} when there is none."""
    path = Path(config_dir) if config_dir is not None else default_config_dir()
    path = path / "config.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        # The message names the position only: the text may hold credentials.
        raise ConfigError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return config


def hostname_of(server: str) -> str:
    """'https://index.docker.io/v1/' -> 'index.docker.io'; 'host:5000' stays as is."""
    for prefix in ("https://", "http://"):
        if server.lower().startswith(prefix):
            server = server[len(prefix):]
    return server.split("/", 1)[0].lower()


def is_docker_hub(registry: str) -> bool:
    """Whether registry names Docker Hub under any of its names (docker.io, index.docker.io, registry-1.docker.io)."""
    return hostname_of(registry) in DOCKER_HUB_ALIASES


def helper_server_name(registry: str) -> str:
    """The server name a credential helper is asked for: Docker Hub's old index URL for Docker Hub, else registry as given."""
    return DOCKER_HUB_SERVER if is_docker_hub(registry) else registry


def helper_for(config: dict[str, Any], registry: str) -> str | None:
    """The credential helper suffix (docker-credential-SUFFIX) for registry: its credHelpers entry
    (host names compared, Docker Hub aliases equal), else credsStore; None when neither is set."""
    helpers = config.get("credHelpers") or {}
    for key, name in helpers.items():
        if hostname_of(key) == hostname_of(registry) or (is_docker_hub(key) and is_docker_hub(registry)):
            return str(name)
    store = config.get("credsStore")
    return str(store) if store else None


def from_helper(helper: str, registry: str) -> Credentials | None:
    """Ask `docker-credential-<helper>`; None when it has nothing for this registry."""
    program = f"docker-credential-{helper}"
    if shutil.which(program) is None:
        raise ConfigError(f"credential helper {program} for registry {registry} is not on PATH")
    try:
        answer = subprocess.run(
            [program, "get"],
            input=helper_server_name(registry).encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"credential helper {program} did not answer within {HELPER_TIMEOUT:.0f}s") from None
    if answer.returncode != 0:
        # Helpers exit non-zero for "credentials not found"; their output is not echoed
        # because a confused helper might print a secret.
        log.debug("%s found no credentials for %s (exit %d)", program, registry, answer.returncode)
        return None
    try:
        found = json.loads(answer.stdout)
        username, secret = str(found["Username"]), str(found["Secret"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"credential helper {program} gave an unreadable answer for {registry}") from None
    if not secret:
        return None
    return Credentials(username, secret, program)


def from_auths(config: dict[str, Any], registry: str) -> Credentials | None:
    """registry's entry in config.json `auths` (keys compared by host name, with or without scheme
    and path), None when there is none. Raises ConfigError (exit 2) for an entry that cannot be decoded."""
    wanted = hostname_of(registry)
    for key, entry in (config.get("auths") or {}).items():
        same = hostname_of(key) == wanted or (is_docker_hub(key) and is_docker_hub(registry))
        if same and isinstance(entry, dict):
            found = decode_auth_entry(entry, registry)
            if found is not None:
                return found
    return None


def decode_auth_entry(entry: dict[str, Any], registry: str) -> Credentials | None:
    """One `auths` entry: `auth` (base64 "user:password") or `username` + `password`; None when it has
    neither (e.g. only an identitytoken). Raises ConfigError (exit 2) naming the registry, never the value."""
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(entry["auth"], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(f"config.json: the auth entry for {registry} is not base64 user:password") from None
        username, colon, secret = decoded.partition(":")
        if not colon:
            raise ConfigError(f"config.json: the auth entry for {registry} has no ':' between user and password")
        return Credentials(username, secret, "config.json auths")
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]), "config.json auths")
    return None


def engine_auth(found: Credentials | None) -> dict[str, str] | None:
    """What the Docker Engine API takes as a pull's X-Registry-Auth (POST /images/create; the SDK's
    auth_config): {"username", "password"}, or {"identitytoken"} for a credential helper's identity
    token (TOKEN_USERNAME); None without credentials (the SDK then looks in config.json itself).
    Given explicitly so the engine pulls with the credentials rollout's own registry requests used:
    the SDK's own lookup ignores `username`/`password` entries (this module's docstring)."""
    if found is None:
        return None
    if found.username == TOKEN_USERNAME:
        return {"identitytoken": found.secret}
    return {"username": found.username, "password": found.secret}


def credentials_for(registry: str, config_dir: str | os.PathLike[str] | None = None) -> Credentials | None:
    """Credentials for `registry` (as written in image references, e.g. 'ghcr.io', 'host:5000')."""
    config = load_docker_config(config_dir)
    helper = helper_for(config, registry)
    if helper is not None:
        found = from_helper(helper, registry)
        if found is not None:
            return found
    return from_auths(config, registry)
