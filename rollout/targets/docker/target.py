"""Docker host target: one named container, moved to an exact digest.

The old container is renamed and stopped, never deleted at once, so going back
is `docker start` of a container that already exists: no pull, no create.

Without a traffic section that is stop-first: the old container stops before the new one starts,
and requests in between fail. With one (rollout.config.Traffic, issue 14) nothing is stopped
first: the new container starts beside the live one on the idle slot, is verified there and takes
the traffic through the router (rollout.targets.docker.traffic), and the old one keeps running
through the stable window and the drain time, so a failure is a switch back (`settle`).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import json
import os
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import docker
import docker.errors
import requests.exceptions

from rollout.config import AppConfig, TargetConfig
from rollout.credentials import credentials_for, engine_auth
from rollout.errors import (EXIT_USAGE, ConfigError, NotApplied, RouterConfigError, RouterUnreachable, TargetUnreachable,
                            UserError, one_line)
from rollout.faults import kill_point
from rollout.plan import Preview
from rollout.reference import checked_digest, checked_image, parse, repo_digests
from rollout.routers import Router, open_router
from rollout.targets import OutOfOrder, Release, Running
from rollout.targets.docker.endpoint import connect, resolve_endpoint
from rollout.targets.docker.engine import (ENGINE_LOST, EngineUnreachable, engine_call, engine_failure, log, short_reason,
                                           unreachable)
from rollout.targets.docker.ssh import ssh_destination
from rollout.targets.docker.spec import BUILTIN_NETWORKS, ROLLOUT_LABEL_PREFIX, create_spec, restart_policy
from rollout.targets.docker.traffic import LABEL_SLOT, SlotWatch, port_of, slot_in_use, upstream
from rollout.targets.docker.watch import DockerWatch

KEEP_RETIRED = 3
LABEL_ENTRY = "rollout.entry"
LABEL_TAG = "rollout.tag"
LABEL_DIGEST = "rollout.digest"
LABEL_APP = "rollout.app"
# The hash of the rollout.toml settings a container was created with (settings_hash): a forward
# deploy takes a kept or running container back only when the settings are still the same.
LABEL_SETTINGS = "rollout.settings"
DEFAULT_STOP_TIMEOUT = 10  # seconds: the engine's when a container sets none (moby container.DefaultStopTimeout)
NO_RESTART = {"Name": "no", "MaximumRetryCount": 0}
NEW_INFIX = ".rollout-new-"  # NAME.rollout-new-<entry>-<random>: a new container before it takes the name
T = TypeVar("T")
Method = TypeVar("Method", bound=Callable[..., Any])


def _engine_lost(method: Method) -> Method:
    """A DockerTarget method whose engine connection fails outside engine_call (a change, which is
    not sent twice) raises TargetUnreachable naming the target and the engine (exit 5), not requests'
    ConnectionError (ENGINE_LOST): the orchestrator records and prints what it raises."""

    @functools.wraps(method)
    def guarded(self: "DockerTarget", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ENGINE_LOST as exc:
            raise TargetUnreachable(f"target {self.name}: {self._lost(exc)}") from None

    return guarded  # type: ignore[return-value]


class DockerTarget:
    """One named container on a Docker engine (settings: rollout.targets.kinds.DOCKER), implementing
    rollout.targets.Target.

    `host` is a DOCKER_HOST-style URL (unix://, tcp://, https://, ssh://) or "context:NAME" (a Docker
    context, rollout.targets.docker.endpoint); unset, $DOCKER_HOST or the local socket. Built without
    asking the engine; raises ConfigError (exit 2) for a missing or broken Docker context.
    """

    def __init__(self, config: TargetConfig, app: AppConfig) -> None:
        self.name = config.name
        self.app = app
        self.settings = config.settings
        self.container_name: str = config.settings["container"]
        # Unset: $DOCKER_HOST or the local socket, with DOCKER_TLS_VERIFY / DOCKER_CERT_PATH (as docker.from_env()).
        self.host: str | None = config.settings.get("host") or None
        # A missing or broken Docker context is a config error (exit 2), found before anything runs.
        try:
            self.endpoint = resolve_endpoint(self.host)
        except ConfigError as exc:
            raise ConfigError(f"target {self.name}: {exc}") from None
        self._client: docker.DockerClient | None = None
        self._started_id: str | None = None  # the container the last apply made to take the name
        self._replaced: _Replaced | None = None  # the one it replaced, as it was before
        self.traffic = config.traffic  # None: stop-first
        self.health = config.health
        self._router: Router | None = None
        self._upstreams: list[str] = []  # what the router sent traffic to at the last prepare()
        self._beside: _Beside | None = None  # the last apply's release on its slot (traffic only)

    @property
    def where(self) -> str:
        """The engine as the operator named it, for messages: `host`, $DOCKER_HOST or "the local socket"."""
        return self.host or os.environ.get("DOCKER_HOST") or "the local socket"

    # -- connection --------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        """The SDK client, connected on first use (which asks the engine its API version).
        Raises TargetUnreachable (exit 5) with the reason and a hint when the engine does not answer."""
        if self._client is None:
            try:
                self._client = connect(self.endpoint)  # asks the engine its API version: reachable
            except Exception as exc:  # noqa: BLE001 - the SDK raises many kinds for "no engine"
                self._client = None
                where = self.where
                if self.endpoint.host and self.endpoint.host != self.host:
                    where = f"{where} ({self.endpoint.host})"
                reason, hint = short_reason(exc), "start it or fix `host`"
                if (self.endpoint.host or "").startswith("ssh://"):
                    # The SDK only sees the pipe close; ssh has already said why on stderr.
                    if isinstance(exc, requests.exceptions.ConnectionError):
                        reason = "ssh closed the connection; its own message, if any, is above"
                    hint = f"check that `ssh {ssh_destination(self.endpoint.host)} docker version` works"
                raise TargetUnreachable(
                    f"target {self.name}: {unreachable(where, reason)}: {hint}"
                ) from None
        return self._client

    # -- Target protocol ---------------------------------------------------

    @_engine_lost
    def running(self) -> Running:
        """The container holding the name: its configured image, the digest behind it (its repo
        digest, else rollout's label), its state; `active` only when running. Running(None, None,
        "no container", active=False) when there is none. Raises TargetUnreachable (exit 5)."""
        container = self._container(self.container_name)
        traffic = self._traffic_view(container) if self.traffic is not None else None
        if container is None:
            return Running(None, None, "no container", active=False, traffic=traffic)
        image = self._configured_image(container)
        return Running(image, self._digest_of(container), container.status, active=container.status == "running",
                       traffic=traffic, warning=self._settings_changed(container), entry=_entry_of(container))

    def _settings_changed(self, container: Any) -> str | None:
        """Running.warning when rollout.toml's settings for this target are no longer those the
        container was created from (its LABEL_SETTINGS; None without one: a container rollout did
        not create, or created before the label). A deploy of the digest that runs is a no-op, so
        only `--force` applies such an edit (or the next release)."""
        created = (container.labels or {}).get(LABEL_SETTINGS)
        slot = _slot_of(container)
        wanted = self._slot_settings(slot) if self.traffic is not None and slot is not None else self.settings
        if created is None or created == settings_hash(wanted):
            return None
        tag = (container.labels or {}).get(LABEL_TAG) or "TAG"
        return (f"rollout.toml's settings for {self.name} changed since {container.name} was created: `rollout deploy"
                f" {self.app.name}:{tag} --force` applies them")

    def _traffic_view(self, container: Any) -> dict[str, Any]:
        """Running.traffic: where the router sends new requests, and whether that is exactly the slot
        of `container` (the one holding the name; None: none). A router that cannot be asked raises
        RouterUnreachable (exit 5) or RouterConfigError (exit 2), prefixed with the target: whether
        the release the ledger records takes the traffic cannot be known without it."""
        assert self.traffic is not None
        try:
            upstreams = self.router.upstreams()
        except (RouterUnreachable, RouterConfigError) as exc:
            raise type(exc)(f"target {self.name}: {one_line(exc)}") from None
        slot = _slot_of(container) if container is not None else None
        return {"router": self.traffic.router, "route": self.traffic.route, "upstreams": upstreams, "slot": slot,
                "routed": slot is not None and upstreams == [upstream(slot)]}

    @property
    def router(self) -> "Router":
        """The traffic section's router (rollout.routers), built on first use; contacts nothing."""
        if self._router is None:
            assert self.traffic is not None, "only a target with a traffic section has a router"
            self._router = open_router(self.traffic.router, self.traffic.admin, self.traffic.route)
        return self._router

    @_engine_lost
    def prepare(self, release: Release) -> None:
        """Pull release.image (by digest) unless the engine has it; changes no container. With a
        traffic section, first ask the router where the traffic goes (RouterUnreachable, exit 5, or
        RouterConfigError, exit 2, when it cannot say: nothing changed).
        Engine calls are retried for ENGINE_RETRY_SECONDS (seconds) while its socket refuses.
        Raises TargetUnreachable (exit 5) when the engine or the pull fails."""
        if self.traffic is not None:
            self.router.check([upstream(slot) for slot in self.traffic.slots])
            self._upstreams = self.router.upstreams()
        _warn_if_compose(self._container(self.container_name), self.name, self.where)
        try:
            self._engine(lambda: self.client.images.get(release.image))
            return
        except docker.errors.ImageNotFound:
            pass
        try:
            auth = engine_auth(credentials_for(parse(release.image).registry))  # as rollout's own HEAD
            self._engine(lambda: self.client.api.pull(release.repository, tag=release.digest, auth_config=auth))
        except docker.errors.APIError as exc:
            raise TargetUnreachable(f"target {self.name}: cannot pull {release.image}: {short_reason(exc)}") from None
        try:  # errors inside the pull's progress stream do not raise: check the result
            self._engine(lambda: self.client.images.get(release.image))
        except docker.errors.ImageNotFound:
            raise TargetUnreachable(f"target {self.name}: pulling {release.image} did not produce the image") from None

    def _slot_for(self, release: Release, live: Any, ours: list[Any]) -> tuple[Any, int]:
        """(a container of ours already running release.image on a slot, the routed one first; its
        slot) or (None, the idle slot), as apply_beside's docstring says; reads only (self._upstreams,
        from prepare or preview). Raises NotApplied (exit 2) when no slot is idle."""
        assert self.traffic is not None
        routed = {port_of(address) for address in self._upstreams}
        serving = sorted((c for c in ours if c.status == "running" and c.attrs["Config"]["Image"] == release.image
                          and _slot_of(c) in self.traffic.slots
                          and _reusable(c, release, self._slot_settings(_slot_of(c)))),
                         key=lambda c: _slot_of(c) not in routed)
        if serving:
            return serving[0], _slot_of(serving[0])
        taken = routed | ({_slot_of(live)} if live is not None else set())
        if live is not None and _slot_of(live) is not None:
            # The router sent to a slot where nothing of ours runs (an operator's edit, a
            # drift `status` shows): that slot serves nothing, so it is idle.
            taken -= routed - {_slot_of(c) for c in ours if c.status == "running"}
        slot = next((s for s in self.traffic.slots if s not in taken), None)
        if slot is None:
            raise NotApplied(f"target {self.name}: no idle slot among {list(self.traffic.slots)} (the router"
                             f" sends traffic to {', '.join(self._upstreams)}): add a slot", exit_code=EXIT_USAGE)
        return None, slot

    def _check_slot_free(self, slot: int) -> None:
        """Raise NotApplied (exit 2) when something listens on the idle slot: it would pass the
        slot's probe and take the traffic (traffic.slot_in_use)."""
        holder = slot_in_use(self.health.http, slot)
        if holder:
            raise NotApplied(f"target {self.name}: slot {slot} is in use by something that is not this"
                             f" app's container ({holder}): free that port or change traffic.slots",
                             exit_code=EXIT_USAGE)

    @_engine_lost
    def preview(self, release: Release) -> Preview:
        """What apply(release) would change, read-only (rollout.plan): the container (and the route,
        with a traffic section) and whether prepare() would pull: the engine is asked whether it has
        the image (GET /images/NAME/json, no registry request). With a traffic section it refuses
        what prepare and apply would, reading only: the router's checks and where the traffic goes
        (RouterConfigError exit 2, RouterUnreachable exit 5), no idle slot or one something else
        listens on (NotApplied, exit 2). Raises TargetUnreachable (exit 5)."""
        serving = None
        if self.traffic is not None:
            self.router.check([upstream(slot) for slot in self.traffic.slots])
            self._upstreams = self.router.upstreams()
            live = self._container(self.container_name)
            ours = ([live] if live is not None else []) + self._retired(prune=False)
            serving, slot = self._slot_for(release, live, ours)
            # apply stops a leftover of ours on the idle slot first; anything else there is refused.
            if serving is None and not any(_slot_of(c) == slot and c.status == "running" for c in ours):
                self._check_slot_free(slot)
        try:
            self._engine(lambda: self.client.images.get(release.image))
            pull = False
        except docker.errors.ImageNotFound:
            pull = True
        except docker.errors.APIError as exc:
            raise TargetUnreachable(f"target {self.name}: Docker engine at {self.where}: {short_reason(exc)}") from None
        changes = f"container {self.container_name} on {self.where}"
        if self.traffic is not None and serving is not None:
            # apply takes the container that already runs this release (a router that drifted, a
            # revert after a switch back): no container is created or started.
            changes = (f"nothing on {self.where}: {serving.name} runs this release and takes the traffic"
                       if self._upstreams == [upstream(slot)] else
                       f"{self.traffic.router} route {self.traffic.route} on {self.where}: switches to"
                       f" {serving.name}, which runs this release on slot {slot}")
        elif self.traffic is not None:
            changes += (f" (started beside it on the idle slot, then {self.traffic.router} route"
                        f" {self.traffic.route} switches to it)")
        return Preview(changes, pull)

    @_engine_lost
    def apply(self, release: Release) -> str | None:
        """Move the container named `container` to release.image; return the image it ran before (None: none).

        Order, each step a crash-safety kill point (tests/test_crash_safety.py):
        1. the new container is created under a temporary name, the old one untouched
           (docker:created), or a kept container that already runs this release is taken back;
        2. the old container is set aside as NAME.rollout-<entry>, still running (docker:renamed);
        3. the new container takes the name, the old one is stopped as its operator configured and
           its restart policy set to "no", so the engine never brings it back (docker:stopped);
        4. the new one is started (docker:started).
        That is stop-first; with a traffic section none of it happens: see `_apply_beside`.
        Step 1 changes nothing the app runs, so any error in it is NotApplied (see `_prepare`):
        exit 2 when the settings are the cause, else 5, no container left behind. An error from
        step 2 on propagates: the target changed, and the orchestrator reverts it, or calls
        stop() when there is nothing to revert to.
        """
        if self.traffic is not None:
            return self._apply_beside(release)
        self._started_id, self._replaced = None, None
        change = self._prepare(release)
        old, container = change.old, change.container
        # Known before anything changes, so stop() can undo an apply that fails half way.
        self._replaced, self._started_id = change.replaced, container.id
        if old is not None:
            self._set_aside(old, taken={c.name for c in change.retired})
        container.rename(self.container_name)
        others = [c for c in change.retired if c is not change.spare]
        for quiet in ([old] if old is not None else []) + others:
            if quiet is old or _may_come_back(quiet):
                self._quiet(quiet)
        if old is not None:
            kill_point("docker:stopped")
        self._set_restart_policy(container, change.policy)
        container.start()
        kill_point("docker:started")
        container.reload()
        # The engine's own clock: events before this start (say, the die of this
        # container's previous life, when a revert restarts it) are history.
        self._started_at_ns = _timestamp_ns(container.attrs["State"]["StartedAt"])
        # The container just replaced is the newest retired one whatever its FinishedAt (it may
        # have exited long ago): it is what a revert starts again, so it is never pruned here.
        now_retired = ([old] if old is not None else []) + others
        self._prune(now_retired[KEEP_RETIRED:])
        return change.before

    def _prepare(self, release: Release) -> "_Change":
        """Step 1 of apply: what changes, and the container that takes the name, ready to start.

        Nothing the app runs is touched here, so every error is NotApplied and a container created
        here is removed again first. The cause decides the exit code: the settings (the engine
        refuses the create, a network to join does not exist) 2; anything else 5: the engine
        unreachable or failing (a 5xx such as a full disk), or an answer of the engine this code
        cannot read (odd inspect data).
        """
        created = None
        try:
            old = self._container(self.container_name)
            replaced = _Replaced.of(old) if old is not None else None
            retired = self._retired()
            before = self._configured_image(old) if old is not None else None
            spare = next((c for c in retired if c.attrs["Config"]["Image"] == release.image
                          and _reusable(c, release, self.settings)), None)
            if spare is None:
                created = self._create_runnable(release, old)
                kill_point("docker:created")
                # The policy it was created with (the old one's, or the `restart` setting) stays.
                policy = None
            else:
                # What the kept container gets back: the policy of the one it replaces, read before
                # retiring sets that to "no".
                policy = _restart_policy(old) if old is not None else self._restart_setting(spare)
                # A kept container is normally stopped already; one a daemon restart or an operator
                # brought up must be down before it takes the name (and the port) back.
                self._stop(spare)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the app's container is as it was
            if created is not None:
                _remove_quietly(self.client.api, created.id)
            raise self._not_applied(exc) from None
        if replaced is not None and replaced.auto_remove:
            log.warning("container %s was started with --rm: rollout keeps the replaced container for a fast"
                        " revert, so it creates the new one without --rm", self.container_name)
        return _Change(old, replaced, before, created or spare, spare, retired, policy)

    def _not_applied(self, exc: Exception) -> NotApplied:
        """The NotApplied for an error in apply's first step (see `_prepare`)."""
        left = f"{self.container_name} left as it was"
        if isinstance(exc, NotApplied):
            return exc
        if isinstance(exc, UserError):
            return NotApplied(f"{one_line(exc)}; {left}", exit_code=EXIT_USAGE)
        if isinstance(exc, TargetUnreachable):
            return NotApplied(f"{one_line(exc)}; {left}")
        if isinstance(exc, ENGINE_LOST):
            return NotApplied(f"target {self.name}: {self._lost(exc)}; {left}")
        if isinstance(exc, docker.errors.APIError):
            reason = short_reason(exc)
        else:
            reason = f"{type(exc).__name__}: {one_line(exc)}"
        return NotApplied(f"target {self.name}: cannot prepare the new container on the Docker engine at"
                          f" {self.where}: {reason}; {left}")

    @_engine_lost
    def watch(self, release: Release) -> "DockerWatch":
        """A DockerWatch of the container the last apply() started, from the moment it started.
        Raises OutOfOrder when no apply() succeeded first."""
        if self._started_id is None:
            raise OutOfOrder(f"target {self.name}: watch() needs a successful apply() first"
                             " (call order: rollout.targets.Target)")
        watch = DockerWatch(self.client, self._started_id, not_before_ns=self._started_at_ns, where=self.where)
        if self._beside is None:
            return watch
        return SlotWatch(watch, self._beside.slot, self.health.http, self._switch)  # type: ignore[return-value]

    def logs(self, lines: int = 20) -> str:
        """The last `lines` lines (stdout and stderr) of the container the last apply() started, with
        the values of its environment masked (`mask_env`: an app that prints its settings at a crash
        must not put a password on screen or in the ledger's log-tail event); "" when there is none,
        it is gone or the engine is unreachable."""
        if self._started_id is None:
            return ""
        try:
            return masked_logs(self.client, self.client.containers.get(self._started_id), lines)
        except (docker.errors.NotFound, *ENGINE_LOST):
            return ""  # gone, or the engine is: what matters is said elsewhere

    @_engine_lost
    def stop(self) -> None:
        """Undo the last apply (when there is no healthy release to revert to): the container it
        replaced is back under its name, in the state it was in before that apply.

        Works from wherever apply stopped, half way included. The new container is stopped as
        its operator configured (see `_stop`) with restart policy "no"; one that never started
        (apply failed before its start) is removed, having nothing to show; one that ran is set
        aside as a retired container, or, when it replaced nothing, keeps the name (its policy
        can only have come from the `restart` setting, which the next create applies again).
        The replaced container gets its name and restart policy back and is started again only
        if it was up before (running, restarting, paused: a paused one comes back running, since
        the stop ended the processes the pause had frozen); exited or created, it stays so. When
        the engine removed it (`--rm`) it is created again from its inspected settings, without
        `--rm`. Raises docker.errors.APIError when the engine fails, TargetUnreachable (exit 5) when it
        is unreachable (its reads are retried for ENGINE_RETRY_SECONDS first).
        """
        replaced, new_id = self._replaced, self._started_id
        if new_id is None:
            return
        if self._beside is not None:
            # Beside the live one, nothing else was touched: only the new container goes down
            # (settle(False) already did it and moved the traffic back; this is for an apply that failed).
            started = self._found(new_id)
            if started is not None and self._beside.started:
                self._quiet(started)
            return
        failed = self._found(new_id)
        if failed is not None:
            self._quiet(failed)
            if replaced is None:
                if _never_started(failed):
                    failed.remove(force=True)
                return
            if failed.name == self.container_name:
                self._set_aside(failed, taken={c.name for c in self._retired()})
        self._restore(replaced)
        # Removed only now: an anonymous volume it carried stays in use until the restored container
        # mounts it (the engine deletes a `--rm` container's anonymous volumes unless in use).
        if failed is not None and _never_started(failed):
            failed.remove(force=True)

    def _restore(self, replaced: "_Replaced") -> None:
        """The container an apply replaced, back under the name in its state before that apply (see stop())."""
        previous = self._found(replaced.id)
        if previous is not None and replaced.auto_remove and previous.status in ("exited", "dead", "removing"):
            previous = None  # it ran and stopped, so the engine is removing it: it cannot be started again
        if previous is None:
            previous = self._create_again(replaced)
        elif not (previous.status == "running" and replaced.was_up):
            # Kept stopped by us; down again if anything brought it up meanwhile, or restarting
            # (the engine cannot rename a restarting container).
            self._stop(previous)
        if previous.name != self.container_name:
            previous.rename(self.container_name)
        self._set_restart_policy(previous, replaced.restart_policy)
        if replaced.was_up and previous.status != "running":
            previous.start()

    def _create_again(self, replaced: "_Replaced") -> Any:
        """A container removed after it was replaced (`--rm`), created again under the name, not
        started: its inspected settings (rollout.targets.docker.spec rules, without `--rm`), its own labels and
        image (by the reference it was created with while that still names the same image)."""
        attrs = replaced.attrs
        image = attrs["Image"]
        reference = attrs["Config"]["Image"]
        try:
            if self._engine(lambda: self.client.api.inspect_image(reference))["Id"] == image:
                image = reference
        except docker.errors.ImageNotFound:
            pass
        labels = {k: v for k, v in (attrs["Config"].get("Labels") or {}).items() if k.startswith(ROLLOUT_LABEL_PREFIX)}
        return self._create(image, labels, attrs, {}, self.container_name)

    def _found(self, container_id: str) -> Any:
        """The container with that id, or None when it is gone."""
        try:
            return self._engine(lambda: self.client.containers.get(container_id))
        except docker.errors.NotFound:
            return None

    # -- zero downtime (a traffic section) ------------------------------------

    def _apply_beside(self, release: Release) -> str | None:
        """apply() with a traffic section: the release runs on a slot beside the live container,
        which is not touched; return the image the live one runs (None: none).

        The container for it, in this order: one of ours that already runs release.image on a slot
        (the old release during or after a failed window: a revert is then only a switch); else a
        kept container of that image created for the idle slot, started again; else a new one,
        created under a temporary name (NAME.rollout-new-*) for the idle slot (`slot_env` set to
        it, or "{port}" in `ports` replaced) and started. The idle slot is the first of `slots`
        that neither the router sends traffic to nor the live container was created for (a routed
        slot where no container of ours runs is idle when the live one is ours); another
        container of ours still on it is stopped first. Any error before the start is NotApplied
        (nothing the app serves changed). The traffic moves only in verification (SlotWatch).
        """
        assert self.traffic is not None
        self._started_id, self._replaced, self._beside = None, None, None
        created = None
        try:
            live = self._container(self.container_name)
            retired = self._retired()
            before = self._configured_image(live) if live is not None else None
            ours = ([live] if live is not None else []) + retired
            serving, slot = self._slot_for(release, live, ours)
            previous = live if live is not None and (serving is None or serving.id != live.id) else None
            if serving is not None:
                container, started = serving, False
            else:
                for other in ours:
                    if other is not live and _slot_of(other) == slot and other.status != "exited":
                        self._quiet(other)  # a leftover on the idle slot would hold its port
                self._check_slot_free(slot)
                spare = next((c for c in retired if c.attrs["Config"]["Image"] == release.image
                              and _slot_of(c) == slot and _reusable(c, release, self._slot_settings(slot))), None)
                if spare is not None:
                    container = spare
                    self._set_restart_policy(spare, _restart_policy(live) if live is not None
                                             else self._restart_setting(spare))
                else:
                    created = container = self._create_runnable(release, live, self._slot_settings(slot),
                                                                {LABEL_SLOT: str(slot)})
                started = True
        except Exception as exc:  # noqa: BLE001 - whatever failed, the app's container is as it was
            if created is not None:
                _remove_quietly(self.client.api, created.id)
            raise self._not_applied(exc) from None
        self._started_id = container.id
        self._beside = _Beside(slot, container.id, previous.id if previous is not None else None,
                               list(self._upstreams), started)
        if started:
            container.start()
            kill_point("docker:started")
        container.reload()
        self._started_at_ns = _timestamp_ns(container.attrs["State"]["StartedAt"])
        return before

    def _slot_settings(self, slot: int) -> dict[str, Any]:
        """The target's settings for a container on `slot`: slot_env set to it, or "{port}" in `ports` replaced."""
        assert self.traffic is not None
        settings = dict(self.settings)
        if self.traffic.slot_env:
            settings["env"] = {**(settings.get("env") or {}), self.traffic.slot_env: str(slot)}
        else:
            settings["ports"] = {k: str(v).replace("{port}", str(slot)) for k, v in (settings.get("ports") or {}).items()}
        return settings

    @_engine_lost
    def _switch(self) -> None:
        """Give the last apply's container the name (the one that held it is set aside, still
        running), then move the traffic to its slot. Called by SlotWatch once the release is ready there."""
        beside = self._beside
        assert beside is not None
        # The name first: whatever holds it is what the ledger's checks (running(), recovery) look
        # at, so a rollout killed between the two steps leaves the unverified release under the name
        # (recovery reverts it) and never the router on a release no check sees (tests: SIGKILL moments).
        self._take_name(beside.container_id)
        beside.switched = beside.upstreams != [upstream(beside.slot)]
        if beside.switched:  # already the only upstream (a revert after a switch back): no reload at all
            self.router.switch(upstream(beside.slot))
        kill_point("traffic:switched")

    def _take_name(self, container_id: str) -> None:
        """Give the container with that id the name, setting aside the one holding it (still running)."""
        container = self._found(container_id)
        if container is None or container.name == self.container_name:
            return
        holder = self._container(self.container_name)
        if holder is not None:
            self._set_aside(holder, taken={c.name for c in self._retired(keep=container_id)})
        container.rename(self.container_name)

    @_engine_lost
    def settle(self, healthy: bool) -> None:
        """After the verdict on the last apply's release (optional Target method; stop-first: nothing).

        Healthy: the release it replaced keeps running for `drain` more seconds (the stable window
        has already passed), then is stopped as its operator configured with restart policy "no",
        and kept (a later revert starts it again on the idle slot); the oldest kept ones beyond
        KEEP_RETIRED are pruned. The orchestrator calls it once the whole entry is recorded healthy
        (so a signal during the drain cannot revert a verified release). Not healthy (called at
        once): when the traffic had moved and the old container still runs, it goes back at once
        to the old container's slot, the old container takes the name back, and the new one is
        stopped after `drain` seconds (its requests in flight finish; kept for its logs). When the
        old container no longer runs, nothing changes here: the failed release keeps the traffic
        until the orchestrator's revert has started the old one, verified it and switched.
        Raises what the router (RouterUnreachable, exit 5) or the engine raise; the orchestrator's
        revert then switches again.
        """
        beside, self._beside = self._beside, None
        if beside is None:
            return
        if not healthy:
            previous = self._found(beside.previous_id) if beside.previous_id is not None else None
            if previous is not None:
                previous.reload()
            back = previous is not None and previous.status == "running" and _slot_of(previous) is not None
            if beside.switched and not back:
                # Nothing running to go back to (the old container died or is gone): switching would
                # send everyone to a dead slot. The failed release keeps the traffic until the
                # revert has started the old one on the idle slot, verified it and switched.
                return
            if beside.switched:
                self.router.switch(upstream(_slot_of(previous)))
                kill_point("traffic:switched-back")
            if previous is not None:
                self._take_name(previous.id)
            failed = self._found(beside.container_id)
            if failed is not None and beside.started:
                assert self.traffic is not None
                if beside.switched and self.traffic.drain > 0:
                    threading.Event().wait(self.traffic.drain)  # its requests in flight finish
                self._quiet(failed)
            return
        if beside.previous_id is None:
            return
        assert self.traffic is not None
        if beside.switched and self.traffic.drain > 0:
            threading.Event().wait(self.traffic.drain)  # requests in flight on the old slot finish
        previous = self._found(beside.previous_id)
        if previous is not None:
            self._quiet(previous)
        retired = [c for c in self._retired() if c.id != beside.container_id]
        self._prune(retired[KEEP_RETIRED:])

    @_engine_lost
    def tidy(self) -> None:
        """Remove the new containers an interrupted apply left under their temporary name
        (NAME.rollout-new-*; optional Target method, called by recovery): never verified, they
        never took the name or the traffic (with a traffic section one may be running, started
        beside the live release: an app that also works off a queue or a schedule would keep
        doing so with the unverified release). Raises TargetUnreachable (exit 5)."""
        try:
            self._retired()
            return
        except docker.errors.APIError as exc:
            reason = short_reason(exc)
        except ENGINE_LOST as exc:
            reason = self._lost(exc)
        except TargetUnreachable as exc:
            reason = str(exc).removeprefix(f"target {self.name}: ")
        raise TargetUnreachable(f"target {self.name}: cannot remove what an interrupted deploy left: {reason}")

    # -- helpers -------------------------------------------------------------

    def _lost(self, exc: BaseException) -> str:
        """Why this target's engine is unreachable, for a message: "Docker engine at WHERE is unreachable (REASON)"."""
        return unreachable(self.where, engine_failure(exc))

    def _engine(self, call: Callable[[], T]) -> T:
        """engine_call on this target's engine (for calls that may be sent twice); raises
        TargetUnreachable naming the target (exit 5) when the engine stays unreachable."""
        try:
            return engine_call(self.where, call)
        except EngineUnreachable as exc:
            raise TargetUnreachable(f"target {self.name}: {exc}") from None

    def _container(self, name: str) -> Any:
        try:
            return self._engine(lambda: self.client.containers.get(name))
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise TargetUnreachable(f"target {self.name}: cannot inspect {name}: {short_reason(exc)}") from None

    def _configured_image(self, container: Any) -> str:
        """The image container was created from (Config.Image), checked: what an engine answers is
        input too, and this value reaches the ledger and engine URL paths (images/{name}/json)."""
        return checked_image(container.attrs["Config"]["Image"],
                             f"target {self.name}: the engine's Config.Image of container {container.name}",
                             TargetUnreachable)

    def _digest_of(self, container: Any) -> str | None:
        configured = self._configured_image(container)
        if "@" in configured:
            return checked_digest(configured.split("@", 1)[1],
                                  f"target {self.name}: the digest in container {container.name}'s image",
                                  TargetUnreachable)
        try:
            names = self._engine(lambda: self.client.images.get(container.attrs["Image"])).attrs.get("RepoDigests") or []
        except docker.errors.ImageNotFound:
            return None
        known = sorted(repo_digests(names))
        ours = [digest for registry, repository, digest in known
                if (registry, repository) == (self.app.registry, self.app.repository)]
        # An image pulled under another name only (a mirror): its digest is still the content's.
        return next(iter(ours or [digest for _, _, digest in known]), None)

    def _retired(self, keep: str | None = None, prune: bool = True) -> list[Any]:
        """The retired containers NAME.rollout-*, most recently retired (stopped) first.

        A new container a killed or failed rollout left under its temporary name
        (NAME.rollout-new-*) is removed here instead (stopped first, as its operator configured):
        it never served, so it has no revert value, and it must not be taken back as a kept
        container. `keep`: the id of one that is not such a leftover (a release beside the live
        one, about to take the name) and is left alone. `prune=False` (a read-only look: a plan,
        which holds no lock, so such a container may be another rollout's, verifying): none removed.
        """
        prefix = f"{self.container_name}.rollout-"
        containers = self._engine(lambda: self.client.containers.list(all=True, filters={"name": prefix}))
        # The name filter matches substrings: keep exact prefix matches; a container started
        # again by a revert and retired later counts as new.
        retired = []
        for container in containers:
            if container.name.startswith(self.container_name + NEW_INFIX):
                if prune and container.id != keep:
                    if container.status in ("running", "restarting", "paused"):
                        self._stop(container)  # an app working off a queue gets its stop signal, not a SIGKILL
                    container.remove(force=True)
            elif container.name.startswith(prefix):
                retired.append(container)
        return sorted(retired, key=lambda c: c.attrs["State"].get("FinishedAt", ""), reverse=True)

    def _set_aside(self, container: Any, taken: set[str]) -> None:
        """Rename container to NAME.rollout-<entry> (or -<short id> when that is taken).

        moby renames a running container's network sandbox too (daemon/rename.go), and a
        container the engine is restarting has none between two runs: the rename fails with
        "sandbox ... not found". So a restarting container is stopped first; stopping it through
        the API cancels its restart manager (daemon/kill.go, ExitOnNext), so it stays down.
        """
        entry = _entry_of(container)
        # A label is the engine's answer, and anyone may set it: only a ledger id goes into a name.
        new_name = f"{self.container_name}.rollout-{entry if entry is not None else container.short_id}"
        if new_name in taken:
            new_name = f"{new_name}-{container.short_id}"
        container.reload()
        if container.status == "restarting":
            self._stop(container)
        try:
            container.rename(new_name)
        except docker.errors.APIError:
            container.reload()
            # A crash-looping container flips between restarting and running faster than we can
            # look: any restart policy may have bounced it between our look and the rename.
            if container.status != "restarting" and _restart_policy(container).get("Name") in (None, "", "no"):
                raise
            self._stop(container)  # it crashed and began restarting between our look and the rename
            container.rename(new_name)
        kill_point("docker:renamed")

    def _create_runnable(self, release: Release, old: Any, settings: dict[str, Any] | None = None,
                         labels: dict[str, str] | None = None) -> Any:
        """The new container, created (not started) under a temporary name, checked that it can run.

        "Cannot run": the engine refuses the create (an invalid port, a missing volume driver,
        memory below its minimum...: UserError with the engine's own words), or a network it would
        join does not exist (this engine accepts such a create and fails only the start, moby
        20.10: NotApplied, exit 2). Either way no container is left behind. The temporary name
        starts like a retired container's; one a killed rollout left is pruned (`_retired`).
        """
        name = f"{self.container_name}{NEW_INFIX}{release.entry_id}-{uuid.uuid4().hex[:6]}"
        settings = self.settings if settings is None else settings
        labels = {**(labels or {}), LABEL_APP: self.app.name, LABEL_ENTRY: str(release.entry_id),
                  LABEL_TAG: release.tag or "", LABEL_DIGEST: release.digest, LABEL_SETTINGS: settings_hash(settings)}
        old_attrs = old.attrs if old is not None else None
        container = self._create(release.image, labels, old_attrs, settings, name)
        try:
            missing = self._missing_networks(container)
        except Exception:
            _remove_quietly(self.client.api, container.id)
            raise
        if not missing:
            return container
        container.remove(force=True)
        raise NotApplied(f"target {self.name}: network {missing[0]} does not exist on the Docker engine at"
                         f" {self.where}: create it (docker network create {missing[0]}) or fix `network`;"
                         f" {self.container_name} left as it was", exit_code=EXIT_USAGE)

    def _missing_networks(self, container: Any) -> list[str]:
        """User-defined networks container would join that the engine does not have (built-in modes are always there)."""
        mode = container.attrs["HostConfig"].get("NetworkMode") or "default"
        names = set((container.attrs.get("NetworkSettings") or {}).get("Networks") or {})
        if not mode.startswith("container:"):
            names.add(mode)
        missing = []
        for name in sorted(names - BUILTIN_NETWORKS):
            try:
                self._engine(lambda: self.client.networks.get(name))
            except docker.errors.NotFound:
                missing.append(name)
        return missing

    def _stop(self, container: Any) -> None:
        """Stop container the way its operator configured, waiting as long as that takes.

        `POST /containers/{id}/stop` without `t` makes the engine use the container's own
        StopSignal (`--stop-signal`, else the image's STOPSIGNAL, else SIGTERM) and StopTimeout
        (`--stop-timeout`, else 10 s; negative: no SIGKILL at all) (moby
        api/server/router/container/container_routes.go postContainersStop, daemon/stop.go
        ContainerStop). A paused container is unpaused by the engine for it; a restarting one
        has its restart manager cancelled. Stopped already: the engine answers 304, nothing to do.
        The SDK's stop() either sends `t` or gives up on the HTTP call after its own timeout
        plus 10 s, so the request is made here, waiting the container's grace plus our timeout.
        Raises docker.errors.APIError when the engine fails.
        """
        grace = container.attrs["Config"].get("StopTimeout")
        grace = DEFAULT_STOP_TIMEOUT if grace is None else int(grace)
        api = self.client.api
        wait = None if grace < 0 else grace + (api.timeout or 0)
        response = api._post(api._url("/containers/{0}/stop", container.id), timeout=wait)  # noqa: SLF001
        api._raise_for_status(response)  # noqa: SLF001

    def _quiet(self, container: Any) -> None:
        """Stop a retired container and set its restart policy to "no", so it stays down.

        Stopped through the API, `unless-stopped` would stay down on its own, but `always`
        comes back when dockerd restarts and `on-failure` too when the stop left a non-zero exit
        code (SIGTERM: 143): the daemon's restore starts every container whose restart manager
        says so (moby daemon/daemon.go restore, restartmanager/restartmanager.go ShouldRestart).
        A retired container that came back would fight the live one for its name's port.
        The policy is given back when the container is started again (apply's spare, stop()).
        """
        self._stop(container)
        self._set_restart_policy(container, NO_RESTART)

    def _set_restart_policy(self, container: Any, policy: dict[str, Any] | None) -> None:
        """`docker update --restart` for container (the engine refuses it while restarting: stop first)."""
        if policy is None or _restart_policy(container) == policy:
            return
        self.client.api.update_container(container.id, restart_policy=policy)
        container.attrs["HostConfig"]["RestartPolicy"] = dict(policy)

    def _restart_setting(self, spare: Any) -> dict[str, Any] | None:
        """The policy for a kept container taking the name back when no container holds it.

        Its own, unless retiring it set that to "no": then the target's `restart` setting if
        any (what a create would apply), else "no" stays.
        """
        if spare is not None and _restart_policy(spare) != NO_RESTART:
            return _restart_policy(spare)
        setting = self.settings.get("restart")
        return restart_policy(setting) if setting else None

    def _prune(self, containers: list[Any]) -> None:
        if not containers:
            return
        for container in containers:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass  # the engine removed it already (`--rm`), or an operator did
        # Remove the digest references we pulled, not image IDs: an image the operator also
        # tagged or runs elsewhere stays; one that only we referenced goes. One listing (no
        # inspect per container) says which references containers still use.
        in_use = {summary.get("Image") for summary in self._engine(lambda: self.client.api.containers(all=True))}
        for pulled in {c.attrs["Config"]["Image"] for c in containers} - in_use:
            if "@sha256:" not in pulled or not _is_image(pulled):
                continue  # not a digest reference we pulled, or not one at all: never a path to DELETE
            try:
                self.client.images.remove(pulled)
            except docker.errors.APIError:
                pass  # still in use: the engine refuses, which is what we want

    def _create(self, image: str, labels: dict[str, str], old_attrs: dict[str, Any] | None,
                settings: dict[str, Any], name: str) -> Any:
        """A container running image, created (not started) under `name` with everything the
        operator set on `old_attrs` (an inspected container; None: Docker's defaults), `settings`
        (a target's rollout.toml settings) on top and `labels` over all (rules:
        rollout.targets.docker.spec). Raises UserError when the engine refuses the create or a
        network connect (a 4xx: the settings), docker.errors.APIError when it fails (a 5xx, say a
        full disk) and requests' ConnectionError when it is gone; no container is left behind.
        """
        spec = create_spec(image, labels, old_attrs, self._image_config(old_attrs), settings,
                           engine_name=self._engine_name(old_attrs))
        api = self.client.api
        try:
            created = api.create_container_from_config(spec.body, name)
        except docker.errors.APIError as exc:
            if exc.is_server_error():
                raise
            raise UserError(f"target {self.name}: cannot create container: {short_reason(exc)}") from None
        try:
            for network, endpoint in spec.more_networks.items():
                # POST /networks/{id}/connect with the EndpointSettings as inspected: the SDK's
                # connect_container_to_network rebuilds them and cannot pass links as a list.
                response = api._post_json(api._url("/networks/{0}/connect", network),  # noqa: SLF001
                                          data={"Container": created["Id"], "EndpointConfig": endpoint})
                try:
                    api._raise_for_status(response)  # noqa: SLF001
                except docker.errors.APIError as exc:
                    if exc.is_server_error():
                        raise
                    raise UserError(f"target {self.name}: cannot connect the new container to network {network}:"
                                    f" {short_reason(exc)}") from None
            return self.client.containers.get(created["Id"])
        except BaseException:
            _remove_quietly(api, created["Id"])
            raise

    def _image_config(self, container: dict[str, Any] | None) -> dict[str, Any]:
        """The Config of container's image ({} without a container, or when its image is gone)."""
        if container is None:
            return {}
        try:
            return self._engine(lambda: self.client.api.inspect_image(container["Image"])).get("Config") or {}
        except docker.errors.ImageNotFound:
            return {}

    def _engine_name(self, container: dict[str, Any] | None) -> str | None:
        """The engine's host name, which a `--network host` container has as hostname unless told otherwise."""
        if container is None or container["HostConfig"].get("NetworkMode") != "host":
            return None
        return self._engine(lambda: self.client.api.info()).get("Name")


@dataclass(frozen=True)
class _Replaced:
    """The container an apply replaces, as it was before that apply: what stop() brings back."""

    id: str
    was_up: bool  # running, restarting or paused: stop() starts it again
    restart_policy: dict[str, Any]  # HostConfig.RestartPolicy, before retiring set it to "no"
    auto_remove: bool  # `--rm`: the engine removes it once it is stopped
    attrs: dict[str, Any]  # its `docker inspect`, to create it again once the engine removed it

    @classmethod
    def of(cls, container: Any) -> "_Replaced":
        attrs = copy.deepcopy(container.attrs)
        return cls(container.id, container.status in ("running", "restarting", "paused"), _restart_policy(container),
                   bool((attrs.get("HostConfig") or {}).get("AutoRemove")), attrs)


@dataclass
class _Beside:
    """A release an apply started (or found running) on a slot beside the live container (traffic)."""

    slot: int  # the host port it listens on
    container_id: str
    previous_id: str | None  # the live container it replaces (None: none, or itself)
    upstreams: list[str]  # what the router sent traffic to before: where a failure switches back
    started: bool  # started by this apply (False: it already ran there)
    switched: bool = False  # the router's traffic moved to it


MASK = "***"
MIN_MASKED = 4  # characters: shorter values ("1", "on", "yes") would mask half the log and hide nothing


