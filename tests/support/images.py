"""The test bed's images as the registry names them."""

from __future__ import annotations

from typing import Any


def registry_digest(docker_client: Any, image: str, tag: str) -> str:
    """The registry digest (sha256:...) of IMAGE:TAG as pulled by the test bed, from the engine's RepoDigests."""
    pulled = docker_client.images.get(f"{image}:{tag}")
    return next(d.split("@")[1] for d in pulled.attrs["RepoDigests"] if d.startswith(image + "@"))
