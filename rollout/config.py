"""rollout.toml: one schema for the whole file, checked when it is loaded.

Every section becomes a typed, frozen value: apps with their image repository,
health policy (HealthPolicy), strategy ([apps.NAME.rollout] -> Strategy), build
settings ([apps.NAME.build] -> BuildSettings), targets (each kind contributes the
schema of its own settings, rollout.targets.kinds), [registry], [ledger] and
[notify] (NotifySettings). One checker (rollout.schema) refuses unknown keys and
wrong types everywhere; every error names the file and the key (ConfigError,
exit 2), so a typo never turns into a silent default and no command accepts a
file another command would refuse.

What depends on the machine rather than the file is checked where it is used:
the build context and Dockerfile exist (`require_build`, for rebuild and check).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rollout import schema as S
from rollout.errors import ConfigError, InvalidReference
from rollout.ledger_url import is_url, looks_like_conninfo, redact
from rollout.output import redact_url
from rollout.reference import parse_repository
from rollout.tags import DEFAULT_TAG_TEMPLATE, template_problem
from rollout.targets.kinds import COMMON_KEYS, DEFAULT_KIND, KINDS

DEFAULT_CONFIG = "rollout.toml"
DEFAULT_LEDGER = "state/ledger.db"


# -- the typed sections ----------------------------------------------------------------------


@dataclass(frozen=True)
class MetricGate:
    """`[apps.NAME.health.prometheus]`: a PromQL query giving one number, judged against bounds.

    url: the Prometheus server (its HTTP API, /api/v1/query); query: PromQL, where "{app}",
    "{digest}" and "{entry}" stand for the release verified (rollout.metric_gate.for_release);
    max / min: the value breaches when above max or below min (at least one is set);
    interval: seconds between evaluations (> 0); window: seconds the release is judged after
    the stable window too (0: only during it). How each answer counts: rollout.metric_gate.
    """

    url: str
    query: str
    max: float | None = None
    min: float | None = None
    interval: float = 5.0
    window: float = 0.0


@dataclass(frozen=True)
class HealthPolicy:
    """How a release is judged ([apps.NAME.health], overridable per target key by key).

    timeout: seconds a release may take to become healthy; interval: seconds between looks
    (> 0); stable: seconds it must then stay healthy; http: a URL that must answer 2xx, or
    None; max_restarts: restarts of a new pod, counted per pod from when the rollout started,
    that fail the release at once (Kubernetes; a docker container fails at its first restart).
    The seconds are measured on the monotonic clock (rollout.health.verify), so a wall-clock
    step during a rollout neither stretches nor cuts them.
    """

    timeout: float = 60.0
    interval: float = 1.0
    stable: float = 5.0
    http: str | None = None
    max_restarts: int = 2
    prometheus: MetricGate | None = None  # [health.prometheus]: a metric gate, or None


@dataclass(frozen=True)
class Strategy:
    """How an entry moves across an app's targets ([apps.NAME.rollout]): all at once, or in
    batches that must each be healthy. The table's `strategy` key is `kind` here."""

    kind: str = "parallel"  # "parallel" | "rolling"
    max_parallel: int = 0  # targets changed at the same time; 0 = no limit
    batch_size: int = 1  # rolling: targets per batch
    pause: float = 0.0  # rolling: seconds between healthy batches


@dataclass(frozen=True)
class BuildSettings:
    """An app's `[apps.NAME.build]` table, with paths made absolute (not yet checked on disk:
    see require_build).

    context: the build directory (relative to rollout.toml in the file); dockerfile: relative
    to the context in the file (default "Dockerfile"); tag: the tag template (rollout.tags);
    build_args: --build-arg values, numbers written as text. builder: "docker" (the engine's
    classic builder) or "buildah" (rollout.buildah); reproducible: buildah with fixed timestamps,
    so the same inputs give the same image (only with builder = "buildah", checked at load).
    """

    context: Path
    dockerfile: Path
    tag: str = DEFAULT_TAG_TEMPLATE
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    platform: str | None = None
    builder: str = "docker"
    reproducible: bool = False
    # `context` as written, to name it in an error; not part of the settings' identity.
    context_as_written: str = field(default="", compare=False, repr=False)


