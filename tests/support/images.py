"""The test bed's registry and images (`.ci/testbed images`), and the one way tests read a digest."""

from __future__ import annotations

import os
from typing import Any

REGISTRY = os.environ.get("ROLLOUT_TEST_REGISTRY", "127.0.0.1:5000")
APP_IMAGE = f"{REGISTRY}/rollout-test/app"  # tags good1, good2, good3, checked, crash, unhealthy-http, ...


def image_names(docker_client: Any, prefix: str = "") -> list[str]:
    """Every tag and digest name the engine holds that begins with `prefix`, from one list call:
    images.list() inspects each image after listing, and fails when another test removes one in
    between (a shared engine)."""
    return [name for image in docker_client.api.images()
            for name in (image.get("RepoTags") or []) + (image.get("RepoDigests") or [])
            if name != "<none>:<none>" and name.startswith(prefix)]


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


def push_test_image(docker_client: Any, repository: str, tags: tuple[str, ...], auth: dict[str, str]) -> None:
    """Tag the test image's `tags` as REPOSITORY:TAG and push each with `auth` (the SDK's auth_config,
    e.g. {"username", "password"}) to a private registry; AssertionError on a push error."""
    for tag in tags:
        docker_client.images.get(f"{APP_IMAGE}:{tag}").tag(repository, tag)
        for line in docker_client.images.push(repository, tag, auth_config=auth, stream=True, decode=True):
            assert "error" not in line, line
