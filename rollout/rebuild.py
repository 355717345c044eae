"""Rebuild-and-deploy when an input changed (`rollout rebuild`); `rollout check` is rollout.check.

`rebuild` answers "did anything change?" from the build inputs (rollout.build):
base image digests, resolved with one registry HEAD each, and the hash of the
build context. When the build key matches the last build nothing is built,
pushed or deployed. Otherwise the image is built with every external FROM pinned
to the digest that was checked, pushed under a new unique tag (never over an
existing one) and deployed through the Orchestrator (health, automatic revert).

Every push is remembered as a `build:pushed` event in the ledger (with tag,
digest, build key and base digests), so a build whose deploy failed, or one made
with --no-deploy, is not built again for the same inputs.

`--no-cache` builds even when the build key is unchanged (what a RUN downloads is not
an input rollout can see). With `builder = "buildah"` the image is known before any
push (rollout.buildah): when its image ID is that of the app's current entry or of an
earlier push of the same inputs, the run records `build:unchanged` and pushes and
deploys nothing. `--explain` compares the last two builds of the same inputs that
differed, layer by layer (`explain`).
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from rollout import ledger as L
from rollout.build import Inputs, Resolver, gather_inputs, git_commit
from rollout.build_context import PINNED_DOCKERFILE, build_context_tar
from rollout.config import AppConfig
from rollout.errors import (
    EXIT_CHANGED,
    EXIT_OK,
    RegistryUnreachable,
    TagNotFound,
    Unreachable,
    UserError,
    one_line,
)
from rollout.faults import kill_point
from rollout.ledger import Entry, Ledger, PushedBuild
from rollout.orchestrator import Orchestrator, Outcome
from rollout.output import clip
from rollout.reference import Reference, checked_digest, repo_digests, short_digest
from rollout.tags import render_tag

_TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
BUILD_LOG_LINES = 20
BUILD_TIMEOUT = 1800  # seconds the engine may take for one build or push
REVISION_LABEL = "org.opencontainers.image.revision"
BUILD_KEY_LABEL = "rollout.build-key"
BUILD_UNCHANGED = "build:unchanged"  # ledger event: a build gave an image already pushed; nothing pushed or deployed

UP_TO_DATE = "up-to-date"  # the last build has these inputs: nothing to do
FAILED_BEFORE = "failed-before"  # these inputs were built and their deploy failed: not again without --force
BUILD = "build"  # inputs changed: build, push, deploy
DEPLOY_EXISTING = "deploy-existing"  # an image with these inputs exists (pushed, not running): deploy it


class Reporter(Protocol):
    """Where rebuild tells people what happens (rollout.output.Console): one line per call."""

    def info(self, message: str) -> None:
        """A step as planned ("[build] Step 2/4 : RUN ...", "pushed ...")."""
        ...

    def warn(self, message: str) -> None:
        """Something that needs a look (the last build log lines of a failed build)."""
        ...


# -- what the ledger remembers -------------------------------------------------------


def pushed_builds(ledger: Ledger, app: str) -> list[PushedBuild]:
    """The app's pushed builds, oldest first."""
    return ledger.pushed_builds(app)


def record_push(ledger: Ledger, build: PushedBuild) -> None:
    """Record a pushed build in the ledger (a `build:pushed` event)."""
    ledger.record_build(build)


def rebuild_entries(ledger: Ledger, app: str, key: str) -> list[Entry]:
    """The app's rebuild entries with this build key, newest first."""
    return ledger.rebuilds(app, key)


def last_build_key(ledger: Ledger, app: str) -> tuple[str | None, dict[str, str]]:
    """The build key and base digests of the app's last build (a push, or failing that a rebuild entry)."""
    builds = pushed_builds(ledger, app)
    if builds:
        return builds[-1].build_key, builds[-1].base_digests
    last = ledger.rebuilds(app, limit=1)
    return (last[0].build_key, last[0].base_digests or {}) if last else (None, {})