EVENTS = ("started", "healthy", "failed", "reverted", "revert_failed", "rebuild_skipped", "rebuild_built")
# A cron job would report "nothing to do" every run: that one is sent only when asked for.
DEFAULT_EVENTS = tuple(e for e in EVENTS if e != "rebuild_skipped")
DEFAULT_NOTIFY_TIMEOUT = 5.0
SLACK_HOSTS = {"hooks.slack.com"}


@dataclass(frozen=True)
class Channel:
    """One notification destination. `url` may hold a token: print `shown`, never `url`.

    style: "json" (generic webhook), "slack" ({"text": ...}) or "apprise" (any other scheme).
    """

    url: str = field(repr=False)
    style: str
    # Set when a `${NAME}` in the URL is unset: only sending needs it, so only a command that
    # may notify (deploy, revert, rebuild) refuses to start; status and history do not care.
    unset: str | None = field(default=None, compare=False)

    @property
    def shown(self) -> str:
        """What may be printed about the URL: scheme and host only (rollout.output.redact_url)."""
        return redact_url(self.url)


@dataclass(frozen=True)
class NotifySettings:
    """`[notify]`: where events go (channels, `${NAME}` already replaced from the environment),
    which events (a subset of EVENTS) and the timeout of one attempt in seconds (0 < t <= 60)."""

    channels: tuple[Channel, ...] = ()
    events: frozenset[str] = frozenset(DEFAULT_EVENTS)
    timeout: float = DEFAULT_NOTIFY_TIMEOUT


@dataclass(frozen=True)
class Traffic:
    """`[apps.NAME.traffic]` (overridable key by key by a target's own `traffic` table): a docker
    target deployed without downtime behind a reverse proxy (issue 14, rollout.targets.docker.traffic).

    router: "caddy" or "haproxy" (rollout.routers); admin: the proxy's admin endpoint; route: the
    Caddy route @id or HAProxy backend whose upstream rollout sets; slots: two or more distinct
    host ports (1-65535) the app's releases take turns on, dialled as 127.0.0.1:SLOT; slot_env:
    the env var that tells the container its port (None: the target's `ports` mapping has
    "{port}" instead); drain: seconds the old release keeps running after the stable window.
    """

    router: str
    admin: str
    route: str
    slots: tuple[int, ...]
    slot_env: str | None = None
    drain: float = 0.0


@dataclass(frozen=True)
class TargetConfig:
    """One `[[apps.NAME.targets]]` table: its kind's settings (checked by that kind's schema,
    rollout.targets.kinds), its health policy (the app's, overridden key by key) and its traffic
    section (the app's, overridden key by key; None: stop-first, as without one)."""

    name: str
    kind: str
    settings: dict[str, Any]
    health: HealthPolicy
    traffic: Traffic | None = None


@dataclass(frozen=True)
class AppConfig:
    """One `[apps.NAME]` table. `build` is None when the app has no (or an empty) build table."""

    name: str
    registry: str
    repository: str
    health: HealthPolicy
    targets: tuple[TargetConfig, ...]
    build: BuildSettings | None = None
    rollout: Strategy = Strategy()

    @property
    def image(self) -> str:
        """The app's repository, fully qualified: "registry/repository" (e.g. "docker.io/library/nginx")."""
        return f"{self.registry}/{self.repository}"


@dataclass(frozen=True)
class RegistrySettings:
    """`[registry]`: registries spoken to over plain HTTP, a CA bundle and a Docker config
    directory for credentials (paths absolute)."""

    insecure: tuple[str, ...] = ()
    ca_bundle: str | None = None
    docker_config: str | None = None


@dataclass(frozen=True)
class Config:
    """A whole rollout.toml; `path` is None when no file was found and none was required."""

    path: Path | None
    # A SQLite file (Path) or a PostgreSQL URL (str): what rollout.ledger.open_ledger takes.
    ledger_location: Path | str
    apps: dict[str, AppConfig]
    registry: RegistrySettings = RegistrySettings()
    notify: NotifySettings = NotifySettings()

    def app(self, name: str | None) -> AppConfig:
        """The app called `name`, or the only app when name is None; ConfigError otherwise."""
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


# -- the schema --------------------------------------------------------------------------------


def _http_url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise S.Invalid("must be an http:// or https:// URL", show_value=True)
    return value


def _tag_template(value: Any) -> str:
    template = S.string(value)
    problem = template_problem(template)
    if problem:
        raise S.Invalid(problem, show_value=True)
    return template


