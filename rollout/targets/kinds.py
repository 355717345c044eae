"""Target kinds registered in one place: `kind = "..."` in rollout.toml -> settings schema and implementation.

A kind is its settings schema (checked by rollout.schema when rollout.toml is loaded)
and the class that implements rollout.targets.Target, named by module and class so
it is imported only when an app uses that kind (the CLI starts fast). For rollout.toml
and open_target, adding a kind is one module plus one entry in KINDS (`rollout init`'s
scaffold is not registered here yet).

The schemas live here for now, next to each other; each entry names the module that
implements it, where its schema may move once that module is free to change.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from rollout import schema as S

if TYPE_CHECKING:
    from rollout.config import AppConfig, TargetConfig
    from rollout.targets import Target

# Keys every target has whatever its kind; rollout.config reads them, the kind gets the rest.
COMMON_KEYS = ("name", "kind", "health")


@dataclass(frozen=True)
class Kind:
    """One kind of target.

    settings: the schema of the target table's own keys (all but COMMON_KEYS).
    required: checks of the checked settings that no single key can make, e.g. "this key is
        required"; a function returning an error (completing "FILE: apps.X.targets[N].") or None.
    module, implementation: where the Target class lives, imported on first use.
    """

    name: str
    settings: S.Schema
    module: str
    implementation: str
    required: tuple[Callable[[dict[str, Any]], str | None], ...] = ()

    def open(self, config: "TargetConfig", app: "AppConfig") -> "Target":
        """The Target for one configured target of app (imports the kind's module on first use)."""
        cls = getattr(importlib.import_module(self.module), self.implementation)
        return cls(config, app)  # type: ignore[no-any-return]


def _needs(key: str, hint: str) -> Callable[[dict[str, Any]], str | None]:
    return lambda settings: None if settings.get(key) else f"{key} is missing: {hint}"


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
)

KUBERNETES = Kind(
    name="kubernetes",
    module="rollout.targets.kubernetes",
    implementation="KubernetesTarget",
    settings={
        "kubeconfig": S.Field(S.string),
        "context": S.Field(S.string),
        "namespace": S.Field(S.string),
        "deployment": S.Field(S.string),
        "container": S.Field(S.string),
    },
    required=(_needs("deployment", "name the Deployment to move"),),
)

KINDS: dict[str, Kind] = {kind.name: kind for kind in (DOCKER, KUBERNETES)}
DEFAULT_KIND = "docker"