def masked_logs(client: Any, container: Any, lines: int) -> str:
    """The last `lines` lines (stdout and stderr) of container (a Docker SDK Container) with the
    values of its environment masked (mask_env; its image's own Env is public). The docker and
    compose kinds' logs(). Raises what the SDK raises (NotFound: it is gone; ConnectionError)."""
    raw = container.logs(tail=lines)
    try:
        image_env = (client.api.inspect_image(container.attrs["Image"]).get("Config") or {}).get("Env") or []
    except docker.errors.ImageNotFound:
        image_env = []  # its image is gone: mask every value, the image's own too
    return mask_env(raw.decode("utf-8", "replace"), container.attrs["Config"].get("Env") or [], image_env)


def mask_env(text: str, env: list[str], image_env: list[str]) -> str:
    """text with every value of the container's environment (["NAME=VALUE", ...]) replaced by ***,
    except those the image itself sets (public: anyone who pulls it sees them, e.g. PATH) and values
    shorter than MIN_MASKED characters. Longest first, so a value containing another is masked whole."""
    public = set(image_env)
    values = {item.partition("=")[2] for item in env if item not in public}
    for value in sorted((v for v in values if len(v) >= MIN_MASKED), key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


_WARNED_COMPOSE: set[tuple[str, str]] = set()  # (engine, container) already warned about in this process


def _warn_if_compose(container: Any, target: str, where: str) -> None:
    """Warn once per process when the container a docker target moves is managed by Compose (its
    com.docker.compose.project/service labels, which a deploy carries over): the next `docker compose
    up` of that project recreates it from the image in the compose file, undoing the pinned digest."""
    labels = (container.labels or {}) if container is not None else {}
    project, service = (one_line(labels.get(f"com.docker.compose.{key}") or "", 80) for key in ("project", "service"))
    if not project or not service or (where, container.name) in _WARNED_COMPOSE:
        return
    _WARNED_COMPOSE.add((where, container.name))
    log.warning("target %s: container %s is managed by Compose (project %s, service %s): the next `docker compose"
                " up` of that project recreates it from its compose file's image, undoing this deploy; use"
                ' kind = "compose" with service = "%s" (README: Compose targets)', target, container.name,
                project, service, service)


def _slot_of(container: Any) -> int | None:
    """The slot a container was created for (its rollout.slot label), None without one."""
    text = (container.labels or {}).get(LABEL_SLOT) or ""
    return int(text) if text.isascii() and text.isdigit() else None


def settings_hash(settings: dict[str, Any]) -> str:
    """"sha256:<64 hex>" of a target's rollout.toml settings as a container is created from them
    (slot included): the value of its LABEL_SETTINGS label. Keys in any order hash the same;
    `host` is left out (where the engine is, not what the container is: the same engine spelled
    two ways must not count as an edit)."""
    what = {key: value for key, value in settings.items() if key != "host"}
    text = json.dumps(what, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _reusable(container: Any, release: Release, settings: dict[str, Any]) -> bool:
    """Whether an existing container of release.image may run the release instead of a new one.

    Only a container created by one of the healthy entries of that digest (release.trusted, by its
    LABEL_ENTRY), never one a failed entry created. A revert puts back what ran, as it ran (its
    settings too: the new ones may be what failed); with no such container, a new one from the
    current rollout.toml. A forward deploy applies the current rollout.toml: only a container
    created from these very settings (LABEL_SETTINGS; one created before that label existed is
    taken as it is, since its settings cannot be compared), so an edit is never left out."""
    labels = container.labels or {}
    if _entry_of(container) not in release.trusted:
        return False
    # A container created before the settings label existed: its settings cannot be compared.
    return release.revert or labels.get(LABEL_SETTINGS) in (None, settings_hash(settings))


def _entry_of(container: Any) -> int | None:
    """The ledger entry that created container (its rollout.entry label), None without one."""
    text = (container.labels or {}).get(LABEL_ENTRY) or ""
    return int(text) if text.isascii() and text.isdigit() else None


@dataclass(frozen=True)
class _Change:
    """What apply's first step decided, before anything the app runs was touched."""

    old: Any  # the container holding the name (None: none)
    replaced: _Replaced | None  # old as it was
    before: str | None  # the image old was created from, for the ledger
    container: Any  # the container that takes the name: created, or a kept spare
    spare: Any  # the kept container taken back (None: created)
    retired: list[Any]  # the retired containers, most recently retired first
    policy: dict[str, Any] | None  # the restart policy container gets before it starts (None: its own)


def _restart_policy(container: Any) -> dict[str, Any]:
    """container's restart policy as the engine reports it, e.g. {"Name": "on-failure", "MaximumRetryCount": 3}."""
    policy = container.attrs["HostConfig"].get("RestartPolicy") or {}
    return {"Name": policy.get("Name") or "no", "MaximumRetryCount": int(policy.get("MaximumRetryCount") or 0)}


def _never_started(container: Any) -> bool:
    """A container the engine never started (State.StartedAt is Go's zero time)."""
    return str(container.attrs["State"].get("StartedAt") or "").startswith("0001-")


def _remove_quietly(api: Any, container_id: str) -> None:
    """Remove a container rollout has just created, while already handling an error: that error is what counts."""
    try:
        api.remove_container(container_id, force=True)
    except Exception:  # noqa: BLE001 - best effort; a leftover NAME.rollout-new-* is pruned by the next apply
        pass


def _may_come_back(container: Any) -> bool:
    """A retired container that runs, or that the engine may start again by itself."""
    return container.status not in ("exited", "created", "dead") or _restart_policy(container) != NO_RESTART


def _is_image(value: str) -> bool:
    try:
        checked_image(value, "", ValueError)
    except ValueError:
        return False
    return True


def _timestamp_ns(text: str) -> int:
    """Nanoseconds since the epoch from the engine's RFC 3339 time (nanosecond precision)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not match:
        return 0
    whole, fraction, zone = match.groups()
    seconds = dt.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone)).timestamp()
    return int(seconds) * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])