def _events(value: Any) -> frozenset[str]:
    if not S.is_string_list(value):
        raise S.Invalid(f"must be an array of event names ({', '.join(EVENTS)})")
    wrong = [e for e in value if e not in EVENTS]
    if wrong:
        raise S.Invalid(f"has an unknown event {wrong[0]!r}: use some of {', '.join(EVENTS)}")
    return frozenset(value)


def _notify_timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 60:
        raise S.Invalid("must be a number of seconds, more than 0 and at most 60", show_value=True)
    return float(value)


TOP_SCHEMA: S.Schema = {key: S.Field(S.table) for key in ("ledger", "apps", "registry", "notify")}
LEDGER_SCHEMA: S.Schema = {"path": S.Field(S.string), "url": S.Field(S.string)}
REGISTRY_SCHEMA: S.Schema = {
    "insecure": S.Field(S.string_list()),
    "ca_bundle": S.Field(S.string),
    "docker_config": S.Field(S.string),
}
APP_SCHEMA: S.Schema = {
    "image": S.Field(S.string),  # required, with a hint naming the app: checked in _app
    "health": S.Field(S.table),
    "targets": S.Field(lambda v: v),  # an array of tables: checked in _app
    "build": S.Field(S.table),
    "rollout": S.Field(S.table),
    "traffic": S.Field(S.table),
}
HEALTH_SCHEMA: S.Schema = {
    "timeout": S.Field(S.seconds),
    "interval": S.Field(S.seconds),
    "stable": S.Field(S.seconds),
    "http": S.Field(_http_url),
    "max_restarts": S.Field(S.whole(1)),
    "prometheus": S.Field(S.table),
}


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise S.Invalid("must be a finite number", show_value=True)
    return float(value)


PROMETHEUS_SCHEMA: S.Schema = {
    "url": S.Field(_http_url, missing='the Prometheus server, e.g. "http://127.0.0.1:9090"'),
    "query": S.Field(S.string, missing="PromQL giving one number, e.g. an error ratio"),
    "max": S.Field(_number),
    "min": S.Field(_number),
    "interval": S.Field(S.seconds),
    "window": S.Field(S.seconds),
}
ROLLOUT_SCHEMA: S.Schema = {
    "strategy": S.Field(S.one_of("parallel", "rolling"), attribute="kind"),
    "max_parallel": S.Field(S.whole(0)),
    "batch_size": S.Field(S.whole(1)),
    "pause": S.Field(S.seconds),
}
def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise S.Invalid("must be true or false")
    return value


BUILD_SCHEMA: S.Schema = {
    "context": S.Field(S.string, missing="the build directory, relative to this file"),
    "dockerfile": S.Field(S.string),
    "tag": S.Field(_tag_template),
    "build_args": S.Field(S.table_of((str, int, float), 'must be a table of strings, e.g. { VERSION = "1" }')),
    "target": S.Field(S.string),
    "platform": S.Field(S.string),
    "builder": S.Field(S.one_of("docker", "buildah")),
    "reproducible": S.Field(_boolean),
}
NOTIFY_SCHEMA: S.Schema = {
    "urls": S.Field(S.string_list("must be an array of URL strings")),
    "events": S.Field(_events),
    "timeout": S.Field(_notify_timeout),
}
TARGET_SCHEMA: S.Schema = {"name": S.Field(S.string), "kind": S.Field(S.string), "health": S.Field(S.table),
                           "traffic": S.Field(S.table)}


def _slots(value: Any) -> tuple[int, ...]:
    if (not isinstance(value, list) or len(value) < 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536 for v in value)):
        raise S.Invalid("must be an array of two or more host ports (1-65535), e.g. [18081, 18082]", show_value=True)
    if len(set(value)) != len(value):
        raise S.Invalid("must be distinct ports: each release takes a slot of its own", show_value=True)
    return tuple(value)


