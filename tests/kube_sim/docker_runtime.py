"""Runs pods' containers on the local Docker engine, pulling from the real registry."""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from .kubelet import Probe, PullResult, normalized_repository, never_pull_message
from .store import Obj

LABEL_OWNER = "kube-sim.owner"
LABEL_POD = "kube-sim.pod"
# The kubelet learns that a container runs from its PLEG relist, once a second; a container
# that dies at start (e.g. `exit 1`) is never seen running, so it must not flash Ready.
PLEG_RELIST_SECONDS = 1.0


def owner_label() -> str:
    return f"kube-sim-{os.getpid()}"


def split_reference(image: str) -> tuple[str, str]:
    """repository and tag-or-digest, with `latest` as the default tag."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, "latest"


def _parse_docker_time(text: str) -> float:
    # Docker gives nanoseconds: 2024-01-01T00:00:00.123456789Z
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", text or "")
    if not match or match.group(1).startswith("0001"):
        return 0.0
    return dt.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()


@dataclass
class DockerHandle:
    container: Container
    started: float


class DockerRuntime:
    def __init__(self) -> None:
        self.client = docker.from_env()
        self.client.ping()
        self.owner = owner_label()
        self.lock = threading.Lock()

    def _image_id(self, image: Any, reference: str) -> str:
        """imageID as containerd reports it: `docker.io/library/x@sha256:...` (the engine writes
        Docker Hub names short in RepoDigests), or the image's own ID when it has no digest."""
        repository = normalized_repository(split_reference(reference)[0])
        for digest in image.attrs.get("RepoDigests") or []:
            name, _, manifest = digest.partition("@")
            if normalized_repository(name) == repository and ("@" not in reference or reference.endswith(manifest)):
                return f"{repository}@{manifest}"
        return str(image.id)

    def pull(self, image: str, policy: str) -> PullResult:
        if policy in ("IfNotPresent", "Never"):
            try:
                local = self.client.images.get(image)
                return PullResult(True, image_id=self._image_id(local, image))
            except docker.errors.ImageNotFound:
                if policy == "Never":
                    return PullResult(False, message=never_pull_message(image), reason="ErrImageNeverPull")
            except docker.errors.APIError as error:
                return PullResult(False, message=str(error.explanation or error))
        repository, tag = split_reference(image)
        try:
            pulled = self.client.images.pull(repository, tag=tag)
        except docker.errors.APIError as error:
            explanation = error.explanation or str(error)
            return PullResult(False, message=f"rpc error: code = Unknown desc = {explanation}")
        except Exception as error:  # connection trouble with the engine or registry
            return PullResult(False, message=f"rpc error: code = Unknown desc = {error}")
        if isinstance(pulled, list):
            pulled = pulled[0]
        return PullResult(True, image_id=self._image_id(pulled, image))

    def start(self, pod: Obj, container: Obj, attempt: int) -> tuple[Any, str]:
        meta = pod["metadata"]
        # The pod's uid is in the name: a StatefulSet's replacement pod has its predecessor's name,
        # and the predecessor's last dead container may still be there.
        name = f"{self.owner}-{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}-{container['name']}-{attempt}"
        environment = {e["name"]: e.get("value", "") for e in container.get("env") or [] if "name" in e}
        created = self.client.containers.run(
            container["image"],
            command=container.get("args"),
            entrypoint=container.get("command"),
            environment=environment,
            working_dir=container.get("workingDir"),
            name=name,
            detach=True,
            network_mode="none",
            labels={LABEL_OWNER: self.owner, LABEL_POD: f"{meta['namespace']}/{meta['name']}"},
        )
        return DockerHandle(created, time.monotonic()), f"docker://{created.id}"

    def probe(self, handle: DockerHandle) -> Probe:
        try:
            handle.container.reload()
        except docker.errors.NotFound:
            return Probe(False, exit_code=137)
        state = handle.container.attrs.get("State") or {}
        if state.get("Running") or state.get("Status") in ("created", "restarting"):
            health = (state.get("Health") or {}).get("Status")
            if health is None and time.monotonic() - handle.started < PLEG_RELIST_SECONDS:
                health = "starting"
            return Probe(True, health)
        return Probe(False, exit_code=int(state.get("ExitCode", 0)), finished_at=_parse_docker_time(state.get("FinishedAt", "")))

    def signal(self, handle: DockerHandle) -> None:
        """The image's STOPSIGNAL, else SIGTERM, as the runtime's StopContainer sends it."""
        stop_signal = (handle.container.attrs.get("Config") or {}).get("StopSignal") or "SIGTERM"
        try:
            handle.container.kill(signal=stop_signal)
        except docker.errors.APIError:
            pass  # not running any more

    def logs(self, handle: DockerHandle) -> str:
        return handle.container.logs(stdout=True, stderr=True).decode("utf-8", "replace")

    def remove(self, handle: DockerHandle) -> None:
        try:
            handle.container.remove(force=True)  # SIGKILL if still running
        except docker.errors.APIError:
            pass

    def cleanup(self) -> None:
        """Removes every container this simulator process started."""
        remove_containers(self.client, self.owner)


def remove_containers(client: docker.DockerClient, owner: str) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{LABEL_OWNER}={owner}"}):
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass
