"""Docker host target: one named container, moved to an exact digest.

The old container is renamed and stopped, never deleted at once, so going back
is `docker start` of a container that already exists: no pull, no create.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import logging
import json
import os
import queue
import re
import sys
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import requests.exceptions
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential


def _import_docker_without_paramiko() -> None:
    """Import the SDK without its ssh transport: paramiko (cryptography) costs ~0.15 s per command.

    `_enable_ssh()` loads that transport when a target really is an ssh:// host.
    """
    blocked = "paramiko" not in sys.modules
    if blocked:
        sys.modules["paramiko"] = None  # type: ignore[assignment]  # makes `import paramiko` fail fast
    try:
        import docker  # noqa: F401
    finally:
        if blocked:
            del sys.modules["paramiko"]


_import_docker_without_paramiko()
import docker  # noqa: E402
import docker.errors  # noqa: E402


def _enable_ssh() -> None:
    import docker.api.client
    import docker.transport

    if not hasattr(docker.api.client, "SSHHTTPAdapter"):
        from docker.transport.sshconn import SSHConnectionPool, SSHHTTPAdapter, SSHSocket  # imports paramiko now

        SSHSocket.makefile = _ssh_makefile  # type: ignore[method-assign]
        SSHHTTPAdapter.get_connection = _ssh_pool  # type: ignore[method-assign]
        _pooled = SSHConnectionPool._get_conn
        SSHConnectionPool._get_conn = lambda pool, timeout=None: _live(_pooled(pool, timeout))  # type: ignore[method-assign]
        docker.api.client.SSHHTTPAdapter = SSHHTTPAdapter  # type: ignore[attr-defined]
        docker.transport.SSHHTTPAdapter = SSHHTTPAdapter  # type: ignore[attr-defined]


def _ssh_makefile(self: Any, mode: str) -> Any:
    """A reader of the ssh pipe that the HTTP response may close without closing the pipe,
    so the connection (one `dial-stdio`) serves the next request too."""
    if not self.proc:
        self.connect()
    reader = os.fdopen(os.dup(self.proc.stdout.fileno()), "rb")
    reader.channel = self  # what the SDK's attach/exec/log streams read from, as in its own makefile
    return reader


def _live(connection: Any) -> Any:
    """A pooled ssh connection whose ssh has exited (the engine restarted, the network dropped)
    is reconnected, not reused: the next call would fail on a dead pipe."""
    proc = getattr(connection.sock, "proc", None)
    if proc is not None and proc.poll() is not None:
        try:
            connection.close()
        except OSError:
            pass  # closing writes to the dead ssh's stdin
        connection.sock = None  # http.client connects again on the next request
    return connection


def _ssh_pool(self: Any, url: str, proxies: Any = None) -> Any:
    """One connection pool per adapter (every URL goes to the same engine), kept: the SDK
    builds a new pool, so a new ssh, for every call."""
    from docker.transport.sshconn import SSHConnectionPool

    with self.pools.lock:
        pool = self.pools.get(self.ssh_host)
        if pool is None:
            pool = SSHConnectionPool(ssh_client=self.ssh_client, timeout=self.timeout, maxsize=self.max_pool_size,
                                     host=self.ssh_host)
            self.pools[self.ssh_host] = pool
    return pool


from rollout.config import AppConfig, TargetConfig
from rollout.errors import EXIT_USAGE, ConfigError, NotApplied, TargetUnreachable, UserError, one_line
from rollout.faults import kill_point
from rollout.proxies import proxies_for
from rollout.reference import checked_digest, checked_image, repo_digests
from rollout.targets import Observation, Release, Running
from rollout.targets.container_spec import BUILTIN_NETWORKS, ROLLOUT_LABEL_PREFIX, create_spec, restart_policy

KEEP_RETIRED = 3
LABEL_ENTRY = "rollout.entry"
LABEL_TAG = "rollout.tag"
LABEL_DIGEST = "rollout.digest"
LABEL_APP = "rollout.app"
DEFAULT_STOP_TIMEOUT = 10  # seconds: the engine's when a container sets none (moby container.DefaultStopTimeout)
NO_RESTART = {"Name": "no", "MaximumRetryCount": 0}
ENGINE_RETRY_SECONDS = 20.0  # a restarting dockerd is back within seconds; longer is an outage
T = TypeVar("T")
log = logging.getLogger(__name__)
FAILURE_EVENTS = {"die", "oom", "restart", "health_status: unhealthy"}
NEW_INFIX = ".rollout-new-"  # NAME.rollout-new-<entry>-<random>: a new container before it takes the name


class DockerTarget:
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

    @property
    def where(self) -> str:
        return self.host or os.environ.get("DOCKER_HOST") or "the local socket"

    # -- connection --------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = connect(self.endpoint)  # asks the engine its API version: reachable
            except Exception as exc:  # noqa: BLE001 - the SDK raises many kinds for "no engine"
                self._client = None
                where = self.where
                if self.endpoint.host and self.endpoint.host != self.host:
                    where = f"{where} ({self.endpoint.host})"
                reason, hint = _short(exc), "start it or fix `host`"
                if (self.endpoint.host or "").startswith("ssh://"):
                    # The SDK only sees the pipe close; ssh has already said why on stderr.
                    if isinstance(exc, requests.exceptions.ConnectionError):
                        reason = "ssh closed the connection; its own message, if any, is above"
                    hint = f"check that `ssh {_ssh_destination(self.endpoint.host)} docker version` works"
                raise TargetUnreachable(
                    f"target {self.name}: Docker engine at {where} is unreachable ({reason}): {hint}"
                ) from None
        return self._client

    # -- Target protocol ---------------------------------------------------

    def running(self) -> Running:
        container = self._container(self.container_name)
        if container is None:
            return Running(None, None, "no container", active=False)
        image = self._configured_image(container)
        return Running(image, self._digest_of(container), container.status, active=container.status == "running")

    def prepare(self, release: Release) -> None:
        where = self.where
        try:
            _engine_call(where, lambda: self.client.images.get(release.image))
            return
        except docker.errors.ImageNotFound:
            pass
        except requests.exceptions.ConnectionError as exc:
            raise TargetUnreachable(f"target {self.name}: Docker engine at {where} is unreachable"
                                    f" ({_engine_failure(exc)}) after {ENGINE_RETRY_SECONDS:g}s of retries") from None
        try:
            _engine_call(where, lambda: self.client.api.pull(release.repository, tag=release.digest))
        except (docker.errors.APIError, requests.exceptions.ConnectionError) as exc:
            raise TargetUnreachable(f"target {self.name}: cannot pull {release.image}: {_short(exc)}") from None
        try:  # errors inside the pull's progress stream do not raise: check the result
            self.client.images.get(release.image)
        except docker.errors.ImageNotFound:
            raise TargetUnreachable(f"target {self.name}: pulling {release.image} did not produce the image") from None

    def apply(self, release: Release) -> str | None:
        """Move the container named `container` to release.image; return the image it ran before (None: none).

        Order, each step a crash-safety kill point (tests/test_crash_safety.py):
        1. the new container is created under a temporary name, the old one untouched
           (docker:created), or a kept container that already runs this release is taken back;
        2. the old container is set aside as NAME.rollout-<entry>, still running (docker:renamed);
        3. the new container takes the name, the old one is stopped as its operator configured and
           its restart policy set to "no", so the engine never brings it back (docker:stopped);
        4. the new one is started (docker:started).
        Step 1 changes nothing the app runs, so any error in it is NotApplied (see `_prepare`):
        exit 2 when the settings are the cause, else 5, no container left behind. An error from
        step 2 on propagates: the target changed, and the orchestrator reverts it, or calls
        stop() when there is nothing to revert to.
        """
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
            spare = next((c for c in retired if c.attrs["Config"]["Image"] == release.image), None)
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
        if isinstance(exc, (docker.errors.APIError, requests.exceptions.ConnectionError)):
            reason = _short(exc)
        else:
            reason = f"{type(exc).__name__}: {one_line(exc)}"
        return NotApplied(f"target {self.name}: cannot prepare the new container on the Docker engine at"
                          f" {self.where}: {reason}; {left}")

    def watch(self, release: Release) -> "DockerWatch":
        if self._started_id is None:
            raise RuntimeError("watch() before apply()")
        return DockerWatch(self.client, self._started_id, not_before_ns=self._started_at_ns,
                           where=self.where)

    def logs(self, lines: int = 20) -> str:
        if self._started_id is None:
            return ""
        try:
            raw = self.client.containers.get(self._started_id).logs(tail=lines)
        except (docker.errors.NotFound, requests.exceptions.ConnectionError):
            return ""  # gone, or the engine is: what matters is said elsewhere
        return raw.decode("utf-8", "replace")

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
        `--rm`. Raises docker.errors.APIError when the engine fails.
        """
        replaced, new_id = self._replaced, self._started_id
        if new_id is None:
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
        started: its inspected settings (container_spec rules, without `--rm`), its own labels and
        image (by the reference it was created with while that still names the same image)."""
        attrs = replaced.attrs
        image = attrs["Image"]
        reference = attrs["Config"]["Image"]
        try:
            if self.client.api.inspect_image(reference)["Id"] == image:
                image = reference
        except docker.errors.ImageNotFound:
            pass
        labels = {k: v for k, v in (attrs["Config"].get("Labels") or {}).items() if k.startswith(ROLLOUT_LABEL_PREFIX)}
        return self._create(image, labels, attrs, {}, self.container_name)

    def _found(self, container_id: str) -> Any:
        """The container with that id, or None when it is gone."""
        try:
            return self.client.containers.get(container_id)
        except docker.errors.NotFound:
            return None

    # -- helpers -------------------------------------------------------------

    def _container(self, name: str) -> Any:
        try:
            return _engine_call(self.where, lambda: self.client.containers.get(name))
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise TargetUnreachable(f"target {self.name}: cannot inspect {name}: {_short(exc)}") from None

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
            names = self.client.images.get(container.attrs["Image"]).attrs.get("RepoDigests") or []
        except docker.errors.ImageNotFound:
            return None
        known = sorted(repo_digests(names))
        ours = [digest for registry, repository, digest in known
                if (registry, repository) == (self.app.registry, self.app.repository)]
        # An image pulled under another name only (a mirror): its digest is still the content's.
        return next(iter(ours or [digest for _, _, digest in known]), None)

    def _retired(self) -> list[Any]:
        """The retired containers NAME.rollout-*, most recently retired (stopped) first.

        A new container a killed or failed rollout left under its temporary name
        (NAME.rollout-new-*) is removed here instead: it never served, so it has no revert value,
        and it must not be taken back as a kept container.
        """
        prefix = f"{self.container_name}.rollout-"
        containers = self.client.containers.list(all=True, filters={"name": prefix})
        # The name filter matches substrings: keep exact prefix matches; a container started
        # again by a revert and retired later counts as new.
        retired = []
        for container in containers:
            if container.name.startswith(self.container_name + NEW_INFIX):
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
        entry = container.labels.get(LABEL_ENTRY) or ""
        # A label is the engine's answer, and anyone may set it: only a ledger id goes into a name.
        new_name = f"{self.container_name}.rollout-{entry if entry.isascii() and entry.isdigit() else container.short_id}"
        if new_name in taken:
            new_name = f"{new_name}-{container.short_id}"
        container.reload()
        if container.status == "restarting":
            self._stop(container)
        try:
            container.rename(new_name)
        except docker.errors.APIError:
            container.reload()
            if container.status != "restarting":
                raise
            self._stop(container)  # it crashed and began restarting between our look and the rename
            container.rename(new_name)
        kill_point("docker:renamed")

    def _create_runnable(self, release: Release, old: Any) -> Any:
        """The new container, created (not started) under a temporary name, checked that it can run.

        "Cannot run": the engine refuses the create (an invalid port, a missing volume driver,
        memory below its minimum...: UserError with the engine's own words), or a network it would
        join does not exist (this engine accepts such a create and fails only the start, moby
        20.10: NotApplied, exit 2). Either way no container is left behind. The temporary name
        starts like a retired container's; one a killed rollout left is pruned (`_retired`).
        """
        name = f"{self.container_name}{NEW_INFIX}{release.entry_id}-{uuid.uuid4().hex[:6]}"
        labels = {LABEL_APP: self.app.name, LABEL_ENTRY: str(release.entry_id),
                  LABEL_TAG: release.tag or "", LABEL_DIGEST: release.digest}
        old_attrs = old.attrs if old is not None else None
        container = self._create(release.image, labels, old_attrs, self.settings, name)
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
                self.client.networks.get(name)
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
        in_use = {summary.get("Image") for summary in self.client.api.containers(all=True)}
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
        rollout.targets.container_spec). Raises UserError when the engine refuses the create or a
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
            raise UserError(f"target {self.name}: cannot create container: {_short(exc)}") from None
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
                                    f" {_short(exc)}") from None
            return self.client.containers.get(created["Id"])
        except BaseException:
            _remove_quietly(api, created["Id"])
            raise

    def _image_config(self, container: dict[str, Any] | None) -> dict[str, Any]:
        """The Config of container's image ({} without a container, or when its image is gone)."""
        if container is None:
            return {}
        try:
            return self.client.api.inspect_image(container["Image"]).get("Config") or {}
        except docker.errors.ImageNotFound:
            return {}

    def _engine_name(self, container: dict[str, Any] | None) -> str | None:
        """The engine's host name, which a `--network host` container has as hostname unless told otherwise."""
        if container is None or container["HostConfig"].get("NetworkMode") != "host":
            return None
        return self.client.api.info().get("Name")


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


@dataclass(frozen=True)
class Endpoint:
    """Where a Docker engine answers: a DOCKER_HOST-style URL (None: $DOCKER_HOST or the local socket)."""

    host: str | None
    tls: docker.tls.TLSConfig | None = None


def resolve_endpoint(host: str | None, docker_config: str | None = None) -> Endpoint:
    """`host` as given, or for "context:NAME" the docker endpoint of that Docker context.

    Contexts are read the way the docker CLI stores them:
    $DOCKER_CONFIG/contexts/meta/<sha256 of NAME>/meta.json holds Endpoints.docker.Host, and
    contexts/tls/<sha256 of NAME>/docker/{ca,cert,key}.pem the TLS material, if any.
    """
    if not host or not host.startswith("context:"):
        return Endpoint(host)
    name = host[len("context:"):].strip()
    if name == "default":
        return Endpoint(os.environ.get("DOCKER_HOST") or None)
    store = Path(docker_config or os.environ.get("DOCKER_CONFIG") or "~/.docker").expanduser() / "contexts"
    key = hashlib.sha256(name.encode()).hexdigest()
    meta_file = store / "meta" / key / "meta.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        endpoint = meta["Endpoints"]["docker"]
        url = endpoint["Host"]
    except FileNotFoundError:
        known = sorted(_context_names(store)) or ["none"]
        raise ConfigError(f"host = {host!r}: no Docker context {name!r} in {store} (known: {', '.join(known)}):"
                          f" create it with `docker context create {name} --docker host=...` or set DOCKER_CONFIG") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"host = {host!r}: cannot read {meta_file} ({type(exc).__name__}: {exc}):"
                          " recreate the context with `docker context create`") from None
    if not isinstance(url, str) or not url:
        raise ConfigError(f"host = {host!r}: context {name!r} has no docker endpoint host in {meta_file}")
    tls_dir = store / "tls" / key / "docker"
    tls = None
    if tls_dir.is_dir():
        ca, cert, client_key = (tls_dir / "ca.pem", tls_dir / "cert.pem", tls_dir / "key.pem")
        tls = docker.tls.TLSConfig(
            client_cert=(str(cert), str(client_key)) if cert.exists() and client_key.exists() else None,
            ca_cert=str(ca) if ca.exists() else None,
            verify=not endpoint.get("SkipTLSVerify", False),
        )
    return Endpoint(url, tls)