@dataclass(frozen=True)
class Decision:
    """What `decide` chose for one build key, and why (one line for people)."""

    action: str  # UP_TO_DATE, FAILED_BEFORE, BUILD or DEPLOY_EXISTING
    why: str
    build: PushedBuild | None = None  # the earlier build with these inputs, if any
    entry: Entry | None = None  # its newest rebuild entry, if any


def decide(ledger: Ledger, app: str, key: str, *, force: bool = False, no_deploy: bool = False,
           no_cache: bool = False) -> Decision:
    """What rebuild does for inputs whose build key is `key`, from the ledger alone (no I/O besides it).

    BUILD when forced, with `no_cache` (build again whatever the key) or when these inputs were never built; FAILED_BEFORE when their newest
    rebuild entry failed (built again only with --force); UP_TO_DATE when that entry is
    healthy and is the last build or runs now, when the app's current entry carries a
    `build:unchanged` event with this key (buildah built these inputs into the running image), or
    with `no_deploy` when a build of them was pushed; DEPLOY_EXISTING when a pushed build of them is not what runs (healthy earlier,
    never deployed, or its deploy did not finish). Raises only the ledger's errors.
    """
    if force or no_cache:
        return Decision(BUILD, "--force" if force else "--no-cache")
    current = ledger.current(app)
    if current is not None and any(e["event"] == BUILD_UNCHANGED and e["detail"].get("build_key") == key
                                   for e in ledger.events(current.id)):
        # A buildah build of these inputs was this very image (recorded on the entry, see _build_with_buildah):
        # the key changed (a file the Dockerfile does not COPY, say) but the image did not.
        return Decision(UP_TO_DATE, f"these inputs give the image of {current.tag} (#{current.id}), which runs",
                        entry=current)
    builds = pushed_builds(ledger, app)
    same = [b for b in builds if b.build_key == key]
    entries = rebuild_entries(ledger, app, key)
    entry = entries[0] if entries else None
    build = same[-1] if same else None
    if entry is None and build is None:
        last = builds[-1].tag if builds else None
        return Decision(BUILD, f"inputs changed since build {last}" if last else "never built")
    if entry is not None and entry.status == L.FAILED:
        return Decision(FAILED_BEFORE, f"these inputs were built as {entry.tag} and its deploy #{entry.id} failed"
                        f" ({clip(entry.error or 'no reason recorded')}): not rebuilding them; change an input,"
                        " or pass --force to build and deploy again", build, entry)
    is_last = bool(builds) and builds[-1].build_key == key
    if entry is not None and entry.status == L.HEALTHY:
        if is_last or (current is not None and current.digest == entry.digest):
            return Decision(UP_TO_DATE, f"build {entry.tag} (#{entry.id}) has these inputs", build, entry)
        return Decision(DEPLOY_EXISTING, f"the inputs match build {entry.tag} (#{entry.id}) again", build, entry)
    if entry is None and build is not None and no_deploy:
        return Decision(UP_TO_DATE, f"build {build.tag} has these inputs (pushed, not deployed)", build)
    tag = entry.tag if entry is not None else build.tag  # type: ignore[union-attr]
    what = "was pushed but never deployed" if entry is None else f"deploy #{entry.id} did not finish ({entry.status})"
    if no_deploy:
        return Decision(UP_TO_DATE, f"build {tag} has these inputs ({what})", build, entry)
    return Decision(DEPLOY_EXISTING, f"build {tag} has these inputs and {what}", build, entry)


# -- rebuild -------------------------------------------------------------------------


@dataclass
class RebuildResult:
    """How one app's `rollout rebuild` ended: exit_code (0, 1, 3 as deploy; 10 with --check when a
    rebuild is due), action, a one-line message, and what it looked at, built and deployed."""

    app: str
    exit_code: int
    action: str  # up-to-date, failed-before, rebuild-due, built, deployed, failed, unchanged, explained
    message: str
    inputs: Inputs | None = None
    tag: str | None = None
    digest: str | None = None
    entry: Entry | None = None
    revert: Entry | None = None
    outcome: Outcome | None = None  # the deploy's, when the rebuild deployed (issue 17.3)

    def to_json(self) -> dict[str, Any]:
        """The object `rebuild --json` prints: every field, inputs and entries as their own to_json();
        when it deployed, also `result`: the deploy's Outcome.to_json() (targets, durations)."""
        return {"app": self.app, "exit_code": self.exit_code, "action": self.action, "message": self.message,
                "inputs": self.inputs.to_json() if self.inputs else None, "tag": self.tag, "digest": self.digest,
                "entry": self.entry.to_json() if self.entry else None,
                "revert": self.revert.to_json() if self.revert else None,
                "result": self.outcome.to_json() if self.outcome else None}