TRAFFIC_SCHEMA: S.Schema = {
    "router": S.Field(S.one_of("caddy", "haproxy")),
    "admin": S.Field(S.string),
    "route": S.Field(S.string),
    "slots": S.Field(_slots),
    "slot_env": S.Field(S.matching(r"[A-Za-z_][A-Za-z0-9_]*", "must be an environment variable name, e.g. \"PORT\"")),
    "drain": S.Field(S.seconds),
}
TRAFFIC_REQUIRED = {
    "router": '"caddy" or "haproxy"',
    "admin": 'the proxy\'s admin endpoint, e.g. "http://127.0.0.1:2019" or "unix:///run/haproxy/admin.sock"',
    "route": "the Caddy route @id or the HAProxy backend name",
    "slots": "two or more host ports, e.g. [18081, 18082]",
}
PORT_PLACEHOLDER = "{port}"  # in a target's `ports` values and health.http: the release's slot

# The keys allowed in each place, for callers that list them (tests, fuzzers).
TOP_KEYS = set(TOP_SCHEMA)
APP_KEYS = set(APP_SCHEMA)
HEALTH_KEYS = set(HEALTH_SCHEMA)
TARGET_KEYS = {name: set(kind.settings) | set(COMMON_KEYS) for name, kind in KINDS.items()}


# -- loading -----------------------------------------------------------------------------------


def config_path(explicit: str | None) -> Path:
    """The file -c names, else $ROLLOUT_CONFIG, else ./rollout.toml."""
    return Path(explicit or os.environ.get("ROLLOUT_CONFIG") or DEFAULT_CONFIG)


def load(explicit: str | None = None, *, required: bool = True) -> Config:
    """Load and check the config named by -c, $ROLLOUT_CONFIG or ./rollout.toml.

    With required=False a missing file yields an empty config, so ledger-only
    commands (history, lock) work without one. Raises ConfigError (exit 2) naming
    the file (and the key) for a missing, unreadable, malformed or invalid file.
    """
    path = config_path(explicit)
    if not path.exists():
        if required or explicit or os.environ.get("ROLLOUT_CONFIG"):
            raise ConfigError(f"config file {path} not found: create it (see examples/) or pass -c PATH")
        return Config(path=None, ledger_location=_ledger_location(None, {}), apps={})
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}): fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc.__class__.__name__}: {exc}): check the file") from None
    return parse(data, path)


def parse(data: dict[str, Any], path: Path) -> Config:
    """Check a parsed TOML document against the schema; relative paths are taken from `path`'s
    directory. Raises ConfigError (exit 2) naming the file and the key."""
    S.check(data, TOP_SCHEMA, path, "")
    apps_table = S.sub_table(data, "apps", path, "")
    apps = {name: _app(name, S.sub_table(apps_table, name, path, "apps."), path) for name in apps_table}
    registry_table = S.check(S.sub_table(data, "registry", path, ""), REGISTRY_SCHEMA, path, "registry.")
    registry = RegistrySettings(
        insecure=tuple(registry_table.get("insecure", ())),
        ca_bundle=_relative(path, registry_table.get("ca_bundle")),
        docker_config=_relative(path, registry_table.get("docker_config")),
    )
    notify = notify_settings(S.sub_table(data, "notify", path, ""), path)
    return Config(path=path, ledger_location=_ledger_location(path, data), apps=apps, registry=registry, notify=notify)


def _ledger_location(path: Path | None, data: dict[str, Any]) -> Path | str:
    """$ROLLOUT_LEDGER_URL, then $ROLLOUT_LEDGER (a file), then [ledger] url or path, then the default file.

    The environment wins over the file so one config serves a laptop (SQLite) and CI runners
    that share a PostgreSQL ledger.
    """
    settings = S.check(S.sub_table(data, "ledger", path, ""), LEDGER_SCHEMA, path, "ledger.")
    if "url" in settings and "path" in settings:
        raise S.problem(path, "", "[ledger] sets both url and path: keep url (a PostgreSQL ledger) or path (a SQLite file)")
    if os.environ.get("ROLLOUT_LEDGER_URL"):
        return _checked_url("$ROLLOUT_LEDGER_URL", os.environ["ROLLOUT_LEDGER_URL"])
    if os.environ.get("ROLLOUT_LEDGER"):
        return _checked_path("$ROLLOUT_LEDGER", os.environ["ROLLOUT_LEDGER"], "$ROLLOUT_LEDGER_URL")
    if settings.get("url"):
        return _checked_url(f"{path}: [ledger] url", settings["url"])
    base = path.parent if path else Path.cwd()
    return base / _checked_path(f"{path}: [ledger] path", settings.get("path") or DEFAULT_LEDGER, "[ledger] url")