def _context_names(store: Path) -> list[str]:
    names = []
    for meta_file in (store / "meta").glob("*/meta.json"):
        try:
            names.append(str(json.loads(meta_file.read_text(encoding="utf-8"))["Name"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return names


def connect(endpoint: Endpoint, timeout: int = 30) -> docker.DockerClient:
    """A client for endpoint (timeout in seconds per request); ssh:// goes through the system `ssh`
    (agent, ~/.ssh/config, known_hosts). Raises what the SDK raises when the engine does not answer."""
    if endpoint.host and endpoint.host.startswith("ssh://"):
        _enable_ssh()
        options: dict[str, Any] = {"base_url": endpoint.host, "use_ssh_client": True}
    elif endpoint.host:
        options = {"base_url": endpoint.host, "tls": endpoint.tls or False}
    else:
        options = docker.utils.kwargs_from_env()  # $DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH
    # The SDK asks the engine for its API version as soon as it is built; build it with a
    # placeholder version first, so the connection is set up before the first request.
    api = docker.APIClient(timeout=timeout, version=docker.constants.MINIMUM_DOCKER_API_VERSION, **options)
    _route(api)
    if options.get("use_ssh_client") and urllib.parse.urlparse(endpoint.host).port is None:
        # docker-py writes port 22 into `ssh -p`, which would override a Port from ~/.ssh/config.
        adapter = api._custom_adapter  # noqa: SLF001 - the SDK offers no other way to leave the port to ssh
        adapter.ssh_host = adapter.ssh_host.removesuffix(":22")
    api._version = api.version(api_version=False)["ApiVersion"]  # noqa: SLF001 - what version="auto" does
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = api
    return client


def _route(api: docker.APIClient) -> None:
    """Which proxy the engine's requests take: requests' own reading of the environment is off
    (it would send a loopback engine through HTTP(S)_PROXY, and read ~/.netrc). A local socket or an
    ssh pipe takes none; a tcp:// or https:// engine the one the docker CLI gives it, by Go's rule
    (rollout.proxies; go-connections sockets.ConfigureTransport sets http.ProxyFromEnvironment for
    tcp hosts): never for loopback, NO_PROXY honoured."""
    api.trust_env = False
    if not api.base_url.startswith("http+docker:"):
        api.proxies = proxies_for(api.base_url)


def _ssh_destination(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    where = f"{parsed.username}@{parsed.hostname}" if parsed.username else str(parsed.hostname)
    return f"-p {parsed.port} {where}" if parsed.port else where


class DockerWatch:
    """Health of one container, woken by the engine's event stream."""

    def __init__(self, client: docker.DockerClient, container_id: str, not_before_ns: int,
                 where: str = "the local socket") -> None:
        self.client = client
        self.where = where
        self.container_id = container_id
        self.not_before_ns = not_before_ns
        self.events: queue.Queue[str] = queue.Queue()
        self.failure: str | None = None
        self.restart_count: int | None = None
        # Replay from a little before the start, so a crash in the first instant is not missed.
        since = f"{not_before_ns // 1_000_000_000 - 2}"
        self._stream = client.events(since=since, filters={"container": container_id, "type": "container"},
                                     decode=True)
        self._thread = threading.Thread(target=self._pump, name=f"events-{container_id[:12]}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for event in self._stream:
                status = event.get("status") or event.get("Action") or ""
                if status in FAILURE_EVENTS and int(event.get("timeNano", 0)) >= self.not_before_ns:
                    self.events.put(_describe_event(status, event))
        except Exception:  # noqa: BLE001 - the stream ends when closed or when the engine goes away
            self.events.put("")

    def wait(self, seconds: float) -> None:
        try:
            event = self.events.get(timeout=seconds)
        except queue.Empty:
            return
        if event and self.failure is None:
            self.failure = event

    def observe(self) -> Observation:
        while not self.events.empty():
            self.wait(0)
        if self.failure:
            return Observation(False, self.failure)
        try:
            attrs = _engine_call(self.where, lambda: self.client.api.inspect_container(self.container_id))
        except docker.errors.NotFound:
            return Observation(False, "container was removed")
        except requests.exceptions.ConnectionError as exc:
            return Observation(False, f"Docker engine at {self.where} is unreachable ({_engine_failure(exc)})")
        state = attrs["State"]
        restarts = attrs.get("RestartCount", 0)
        if self.restart_count is None:
            self.restart_count = restarts
        if restarts > self.restart_count or state.get("Restarting"):
            return Observation(False, f"container restarted (restart count {restarts})")
        if state.get("OOMKilled"):
            return Observation(False, "container was killed: out of memory")
        if state.get("Paused"):
            return Observation(False, "container was paused")
        if state.get("Status") != "running":
            return Observation(False, f"container exited with code {state.get('ExitCode')}")
        health = (state.get("Health") or {}).get("Status")
        if health == "unhealthy":
            return Observation(False, "HEALTHCHECK reports unhealthy")
        if health == "starting":
            return Observation(False, detail="running, HEALTHCHECK starting")
        return Observation(True, detail="running" + (", HEALTHCHECK healthy" if health else ""))

    def close(self) -> None:
        try:
            self._stream.close()
        except Exception:  # noqa: BLE001 - closing a dead stream is fine
            pass


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


def _describe_event(status: str, event: dict[str, Any]) -> str:
    attributes = (event.get("Actor") or {}).get("Attributes") or {}
    if status == "die":
        return f"container exited with code {attributes.get('exitCode', '?')}"
    if status == "oom":
        return "container was killed: out of memory"
    if status == "restart":
        return "container restarted"
    return "HEALTHCHECK reports unhealthy"


def _is_image(value: str) -> bool:
    try:
        checked_image(value, "", ValueError)
    except ValueError:
        return False
    return True


def _engine_call(where: str, call: Callable[[], T]) -> T:
    """call(), retried with back-off for a while when the engine's socket refuses or drops the connection."""

    def say_so(state: Any) -> None:
        if state.attempt_number == 1:
            log.warning("Docker engine at %s is unreachable (%s); retrying for up to %gs", where,
                        _engine_failure(state.outcome.exception()), ENGINE_RETRY_SECONDS)

    retrying = Retrying(stop=stop_after_delay(ENGINE_RETRY_SECONDS), wait=wait_exponential(multiplier=0.25, max=2),
                        retry=retry_if_exception_type(requests.exceptions.ConnectionError), before_sleep=say_so,
                        reraise=True)
    return retrying(call)


def _engine_failure(exc: BaseException) -> str:
    text = str(exc)
    if "FileNotFoundError" in text or "No such file" in text:
        return "its socket is gone"
    if "refused" in text.lower():
        return "connection refused"
    return "connection lost"


def _timestamp_ns(text: str) -> int:
    """Nanoseconds since the epoch from the engine's RFC 3339 time (nanosecond precision)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not match:
        return 0
    whole, fraction, zone = match.groups()
    seconds = dt.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone)).timestamp()
    return int(seconds) * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])


def _short(exc: BaseException) -> str:
    """The engine's own explanation when it gave one."""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return one_line(str(exc.explanation))
    return one_line(exc)
