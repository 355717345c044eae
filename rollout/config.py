"""rollout.toml: apps, their image repository, health policy and targets.

Every error names the file and the key, so a typo never turns into a silent default.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rollout.errors import ConfigError, InvalidReference
from rollout.reference import parse_repository

DEFAULT_CONFIG = "rollout.toml"
DEFAULT_LEDGER = "state/ledger.db"

TARGET_KEYS = {
    "docker": {"name", "kind", "host", "container", "command", "entrypoint", "network", "env", "ports",
               "volumes", "restart", "labels", "user", "health"},
    "kubernetes": {"name", "kind", "kubeconfig", "context", "namespace", "deployment", "container", "health"},
}
HEALTH_KEYS = {"timeout", "interval", "stable", "http", "max_restarts"}
APP_KEYS = {"image", "health", "targets", "build", "rollout"}
TOP_KEYS = {"ledger", "apps", "registry", "notify"}


@dataclass(frozen=True)
class HealthPolicy:
    timeout: float = 60.0
    interval: float = 1.0
    stable: float = 5.0
    http: str | None = None
    max_restarts: int = 2


@dataclass(frozen=True)
class TargetConfig:
    name: str
    kind: str
    settings: dict[str, Any]
    health: HealthPolicy


@dataclass(frozen=True)
class AppConfig:
    name: str
    registry: str
    repository: str
    health: HealthPolicy
    targets: tuple[TargetConfig, ...]
    build: dict[str, Any] | None = None
    rollout: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> str:
        return f"{self.registry}/{self.repository}"


@dataclass(frozen=True)
class RegistrySettings:
    insecure: tuple[str, ...] = ()
    ca_bundle: str | None = None
    docker_config: str | None = None


@dataclass(frozen=True)
class Config:
    path: Path | None
    ledger_path: Path
    apps: dict[str, AppConfig]
    registry: RegistrySettings = RegistrySettings()
    notify: dict[str, Any] = field(default_factory=dict)

    def app(self, name: str | None) -> AppConfig:
        if name is None:
            if len(self.apps) == 1:
                return next(iter(self.apps.values()))
            if not self.apps:
                raise ConfigError(f"{self._where()} defines no apps: add an [apps.NAME] table")
            raise ConfigError(f"several apps are configured ({', '.join(sorted(self.apps))}): name one")
        try:
            return self.apps[name]
        except KeyError:
            known = ", ".join(sorted(self.apps)) or "none"
            raise ConfigError(f"unknown app {name!r} in {self._where()}: configured apps are {known}") from None

    def _where(self) -> str:
        return str(self.path) if self.path else "the configuration"


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("ROLLOUT_CONFIG") or DEFAULT_CONFIG)


def load(explicit: str | None = None, *, required: bool = True) -> Config:
    """Load the config named by -c, $ROLLOUT_CONFIG or ./rollout.toml.

    With required=False a missing file yields an empty config, so ledger-only
    commands (history, lock) work without one.
    """
    path = config_path(explicit)
    if not path.exists():
        if required or explicit or os.environ.get("ROLLOUT_CONFIG"):
            raise ConfigError(f"config file {path} not found: create it (see examples/) or pass -c PATH")
        return Config(path=None, ledger_path=_ledger_path(None, {}), apps={})
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}): fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc.__class__.__name__}: {exc}): check the file") from None
    return parse(data, path)


def parse(data: dict[str, Any], path: Path) -> Config:
    _check_keys(data, TOP_KEYS, path, "")
    apps_table = _table(data, "apps", path, "")
    apps = {name: _app(name, _table(apps_table, name, path, "apps."), path) for name in apps_table}
    registry_table = _table(data, "registry", path, "")
    _check_keys(registry_table, {"insecure", "ca_bundle", "docker_config"}, path, "registry.")
    registry = RegistrySettings(
        insecure=tuple(_str_list(registry_table, "insecure", path, "registry.")),
        ca_bundle=_relative(path, _opt_str(registry_table, "ca_bundle", path, "registry.")),
        docker_config=_relative(path, _opt_str(registry_table, "docker_config", path, "registry.")),
    )
    notify = _table(data, "notify", path, "")
    return Config(path=path, ledger_path=_ledger_path(path, data), apps=apps, registry=registry, notify=notify)


def _ledger_path(path: Path | None, data: dict[str, Any]) -> Path:
    if os.environ.get("ROLLOUT_LEDGER"):
        return Path(os.environ["ROLLOUT_LEDGER"])
    ledger = _table(data, "ledger", path, "") if path else {}
    if path:
        _check_keys(ledger, {"path"}, path, "ledger.")
    configured = _opt_str(ledger, "path", path, "ledger.") if path else None
    base = path.parent if path else Path.cwd()
    return base / (configured or DEFAULT_LEDGER)


def _app(name: str, table: dict[str, Any], path: Path) -> AppConfig:
    where = f"apps.{name}."
    _check_keys(table, APP_KEYS, path, where)
    image = _opt_str(table, "image", path, where)
    if not image:
        raise ConfigError(f"{path}: {where}image is missing: set it to the image repository, e.g. \"127.0.0.1:5000/{name}\"")
    try:
        registry, repository = parse_repository(image)
    except InvalidReference as exc:
        raise ConfigError(f"{path}: {where}image: {exc}") from None
    health = _health(_table(table, "health", path, where), HealthPolicy(), path, where + "health.")
    raw_targets = table.get("targets", [])
    if not isinstance(raw_targets, list) or not all(isinstance(t, dict) for t in raw_targets):
        raise ConfigError(f"{path}: {where}targets must be an array of tables ([[apps.{name}.targets]])")
    if not raw_targets:
        raise ConfigError(f"{path}: app {name!r} has no targets: add a [[apps.{name}.targets]] table")
    targets = tuple(_target(t, i, health, path, where) for i, t in enumerate(raw_targets))
    names = [t.name for t in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: {where}targets: duplicate target name {duplicates[0]!r}: names must be unique")
    build = _table(table, "build", path, where) or None
    rollout = _rollout(_table(table, "rollout", path, where), path, where + "rollout.")
    return AppConfig(name=name, registry=registry, repository=repository, health=health, targets=targets,
                     build=build, rollout=rollout)


def _target(table: dict[str, Any], index: int, app_health: HealthPolicy, path: Path, app_where: str) -> TargetConfig:
    where = f"{app_where}targets[{index}]."
    kind = table.get("kind", "docker")
    if not isinstance(kind, str) or kind not in TARGET_KEYS:
        raise ConfigError(f"{path}: {where}kind = {kind!r}: use \"docker\" or \"kubernetes\"")
    _check_keys(table, TARGET_KEYS[kind], path, where)
    name = _opt_str(table, "name", path, where)
    if not name:
        raise ConfigError(f"{path}: {where}name is missing: give every target a name")
    health = _health(_table(table, "health", path, where), app_health, path, where + "health.")
    settings = {k: v for k, v in table.items() if k not in {"name", "kind", "health"}}
    for key in ("host", "container", "network", "restart", "user", "kubeconfig", "context", "namespace", "deployment"):
        _opt_str(settings, key, path, where)
    for key in ("command", "entrypoint"):
        value = settings.get(key)
        if value is not None and not (isinstance(value, str) or _is_str_list(value)):
            raise ConfigError(f"{path}: {where}{key} must be a string or an array of strings")
    for key in ("env", "labels", "ports"):
        value = settings.get(key)
        if value is not None and not (isinstance(value, dict) and all(isinstance(v, (str, int)) for v in value.values())):
            raise ConfigError(f"{path}: {where}{key} must be a table of strings")
    restart = settings.get("restart")
    if restart is not None and not re.fullmatch(r"no|always|unless-stopped|on-failure(:\d+)?", restart):
        raise ConfigError(f"{path}: {where}restart = {restart!r}: use no, always, unless-stopped or on-failure[:N]")
    if settings.get("volumes") is not None and not _is_str_list(settings["volumes"]):
        raise ConfigError(f"{path}: {where}volumes must be an array of \"SOURCE:DEST[:MODE]\" strings")
    if kind == "kubernetes" and not settings.get("deployment"):
        raise ConfigError(f"{path}: {where}deployment is missing: name the Deployment to move")
    if kind == "docker" and not settings.get("container"):
        raise ConfigError(f"{path}: {where}container is missing: name the container to run")
    return TargetConfig(name=name, kind=kind, settings=settings, health=health)


def _rollout(table: dict[str, Any], path: Path, where: str) -> dict[str, Any]:
    """[apps.NAME.rollout]: strategy = "parallel" | "rolling", max_parallel, batch_size, pause."""
    _check_keys(table, {"strategy", "max_parallel", "batch_size", "pause"}, path, where)
    values: dict[str, Any] = {}
    if "strategy" in table:
        if table["strategy"] not in ("parallel", "rolling"):
            raise ConfigError(f"{path}: {where}strategy = {table['strategy']!r}: use \"parallel\" or \"rolling\"")
        values["kind"] = table["strategy"]
    for key, least in (("max_parallel", 0), ("batch_size", 1)):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{path}: {where}{key} = {value!r}: must be a whole number >= {least}")
            values[key] = value
    if "pause" in table:
        value = table["pause"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{path}: {where}pause = {value!r}: must be a finite number of seconds >= 0")
        values["pause"] = float(value)
    return values


def _health(table: dict[str, Any], defaults: HealthPolicy, path: Path, where: str) -> HealthPolicy:
    _check_keys(table, HEALTH_KEYS, path, where)
    values: dict[str, Any] = {}
    for key in ("timeout", "interval", "stable"):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{path}: {where}{key} = {value!r}: must be a finite number of seconds >= 0")
            values[key] = float(value)
    if values.get("interval") == 0:
        raise ConfigError(f"{path}: {where}interval must be greater than 0")
    if "max_restarts" in table:
        value = table["max_restarts"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{path}: {where}max_restarts = {value!r}: must be a whole number >= 1")
        values["max_restarts"] = value
    if "http" in table:
        url = table["http"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{path}: {where}http = {url!r}: must be an http:// or https:// URL")
        values["http"] = url
    return replace(defaults, **values)


def _check_keys(table: dict[str, Any], allowed: set[str], path: Path | None, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key {where}{unknown[0]}: allowed here are {', '.join(sorted(allowed))}")


def _table(table: dict[str, Any], key: str, path: Path | None, where: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where}{key} must be a table, not {type(value).__name__}")
    return value


def _opt_str(table: dict[str, Any], key: str, path: Path | None, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{path}: {where}{key} must be a string, not {type(value).__name__}")
    return value


def _str_list(table: dict[str, Any], key: str, path: Path, where: str) -> list[str]:
    value = table.get(key, [])
    if not _is_str_list(value):
        raise ConfigError(f"{path}: {where}{key} must be an array of strings")
    return value


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _relative(path: Path, value: str | None) -> str | None:
    return str(path.parent / Path(value).expanduser()) if value else None