def _checked_path(source: str, value: str, instead: str) -> Path:
    # A URL taken for a file name would give this runner a private SQLite ledger (outside the team's
    # history and locks) and write the password into a directory name.
    if "://" in value or looks_like_conninfo(value):
        raise ConfigError(f"{source} is {redact(value)!r}, a database URL, not a SQLite file: put it in {instead}")
    return Path(value)


def _checked_url(source: str, url: str) -> str:
    if not is_url(url):
        raise ConfigError(f"{source} is {redact(url)!r}, not a PostgreSQL URL:"
                          " write it as postgresql://USER@HOST:PORT/DBNAME (libpq's form)")
    return url


def _app(name: str, table: dict[str, Any], path: Path) -> AppConfig:
    where = f"apps.{name}."
    values = S.check(table, APP_SCHEMA, path, where)
    image = values.get("image")
    if not image:
        raise S.problem(path, where, f"image is missing: set it to the image repository, e.g. \"127.0.0.1:5000/{name}\"")
    try:
        registry, repository = parse_repository(image)
    except InvalidReference as exc:
        raise S.problem(path, where, f"image: {exc}") from None
    health = _health(values.get("health", {}), HealthPolicy(), path, where + "health.")
    raw_targets = table.get("targets", [])
    if not isinstance(raw_targets, list) or not all(isinstance(t, dict) for t in raw_targets):
        raise S.problem(path, where, f"targets must be an array of tables ([[apps.{name}.targets]])")
    if not raw_targets:
        raise ConfigError(f"{path}: app {name!r} has no targets: add a [[apps.{name}.targets]] table")
    traffic = S.check(values.get("traffic", {}), TRAFFIC_SCHEMA, path, where + "traffic.")
    targets = tuple(_target(t, i, health, traffic, path, where) for i, t in enumerate(raw_targets))
    names = [t.name for t in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise S.problem(path, where, f"targets: duplicate target name {duplicates[0]!r}: names must be unique")
    build = _build(values.get("build", {}), path, where + "build.")
    rollout = Strategy(**S.check(values.get("rollout", {}), ROLLOUT_SCHEMA, path, where + "rollout."))
    return AppConfig(name=name, registry=registry, repository=repository, health=health, targets=targets,
                     build=build, rollout=rollout)


def _target(table: dict[str, Any], index: int, app_health: HealthPolicy, app_traffic: dict[str, Any], path: Path,
            app_where: str) -> TargetConfig:
    where = f"{app_where}targets[{index}]."
    kind_name = table.get("kind", DEFAULT_KIND)
    if not isinstance(kind_name, str) or kind_name not in KINDS:
        choices = " or ".join(f'"{name}"' for name in KINDS)
        raise S.problem(path, where, f"kind = {kind_name!r}: use {choices}")
    kind = KINDS[kind_name]
    values = S.check(table, {**TARGET_SCHEMA, **kind.settings}, path, where)
    if not values.get("name"):
        raise S.problem(path, where, "name is missing: give every target a name")
    settings = {key: value for key, value in values.items() if key not in COMMON_KEYS}
    for key in kind.paths:  # relative to rollout.toml, like every path in it
        if settings.get(key):
            settings[key] = str(_absolute(path.parent if path else Path.cwd(), settings[key], path, where + key))
    for requirement in kind.required:
        problem = requirement(settings)
        if problem:
            raise S.problem(path, where, problem)
    health = _health(values.get("health", {}), app_health, path, where + "health.")
    own = S.check(values.get("traffic", {}), TRAFFIC_SCHEMA, path, where + "traffic.")
    traffic = _traffic({**app_traffic, **own}, kind_name, settings, health, path,
                       where if own else app_where)
    return TargetConfig(name=values["name"], kind=kind_name, settings=settings, health=health, traffic=traffic)


def _traffic(values: dict[str, Any], kind: str, settings: dict[str, Any], health: HealthPolicy, path: Path,
             where: str) -> Traffic | None:
    """One target's traffic section (the app's keys, then the target's), checked as a whole: the
    required keys, the admin address's form for its router, and how the container learns its slot
    (slot_env, or "{port}" in the target's `ports`: one of the two), and a health.http (required)
    that probes the slot ("{port}"). "{port}" in `ports` or in health.http without a traffic section is an error too
    (there is no slot to stand for).
    `where` is the dotted prefix of the table the keys came from. Raises ConfigError (exit 2)."""
    in_ports = [k for k, v in (settings.get("ports") or {}).items() if PORT_PLACEHOLDER in str(v)]
    in_http = PORT_PLACEHOLDER in (health.http or "")
    if not values:
        if in_ports:
            raise S.problem(path, where, f"ports: {in_ports[0]!r} maps to {PORT_PLACEHOLDER} but there is no traffic"
                            " section to choose the slot: add [apps.NAME.traffic] or write the host port")
        if in_http:
            raise S.problem(path, where, f"health.http has {PORT_PLACEHOLDER} but there is no traffic section to"
                            " choose the slot: add [apps.NAME.traffic] or write the port")
        return None
    if kind != "docker":
        raise S.problem(path, where, f"traffic: a {kind} target takes no traffic section (only docker targets"
                        " switch a reverse proxy between slots)")
    for key, hint in TRAFFIC_REQUIRED.items():
        if key not in values or values[key] == "":
            raise S.problem(path, where, f"traffic.{key} is missing: {hint}")
    if not health.http:
        # A container "running" is not an app listening: switched then, a slow boot is an outage.
        raise S.problem(path, where, "health.http is missing: with a traffic section each release is verified on its"
                        f" own slot before it takes the traffic: e.g. http = \"http://127.0.0.1:{PORT_PLACEHOLDER}/health\""
                        " in [apps.NAME.health]")
    if not in_http:
        # Each release runs on its own slot: a fixed port probes the live release (or nothing), so a
        # broken new one would pass on the old one's health and take the traffic.
        raise S.problem(path, where, f"health.http = {health.http!r} probes a fixed port, but with a traffic section"
                        f" each release is verified on its own slot: write {PORT_PLACEHOLDER} for the port"
                        f" (e.g. http://127.0.0.1:{PORT_PLACEHOLDER}/health)")
    if ("slot_env" in values) == bool(in_ports):
        raise S.problem(path, where, "traffic: tell the container its slot one way: slot_env = \"PORT\" (an env var)"
                        f" or a `ports` mapping to \"{PORT_PLACEHOLDER}\" (e.g. ports = {{ \"80/tcp\" ="
                        f" \"{PORT_PLACEHOLDER}\" }}), not both, not neither")
    from rollout.routers import open_router  # only for an app with a traffic section

    try:
        open_router(values["router"], values["admin"], values["route"])  # checks the forms; contacts nothing
    except ConfigError as exc:
        raise S.problem(path, where, str(exc)) from None
    return Traffic(values["router"], values["admin"], values["route"], values["slots"], values.get("slot_env"),
                   values.get("drain", 0.0))


def _health(table: dict[str, Any], defaults: HealthPolicy, path: Path, where: str) -> HealthPolicy:
    values = S.check(table, HEALTH_SCHEMA, path, where)
    if values.get("interval") == 0:
        raise S.problem(path, where, "interval must be greater than 0")
    if "prometheus" in values:  # a target's table replaces the app's whole
        values["prometheus"] = _metric_gate(values["prometheus"], path, where + "prometheus.")
    return replace(defaults, **values)


def _metric_gate(table: dict[str, Any], path: Path, where: str) -> MetricGate:
    values = S.check(table, PROMETHEUS_SCHEMA, path, where)
    if "max" not in values and "min" not in values:
        raise S.problem(path, where, "max or min is missing: the bound the query's value must stay within")
    if "max" in values and "min" in values and values["min"] > values["max"]:
        raise S.problem(path, where, f"min = {values['min']:g} is above max = {values['max']:g}: no value can pass")
    if values.get("interval") == 0:
        raise S.problem(path, where, "interval must be greater than 0")
    return MetricGate(**values)


def _build(table: dict[str, Any], path: Path, where: str) -> BuildSettings | None:
    """An empty or absent table is no build (rebuild then says how to add one)."""
    if not table:
        return None
    values = S.check(table, BUILD_SCHEMA, path, where)
    if values.get("reproducible") and values.get("builder", "docker") != "buildah":
        # The classic builder stamps every build with the current time: it cannot be made reproducible.
        raise S.problem(path, where, 'reproducible = true needs builder = "buildah" (the docker builder'
                        " writes the current time into every image)")
    context = _absolute(path.parent, values["context"], path, where + "context")
    dockerfile = _absolute(context, values.get("dockerfile") or "Dockerfile", path, where + "dockerfile")
    return BuildSettings(context=context, dockerfile=dockerfile, tag=values.get("tag") or DEFAULT_TAG_TEMPLATE,
                         build_args={str(k): str(v) for k, v in values.get("build_args", {}).items()},
                         target=values.get("target") or None, platform=values.get("platform") or None,
                         builder=values.get("builder", "docker"), reproducible=bool(values.get("reproducible")),
                         context_as_written=values["context"])


def _absolute(base: Path, value: str, path: Path, where: str) -> Path:
    try:
        return (base / Path(value).expanduser()).resolve()
    except (ValueError, RuntimeError) as exc:  # a NUL byte in the path; a symlink loop
        raise ConfigError(f"{path}: {where} = {value!r}: not a usable path ({exc})") from None


def require_build(app: AppConfig, path: Path | None) -> BuildSettings:
    """app's build settings, their context directory and Dockerfile checked on disk.

    Only rebuild and check need these to exist (a deploy does not), so they are checked
    here and not at load. Raises ConfigError (exit 2) naming the file and the key when the
    app has no [build] table, the context is not a directory or the Dockerfile not a file.
    """
    where = f"apps.{app.name}.build."
    settings = app.build
    if settings is None:
        raise ConfigError(f"{path}: app {app.name!r} has no [apps.{app.name}.build] table: add one with"
                          " at least `context = \"DIR\"` to use rebuild")
    if not settings.context.is_dir():
        raise S.problem(path, where, f"context = {settings.context_as_written!r}: {settings.context} is not a directory")
    if not settings.dockerfile.is_file():
        raise S.problem(path, where, f"dockerfile: {settings.dockerfile} is not a file")
    return settings


def notify_settings(table: dict[str, Any], path: Path | None) -> NotifySettings:
    """Check a `[notify]` table (`path` is the file it came from, for errors); ConfigError (exit 2) naming
    the file and the key, never a URL's secret, for anything wrong or an unset `${NAME}`."""
    values = S.check(table, NOTIFY_SCHEMA, path, "notify.")
    channels = tuple(_channel(url, index, path) for index, url in enumerate(values.get("urls", ())))
    return NotifySettings(channels, values.get("events", frozenset(DEFAULT_EVENTS)),
                          values.get("timeout", DEFAULT_NOTIFY_TIMEOUT))


def _channel(raw: str, index: int, path: Path | None) -> Channel:
    """One notify URL: `${NAME}` replaced from the environment, its style chosen by scheme and host.

    Errors never print the URL itself, only what redact_url shows of it (it may hold a token).
    """
    where = f"notify.urls[{index}]"
    missing = [name for name in _ENV_VAR.findall(raw) if not os.environ.get(name)]
    unset = (str(S.problem(path, where, f": environment variable {missing[0]} is not set: export it or change the URL"))
             if missing else None)
    # An unset variable is checked as a placeholder word, so the rest of the URL is still checked at load.
    url = _ENV_VAR.sub(lambda m: os.environ.get(m.group(1)) or "unset", raw).strip()
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise S.problem(path, where, " is not a URL: use https://..., slack+https://... or an Apprise URL")
    scheme = scheme.lower()
    if scheme in ("slack+http", "slack+https"):
        url = url[len("slack+"):]
        style = "slack"
    elif scheme in ("http", "https"):
        style = "slack" if (_hostname(url) or "").lower() in SLACK_HOSTS else "json"
    else:
        style = "apprise"
        import importlib.util

        # find_spec, not import: Apprise takes long to import, and only a send needs it.
        if importlib.util.find_spec("apprise") is None:
            raise S.problem(path, where, f" ({redact_url(url)}) needs Apprise: pip install 'rollout[notify]',"
                            " or use an http(s):// webhook")
    if style != "apprise" and not _hostname(url):
        raise S.problem(path, where, f" ({redact_url(url)}) has no host")
    return Channel(url, style, unset)


def _hostname(url: str) -> str | None:
    from urllib.parse import urlsplit  # only for [notify] URLs: not on every command's start-up path

    try:
        return urlsplit(url).hostname
    except ValueError:  # e.g. an unclosed [ in the host
        return None


_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _relative(path: Path, value: str | None) -> str | None:
    return str(path.parent / Path(value).expanduser()) if value else None
