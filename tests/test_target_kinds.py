"""Target kinds are registered in one place (rollout.targets.kinds): implementation, settings
schema and the scaffold `rollout init` drafts from; the Target protocol's call order is stated
there and a call out of order is a clear error, not a crash deep inside a backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rollout import config as configuration
from rollout import scaffold
from rollout.errors import UserError

DRAFTED: list[dict[str, Any]] = []


def draft_for_tests(name: str, *, job_host: str | None, app: str | None, image: str | None) -> scaffold.Draft:
    """The scaffold a test kind names (rollout.targets.kinds imports it by module and name)."""
    DRAFTED.append({"name": name, "job_host": job_host, "app": app, "image": image})
    return scaffold.Draft(app=app or name, image=image or "127.0.0.1:5000/x",
                          target={"name": "n", "kind": "nomad", "job": name}, source=f"job {name}")


def test_init_finds_a_new_kinds_scaffold_through_the_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rollout import schema
    from rollout.targets.kinds import KINDS, Kind, Scaffold

    DRAFTED.clear()
    kind = Kind("nomad", {"job": schema.Field(schema.string)}, module=__name__, implementation="unused",
                scaffold=Scaffold("--from-job", __name__, "draft_for_tests", options=("job_host",)))
    monkeypatch.setitem(KINDS, "nomad", kind)

    draft = scaffold.draft_from({"--from-job": "web", "--from-container": None},
                                {"job_host": "nomad.internal", "host": "ignored"}, app="shop", image=None)

    assert DRAFTED == [{"name": "web", "job_host": "nomad.internal", "app": "shop", "image": None}]
    assert draft.target == {"name": "n", "kind": "nomad", "job": "web"}
    # The rendered file is what `rollout init` writes: it loads, as the new kind, with the kind's schema.
    path = tmp_path / "rollout.toml"
    scaffold.write(path, scaffold.render(draft), force=False)
    [target] = configuration.load(str(path)).app("shop").targets
    assert (target.kind, target.settings) == ("nomad", {"job": "web"})


def test_the_built_in_kinds_register_the_init_sources() -> None:
    from rollout.targets.kinds import COMPOSE, DOCKER, KUBERNETES, scaffolds

    assert scaffolds() == {s.option: s for s in (DOCKER.scaffold, KUBERNETES.scaffold, *KUBERNETES.extra_scaffolds,
                                                 COMPOSE.scaffold)}
    assert list(scaffolds()) == ["--from-container", "--from-deployment", "--from-statefulset", "--from-daemonset",
                                 "--from-compose"]
    # Two sources at once: the one-line error `rollout init` has always given (exit 2).
    with pytest.raises(UserError, match=r"^give --from-container or --from-deployment, not both$"):
        scaffold.draft_from({"--from-container": "web", "--from-deployment": "web"}, {})
    # No source: the commented example.
    assert scaffold.draft_from({"--from-container": None, "--from-deployment": None}, {}, app="shop").target == {
        "name": "local", "kind": "docker", "container": "shop", "network": "host"}


def test_watch_before_apply_is_a_clear_out_of_order_error(tmp_path: Path) -> None:
    from rollout.targets import OutOfOrder, Release, open_target

    path = tmp_path / "rollout.toml"
    path.write_text('[apps.web]\nimage = "127.0.0.1:5000/web"\n'
                    '[[apps.web.targets]]\nname = "local"\ncontainer = "web"\n')
    web = configuration.load(str(path)).app("web")
    target = open_target(web.targets[0], web)  # connects lazily: no engine is asked
    release = Release(1, "127.0.0.1:5000/web", "good1", "sha256:" + "0" * 64, "test")

    with pytest.raises(OutOfOrder) as caught:
        target.watch(release)
    message = str(caught.value)
    assert "target local" in message and "apply()" in message and "rollout.targets.Target" in message
    assert isinstance(caught.value, RuntimeError)  # what callers caught before keeps catching it