def rebuild(app: AppConfig, *, config_path: Path | None, ledger: Ledger, registry: Resolver,
            orchestrator: Callable[[], Orchestrator], engine: Callable[[], Any], reporter: Reporter,
            force: bool = False, no_deploy: bool = False, no_cache: bool = False,
            state_dir: Path | None = None) -> RebuildResult:
    """Build, push and deploy app's image when its inputs changed (or always, with `no_cache`); otherwise
    change nothing. With builder = "buildah" a build whose image is already pushed (`same_image`) is
    recorded as `build:unchanged`, and nothing is pushed or deployed. state_dir: where buildah's
    per-build storage root goes (default: a temporary directory).

    Call it holding the app's lock for the whole run (inputs, build, push, deploy), with any
    unfinished rollout recovered first, as rollout.operations.rebuild does: so two overlapping
    runs never build twice (the second waits for the lock, then finds the first one's build
    up to date).
    """
    result, inputs, decision = _plan(app, config_path, ledger, registry, force=force, no_deploy=no_deploy,
                                     no_cache=no_cache)
    if decision.action in (UP_TO_DATE, FAILED_BEFORE):
        return result
    if decision.action == DEPLOY_EXISTING:
        tag, digest = _existing(decision)
        reporter.info(f"{app.name}: {decision.why}: deploying it")
        return _deploy(app, orchestrator(), inputs, tag, digest, f"rebuild: {decision.why}")
    if inputs.settings.builder == "buildah":
        built = _build_with_buildah(app, inputs, decision, ledger, registry, reporter,
                                    state_dir or Path(tempfile.gettempdir()), force=force, no_deploy=no_deploy)
        if isinstance(built, RebuildResult):
            return built
        if isinstance(built, Decision):
            tag, digest = _existing(built)
            reporter.info(f"{app.name}: {built.why}: deploying it")
            return _deploy(app, orchestrator(), inputs, tag, digest, f"rebuild: {built.why}")
        tag, digest = built
    else:
        tag = _new_tag(app, inputs, ledger)
        digest = _earlier_push_of_this_build(engine, app, inputs, tag, registry)
        if digest is not None:
            reporter.info(f"{app.name}: {app.image}:{tag} is this build, pushed by a run that stopped before"
                          " recording it: recording it now")
        else:
            reporter.info(f"{app.name}: {decision.why}: building {app.image}:{tag} ({inputs.describe()})")
            digest = build_and_push(engine(), app, inputs, tag, reporter, no_cache=no_cache)
            kill_point("docker:pushed")
    record_push(ledger, PushedBuild(app.name, app.image, tag, digest, inputs.build_key, inputs.base_digests,
                                    at=L.now_iso(), deploy=not no_deploy))
    reporter.info(f"{app.name}: pushed {app.image}:{tag} as {digest}")
    if no_deploy:
        return RebuildResult(app.name, EXIT_OK, "built", f"built and pushed {app.image}:{tag} ({digest}), not deployed:"
                             f" `rollout deploy {app.name}:{tag}` deploys it", inputs, tag, digest)
    return _deploy(app, orchestrator(), inputs, tag, digest, f"rebuild: {decision.why}")


def plan(app: AppConfig, *, config_path: Path | None, ledger: Ledger, registry: Resolver, force: bool = False,
         no_deploy: bool = False, no_cache: bool = False) -> RebuildResult:
    """`rebuild --check`: whether a rebuild is due (exit_code 10) or not (0), changing nothing; no lock needed."""
    return _plan(app, config_path, ledger, registry, force=force, no_deploy=no_deploy, no_cache=no_cache)[0]


