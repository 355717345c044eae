"""Target kinds registered in one place: `kind = "..."` in rollout.toml -> settings schema, implementation, scaffold.

A kind is its settings schema (checked by rollout.schema when rollout.toml is loaded),
the class that implements rollout.targets.Target, and the scaffold `rollout init` uses to
draft a target of that kind from what already runs (`--from-container`, `--from-deployment`).
Implementation and scaffold are named by module and attribute so they are imported only
when used (the CLI starts fast). Adding a kind is one module plus one entry in KINDS.

The schemas live here for now, next to each other; each entry names the module that
implements it, where its schema may move once that module is free to change.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from rollout import schema as S

if TYPE_CHECKING:
    from rollout.config import AppConfig, TargetConfig
    from rollout.scaffold import Draft
    from rollout.targets import Target

# Keys every target has whatever its kind; rollout.config reads them, the kind gets the rest.
COMMON_KEYS = ("name", "kind", "health")


@dataclass(frozen=True)
class Scaffold:
    """How `rollout init` drafts a target of one kind from something that already runs.

    option: the init option naming the source, e.g. "--from-container".
    module, function: the drafting function, imported on first use; it is called as
        function(SOURCE_NAME, **{o: value of o for o in options}, app=APP, image=IMAGE) and
        returns a rollout.scaffold.Draft, raising UserError (exit 2) or TargetUnreachable (5).
    options: the other init options it reads (e.g. "host"), by parameter name.
    """

    option: str
    module: str
    function: str
    options: tuple[str, ...] = ()

    def draft(self, source: str, options: Mapping[str, str | None], app: str | None, image: str | None) -> "Draft":
        """The Draft for source (a container, a Deployment, ...); options not listed in self.options are ignored."""
        function = getattr(importlib.import_module(self.module), self.function)
        return function(source, **{name: options.get(name) for name in self.options},  # type: ignore[no-any-return]
                        app=app, image=image)


@dataclass(frozen=True)
class Kind:
    """One kind of target.

    settings: the schema of the target table's own keys (all but COMMON_KEYS).
    required: checks of the checked settings that no single key can make, e.g. "this key is
        required"; a function returning an error (completing "FILE: apps.X.targets[N].") or None.
    module, implementation: where the Target class lives, imported on first use.
    scaffold: how `rollout init` drafts such a target from what runs (None: only the blank draft).
    extra_scaffolds: further init options drafting the same kind from other sources (a kubernetes
        target from a StatefulSet or a DaemonSet besides a Deployment).
    paths: settings that are paths relative to rollout.toml; rollout.config makes them absolute at load.
    """

    name: str
    settings: S.Schema
    module: str
    implementation: str
    required: tuple[Callable[[dict[str, Any]], str | None], ...] = ()
    scaffold: Scaffold | None = None
    extra_scaffolds: tuple[Scaffold, ...] = ()
    paths: tuple[str, ...] = ()

    def open(self, config: "TargetConfig", app: "AppConfig") -> "Target":
        """The Target for one configured target of app (imports the kind's module on first use)."""
        cls = getattr(importlib.import_module(self.module), self.implementation)
        return cls(config, app)  # type: ignore[no-any-return]


def scaffolds() -> dict[str, Scaffold]:
    """init option ("--from-container", ...) -> the scaffold it names, in KINDS order."""
    found = {}
    for kind in KINDS.values():
        for scaffold in ((kind.scaffold,) if kind.scaffold else ()) + kind.extra_scaffolds:
            found[scaffold.option] = scaffold
    return found


def _needs(key: str, hint: str) -> Callable[[dict[str, Any]], str | None]:
    return lambda settings: None if settings.get(key) else f"{key} is missing: {hint}"


_WORKLOADS = ("deployment", "statefulset", "daemonset")  # rollout.targets.kube_workloads.WORKLOADS


def _workload_named(settings: dict[str, Any]) -> str | None:
    """A kubernetes target names its object under the key of its `workload` (default deployment),
    and no other workload's key, so a StatefulSet's name is never read as a Deployment's."""
    chosen = settings.get("workload") or "deployment"
    if not settings.get(chosen):
        return f"{chosen} is missing: name the {chosen.capitalize().replace('set', 'Set')} to move"
    others = [key for key in _WORKLOADS if key != chosen and key in settings]
    if others:
        return (f"{others[0]} is set but workload is {chosen!r}: set workload = \"{others[0]}\" to move a"
                f" {others[0]}, or remove {others[0]}")
    return None


# Numbers (and, as ever, booleans) are written as their text: env = { WORKERS = 4 }.
_STRING_TABLE = S.table_of((str, int), "must be a table of strings", bools=True)

DOCKER = Kind(
    name="docker",
    module="rollout.targets.docker",
    implementation="DockerTarget",
    settings={
        "host": S.Field(S.string),
        "container": S.Field(S.string),
        "command": S.Field(S.string_or_list),
        "entrypoint": S.Field(S.string_or_list),
        "network": S.Field(S.string),
        "env": S.Field(_STRING_TABLE),
        "ports": S.Field(_STRING_TABLE),
        "volumes": S.Field(S.string_list('must be an array of "SOURCE:DEST[:MODE]" strings')),
        # docker run --restart: https://docs.docker.com/engine/containers/start-containers-automatically/
        # N: 1-9 digits, which the engine's int field holds (longer: its create fails, past 4300 digits int() itself).
        "restart": S.Field(S.matching(r"no|always|unless-stopped|on-failure(:\d{1,9})?",
                                      "use no, always, unless-stopped or on-failure[:N] (N up to 9 digits)")),
        "labels": S.Field(_STRING_TABLE),
        "user": S.Field(S.string),
    },
    required=(_needs("container", "name the container to run"),),
    scaffold=Scaffold("--from-container", "rollout.scaffold", "from_container", options=("host",)),
)

KUBERNETES = Kind(
    name="kubernetes",
    module="rollout.targets.kubernetes",
    implementation="KubernetesTarget",
    settings={
        "kubeconfig": S.Field(S.string),
        "context": S.Field(S.string),
        "namespace": S.Field(S.string),
        "workload": S.Field(S.one_of(*_WORKLOADS)),
        "deployment": S.Field(S.string),
        "statefulset": S.Field(S.string),
        "daemonset": S.Field(S.string),
        "container": S.Field(S.string),
    },
    required=(_workload_named,),
    scaffold=Scaffold("--from-deployment", "rollout.scaffold", "from_deployment",
                      options=("namespace", "kubeconfig", "context", "container")),
    extra_scaffolds=tuple(Scaffold(f"--from-{workload}", "rollout.scaffold", f"from_{workload}",
                                   options=("namespace", "kubeconfig", "context", "container"))
                          for workload in ("statefulset", "daemonset")),
)

COMPOSE = Kind(
    name="compose",
    module="rollout.targets.compose",
    implementation="ComposeTarget",
    settings={
        "project_dir": S.Field(S.string),
        "files": S.Field(S.string_list("must be an array of compose file names, relative to project_dir")),
        # Compose's own rules (compose-go loader: service names; project names must be lower case).
        "service": S.Field(S.matching(r"[a-zA-Z0-9][a-zA-Z0-9._-]*", "must be a Compose service name")),
        "project_name": S.Field(S.matching(r"[a-z0-9][a-z0-9_-]*",
                                           "must be lower-case letters, digits, _ or -, starting with a letter or digit")),
    },
    required=(_needs("project_dir", "the directory of the Compose project, relative to rollout.toml"),
              _needs("service", "name the Compose service to move")),
    scaffold=Scaffold("--from-compose", "rollout.targets.compose", "from_compose",
                      options=("project_dir", "config_dir")),
    paths=("project_dir",),
)

KINDS: dict[str, Kind] = {kind.name: kind for kind in (DOCKER, KUBERNETES, COMPOSE)}
DEFAULT_KIND = "docker"
