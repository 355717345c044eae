"""The test bed's registry and images (`.ci/testbed images`), and the one way tests read a digest."""

from __future__ import annotations

import os
from typing import Any

REGISTRY = os.environ.get("ROLLOUT_TEST_REGISTRY", "127.0.0.1:5000")
APP_IMAGE = f"{REGISTRY}/rollout-test/app"  # tags good1, good2, good3, checked, crash, unhealthy-http, ...


def digest_of(docker_client: Any, tag: str, image: str = APP_IMAGE) -> str:
    """The registry digest (`sha256:<64 hex>`) of IMAGE:TAG, with the engine as the oracle.

    Read from the engine's RepoDigests when the image is pulled (no registry request, so tests
    that count requests through a proxy are not disturbed), else asked of the registry by the
    engine (`docker manifest`-like: GET /distribution/{name}/json). Raises docker.errors.APIError
    when the registry does not have the tag.
    """
    import docker

    try:
        pulled = docker_client.images.get(f"{image}:{tag}")
    except docker.errors.ImageNotFound:
        return str(docker_client.images.get_registry_data(f"{image}:{tag}").id)
    return next(d.split("@")[1] for d in pulled.attrs["RepoDigests"] if d.startswith(image + "@"))