def _plan(app: AppConfig, config_path: Path | None, ledger: Ledger, registry: Resolver, *,
          force: bool, no_deploy: bool, no_cache: bool = False) -> tuple[RebuildResult, Inputs, Decision]:
    inputs = gather_inputs(app, config_path, registry)
    decision = decide(ledger, app.name, inputs.build_key, force=force, no_deploy=no_deploy, no_cache=no_cache)
    checked = inputs.describe()
    if decision.action == UP_TO_DATE:
        result = RebuildResult(app.name, EXIT_OK, UP_TO_DATE, f"{app.name}: up to date: {decision.why}; checked {checked}", inputs)
    elif decision.action == FAILED_BEFORE:
        result = RebuildResult(app.name, EXIT_OK, FAILED_BEFORE, f"{app.name}: {decision.why}; checked {checked}", inputs,
                               entry=decision.entry)
    else:
        result = RebuildResult(app.name, EXIT_CHANGED, "rebuild-due", f"{app.name}: a rebuild is due: {decision.why};"
                               f" checked {checked}", inputs)
    if decision.entry is not None or decision.build is not None:
        result.tag, result.digest = _existing(decision)
    return result, inputs, decision


def _existing(decision: Decision) -> tuple[str, str]:
    if decision.entry is not None and decision.entry.tag:
        return decision.entry.tag, decision.entry.digest
    assert decision.build is not None
    return decision.build.tag, decision.build.digest


def _deploy(app: AppConfig, orchestrator: Orchestrator, inputs: Inputs, tag: str, digest: str,
            reason: str) -> RebuildResult:
    ref = Reference(app.registry, app.repository, tag=tag, digest=digest)
    outcome = orchestrator.deploy(ref, kind=L.REBUILD, build_key=inputs.build_key,
                                    base_digests=inputs.base_digests, reason=reason)
    action = "deployed" if outcome.exit_code == EXIT_OK else "failed"
    return RebuildResult(app.name, outcome.exit_code, action, outcome.message, inputs, tag, digest,
                         outcome.entry, outcome.revert, outcome)


def _new_tag(app: AppConfig, inputs: Inputs, ledger: Ledger) -> str:
    """Render the tag template; a tag already in the ledger is an error, never a reuse."""
    count = max(len(pushed_builds(ledger, app.name)), ledger.build_key_count(app.name))
    git = git_commit(inputs.settings.context) if "{git}" in inputs.settings.tag else None
    first_base = inputs.bases[0][1] if inputs.bases else None
    tag = render_tag(inputs.settings.tag, n=count + 1, first_base_digest=first_base, git=git)
    if ledger.digests_for_tag(app.name, tag):
        raise UserError(f"tag {tag} of {app.name} is already in the ledger: tags are never reused;"
                        f" make apps.{app.name}.build.tag unique per build (e.g. with {{n}})")
    return tag


def _pushed_not_running(app: AppConfig, inputs: Inputs, ledger: Ledger, same: tuple[str | None, str], *,
                        force: bool, no_deploy: bool) -> RebuildResult | Decision:
    """A build that is an image pushed earlier (same_image) but not the one that runs: decide()'s rules for
    it, never `unchanged`. FAILED_BEFORE (a RebuildResult) when its newest deploy failed (unless force);
    with no_deploy an `unchanged` result (pushed, not deployed); else a DEPLOY_EXISTING Decision."""
    tag, digest = same
    entries = [e for e in rebuild_entries(ledger, app.name, inputs.build_key) if e.digest == digest]
    entry = entries[0] if entries else None
    name = f"{app.image}:{tag}" if tag else f"{app.image}@{digest}"
    if entry is not None and entry.status == L.FAILED and not force:
        return RebuildResult(app.name, EXIT_OK, FAILED_BEFORE, f"{app.name}: the build is {name}, whose deploy"
                             f" #{entry.id} failed ({clip(entry.error or 'no reason recorded')}): not deploying it again;"
                             " change an input, or pass --force", inputs, tag, digest, entry)
    if no_deploy:
        return RebuildResult(app.name, EXIT_OK, "unchanged", f"{app.name}: unchanged: the build is {name} ({digest}),"
                             " already pushed, not deployed (--no-deploy): nothing pushed", inputs, tag, digest)
    why = "the build is " + name + (f", whose deploy #{entry.id} did not finish ({entry.status})" if entry is not None
                                    and entry.status != L.HEALTHY else ", pushed earlier but not what runs")
    build = PushedBuild(app.name, app.image, tag or "", digest, inputs.build_key, inputs.base_digests, at="", deploy=True)
    return Decision(DEPLOY_EXISTING, why, build, entry if entry is not None and entry.tag else None)


