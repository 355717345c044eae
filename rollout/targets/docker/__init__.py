"""The docker target kind: one named container on a Docker engine (local socket, tcp/https, ssh, Docker context).

Modules by job: target (DockerTarget: prepare, apply, stop), watch (DockerWatch: verification
from the engine's events and state), endpoint (where the engine is, Docker contexts, connecting),
engine (retried engine calls), ssh (the SDK's ssh transport, loaded only for ssh:// hosts),
spec (the create body that carries everything `docker run` set).
"""

from rollout.targets.docker.ssh import import_docker_without_paramiko

# Before any module of this package imports the SDK (they all load after this package's __init__).
import_docker_without_paramiko()

from rollout.targets.docker.endpoint import Endpoint, connect, resolve_endpoint  # noqa: E402
from rollout.targets.docker.target import DockerTarget  # noqa: E402
from rollout.targets.docker.watch import DockerWatch  # noqa: E402

__all__ = ["DockerTarget", "DockerWatch", "Endpoint", "connect", "resolve_endpoint"]