def _build_with_buildah(app: AppConfig, inputs: Inputs, decision: Decision, ledger: Ledger, registry: Any,
                        reporter: Reporter, state_dir: Path, *, force: bool = False,
                        no_deploy: bool = False) -> RebuildResult | Decision | tuple[str, str]:
    """Build with buildah (rollout.buildah). A build that is the current entry's image is `build:unchanged`
    (a RebuildResult, nothing pushed or deployed); one that is an earlier push not running now follows
    `_pushed_not_running`; else push it under a new tag and return (tag, digest)."""
    from rollout import buildah
    from rollout.reproducible import same_image

    buildah.binary()  # missing: exit 2 naming the package, before anything is said or done
    settings = inputs.settings
    stamp = buildah.source_date_epoch(settings.context) if settings.reproducible else None
    labels = build_labels(app, inputs, buildah.rfc3339(stamp) if stamp is not None else None)
    if settings.reproducible:
        # The label is part of the image config: HEAD would make every commit anywhere in the repository
        # (docs/, another app's directory) a new image. The last commit that touched the context instead.
        labels.pop(REVISION_LABEL, None)
        # The build key is in the ledger; as a label it would make a change the image does not see (a file the
        # Dockerfile never COPYs) a new image, pushed and deployed. Only the docker builder's recovery reads it.
        labels.pop(BUILD_KEY_LABEL, None)
        commit = buildah.context_commit(settings.context)
        if commit is not None:
            labels[REVISION_LABEL] = commit[1]
    registries = {app.registry, *(ref.registry for ref, _ in inputs.bases)}
    plain_http = [r for r in registries if registry.base_url(r).startswith("http://")]
    repository = Reference(app.registry, app.repository)
    reporter.info(f"{app.name}: {decision.why}: building {app.image} with buildah"
                  f"{' (reproducible, timestamp ' + str(stamp) + ')' if stamp is not None else ''} ({inputs.describe()})")
    # The credentials and CA bundle rollout's own client uses for each of these registries: a registry that
    # `rollout deploy` reaches, buildah reaches (rollout.buildah.registry_args).
    credentials = {r: registry.credentials(r) for r in registries}
    with buildah.build(settings, inputs.dockerfile.pinned(inputs.base_digests), inputs.context.digest, labels=labels,
                       timestamp=stamp, plain_http=plain_http, state_dir=state_dir, reporter=reporter,
                       credentials=credentials, ca_bundle=registry.ca_bundle) as built:
        current = ledger.current(app.name)
        same = same_image(ledger, registry, app.name, repository, inputs.build_key, built.image_id)
        if same is not None and (current is None or current.digest != same[1]):
            return _pushed_not_running(app, inputs, ledger, same, force=force, no_deploy=no_deploy)
        if same is not None:
            tag, digest = same
            # On the current entry, so decide() finds these inputs up to date next time.
            ledger.event(current.id if current is not None else None, BUILD_UNCHANGED, {
                "app": app.name, "repository": app.image, "tag": tag, "digest": digest, "image_id": built.image_id,
                "build_key": inputs.build_key})
            where = f"{app.image}:{tag}" if tag else app.image
            return RebuildResult(app.name, EXIT_OK, "unchanged", f"{app.name}: unchanged: the build is image"
                                 f" {built.image_id}, already pushed as {where} ({digest}): nothing pushed or deployed",
                                 inputs, tag, digest)
        earlier = [b for b in pushed_builds(ledger, app.name) if b.build_key == inputs.build_key]
        if earlier:
            reporter.info(f"{app.name}: the same inputs as build {earlier[-1].tag} gave a different image:"
                          f" `rollout rebuild {app.name} --explain` names the layers that differ")
        tag = _new_tag(app, inputs, ledger)
        ref = Reference(app.registry, app.repository, tag=tag)
        try:
            there = registry.resolve(ref)
        except TagNotFound:
            there = None
        if there is not None:
            from rollout.reproducible import read_image

            pushed = read_image(registry, repository, there)
            if pushed is None or pushed.image_id != built.image_id:
                raise UserError(f"{app.image}:{tag} already exists in the registry: tags are never overwritten;"
                                f" make apps.{app.name}.build.tag unique per build (e.g. with {{n}})")
            reporter.info(f"{app.name}: {app.image}:{tag} is this build, pushed by a run that stopped before"
                          " recording it: recording it now")
            return tag, there
        digest = built.push(ref)
        kill_point("docker:pushed")
    return tag, digest


def explain(app: AppConfig, *, ledger: Ledger, registry: Any) -> RebuildResult:
    """`rebuild --explain`: the layers (and config fields) that differ between the last two pushes of the
    same inputs (build key) whose digests differ, read back from the registry; changes nothing.
    exit_code 0; RegistryUnreachable (exit 5) when an image cannot be read."""
    from rollout.reproducible import differences, last_two_differing, read_image

    pair = last_two_differing(pushed_builds(ledger, app.name))
    if pair is None:
        return RebuildResult(app.name, EXIT_OK, "explained", f"{app.name}: no two pushes of the same inputs differ:"
                             " nothing to explain")
    older, newer = pair
    repository = Reference(app.registry, app.repository)
    images = [read_image(registry, repository, build.digest) for build in pair]
    if images[0] is None or images[1] is None:
        gone = older if images[0] is None else newer
        return RebuildResult(app.name, EXIT_OK, "explained", f"{app.name}: {app.image}:{gone.tag} ({gone.digest})"
                             " is no longer in the registry: nothing to compare")
    lines = differences(images[0], images[1]) or ["the images are the same; only their manifests differ"
                                                  " (layers compressed differently)"]
    head = (f"{app.name}: builds {older.tag} and {newer.tag} have the same inputs (key {short_digest(newer.build_key)})"
            f" but differ:")
    return RebuildResult(app.name, EXIT_OK, "explained", "\n".join([head, *("  " + line for line in lines)]),
                         tag=newer.tag, digest=newer.digest)


def _earlier_push_of_this_build(engine: Callable[[], Any], app: AppConfig, inputs: Inputs, tag: str,
                                registry: Resolver) -> str | None:
    """None when app.image:tag is free; its digest when it is this very build, pushed from this
    engine by a run killed before it wrote `build:pushed`; anything else there is an error.

    Proof without reading the registry's manifest: the engine's image of that tag carries this
    build's key, and the engine recorded the registry's current digest for it when the push ended.
    """
    import docker.errors

    try:
        digest = registry.resolve(Reference(app.registry, app.repository, tag=tag))
    except TagNotFound:
        return None
    try:
        image = engine().images.get(f"{app.image}:{tag}")
    except docker.errors.ImageNotFound:
        image = None
    if (image is not None and (image.labels or {}).get(BUILD_KEY_LABEL) == inputs.build_key
            and (app.registry, app.repository, digest) in repo_digests(image.attrs.get("RepoDigests") or [])):
        return digest
    raise UserError(f"{app.image}:{tag} already exists in the registry: tags are never overwritten;"
                    f" make apps.{app.name}.build.tag unique per build (e.g. with {{n}})")


# -- build and push with the Docker SDK -----------------------------------------------


def local_engine() -> Any:
    """The Docker engine that builds: $DOCKER_HOST or the local socket."""
    import docker

    try:
        client = docker.from_env(timeout=BUILD_TIMEOUT)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 - the SDK raises many kinds for "no engine"
        raise Unreachable(f"the Docker engine for builds is unreachable ({one_line(exc)}): start it or set DOCKER_HOST") from None


def build_labels(app: AppConfig, inputs: Inputs, created: str | None = None) -> dict[str, str]:
    """Labels a rebuilt image carries: `rollout.build-key`, and the OCI image-spec's pre-defined
    annotation keys (image-spec annotations.md) `org.opencontainers.image.created` (RFC 3339,
    UTC, seconds: `created`, else now), `.base.name`/`.base.digest` of the final stage's external
    base, and `.revision` (the context's full git commit) when known."""
    labels = {BUILD_KEY_LABEL: inputs.build_key,
              "org.opencontainers.image.created": created or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    base = inputs.dockerfile.final_base(inputs.settings.target)
    if base is not None:
        labels["org.opencontainers.image.base.name"] = str(base)
        labels["org.opencontainers.image.base.digest"] = inputs.base_digests[str(base)]
    revision = git_commit(inputs.settings.context, short=False)
    if revision:
        labels[REVISION_LABEL] = revision
    return labels


def build_and_push(client: Any, app: AppConfig, inputs: Inputs, tag: str, reporter: Reporter,
                   no_cache: bool = False) -> str:
    """Build from exactly the hashed context with pinned FROMs, push app.image:tag; return the pushed digest.

    client is a docker.DockerClient (local_engine); no_cache: use no layer the engine cached. Returns "sha256:..." as the registry named it
    (checked). Raises UserError (exit 2) when the build fails or the context changed while it
    was read, RegistryUnreachable (exit 5) when the push fails or names no usable digest.
    """
    import docker.errors

    settings = inputs.settings
    pinned = inputs.dockerfile.pinned(inputs.base_digests)
    image = f"{app.image}:{tag}"
    with tempfile.TemporaryFile() as archive:
        sent = build_context_tar(settings, pinned, archive)
        if sent.digest != inputs.context.digest:
            raise UserError(f"the build context {settings.context} changed while rollout read it: run again")
        archive.seek(0)
        options: dict[str, Any] = dict(
            fileobj=archive, custom_context=True, dockerfile=PINNED_DOCKERFILE, tag=image,
            labels=build_labels(app, inputs), buildargs=settings.build_args or None, target=settings.target,
            platform=settings.platform, network_mode="host", rm=True, forcerm=True, pull=False, decode=True,
            nocache=no_cache,
        )
        try:
            _follow_build(client.api.build(**options), image, reporter)
        except docker.errors.APIError as exc:
            raise UserError(f"building {image} failed: {one_line(exc)}") from None
    try:
        digest = _follow_push(client.api.push(app.image, tag=tag, stream=True, decode=True), image)
    except docker.errors.APIError as exc:
        raise RegistryUnreachable(f"pushing {image} failed: {one_line(exc)}") from None
    return digest


def _follow_build(stream: Iterable[dict[str, Any]], image: str, reporter: Reporter) -> None:
    recent: deque[str] = deque(maxlen=BUILD_LOG_LINES)
    for chunk in stream:
        if "error" in chunk or "errorDetail" in chunk:
            error = chunk.get("error") or chunk.get("errorDetail", {}).get("message", "unknown error")
            for line in recent:
                reporter.warn(f"[build] | {line}")
            raise UserError(f"building {image} failed: {one_line(error)}")
        # The classic builder colours a RUN's stderr with terminal escapes; logs want plain text.
        for line in _TERMINAL_ESCAPE.sub("", str(chunk.get("stream", ""))).splitlines():
            if line.strip():
                recent.append(line.rstrip())
                if line.startswith("Step "):
                    reporter.info(f"[build] {line.strip()}")


def _follow_push(stream: Iterable[dict[str, Any]], image: str) -> str:
    digest = None
    for chunk in stream:
        if "error" in chunk or "errorDetail" in chunk:
            error = chunk.get("error") or chunk.get("errorDetail", {}).get("message", "unknown error")
            raise RegistryUnreachable(f"pushing {image} failed: {one_line(error)}")
        aux = chunk.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = aux["Digest"]
    if digest is None:
        raise RegistryUnreachable(f"pushing {image} finished without the registry naming a digest")
    # The engine relays the registry's answer: checked before it is recorded in the immutable ledger.
    return checked_digest(digest, f"pushing {image}: the engine reported", RegistryUnreachable)
