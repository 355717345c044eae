"""Is this build an image the registry already has, and if not, what differs: image IDs and layers.

An image is identified here by its image ID, the digest of its config (image-spec config.md):
the config lists every layer's uncompressed digest (`rootfs.diff_ids`), the history, the
environment, the labels and the timestamps, so two images with the same ID are the same
image. The manifest digest is not used for this: it hashes the *compressed* layers, and a
pusher may reuse a base layer's compressed blob it finds in the registry (buildah does,
through containers/image's blob info cache) instead of compressing it again, so one image
can reach a registry under two manifest digests.

Reading a pushed image costs GETs of its manifest and config (`RegistryClient.content`),
never an upload.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from rollout.errors import RegistryUnreachable, TagNotFound
from rollout.ledger import Ledger, PushedBuild
from rollout.reference import Reference, short_digest

CANDIDATES = 5  # earlier pushes of the same inputs compared with a new build (newest first)


class Contents(Protocol):
    """What this module needs of a registry (rollout.registry.RegistryClient)."""

    def content(self, ref: Reference, digest: str, kind: str = "manifest") -> bytes:
        """The manifest or blob `digest` of ref's repository, checked; TagNotFound when absent."""
        ...


@dataclass(frozen=True)
class Pushed:
    """A pushed image as read back from its registry."""

    manifest: dict[str, Any]
    config: dict[str, Any]
    image_id: str  # the config's digest


def read_image(registry: Contents, repository: Reference, digest: str) -> Pushed | None:
    """The image `digest` of repository (an image manifest, not an index) with its config; None when
    the registry does not have it or it is an index. Raises RegistryUnreachable (exit 5) as content does."""
    try:
        manifest = json.loads(registry.content(repository, digest))
    except TagNotFound:
        return None
    except ValueError:
        raise RegistryUnreachable(f"registry {repository.registry} served {digest} as something that is not JSON") from None
    config_digest = (manifest.get("config") or {}).get("digest") if isinstance(manifest, dict) else None
    if not isinstance(config_digest, str):
        return None  # an index (several platforms): not what one build produces
    try:
        config = json.loads(registry.content(repository, config_digest, "blob"))
    except TagNotFound:
        return None
    except ValueError:
        raise RegistryUnreachable(f"registry {repository.registry} served config {config_digest} as something that"
                                  " is not JSON") from None
    return Pushed(manifest, config, config_digest)


def same_image(ledger: Ledger, registry: Contents, app: str, repository: Reference, build_key: str,
               image_id: str) -> tuple[str | None, str] | None:
    """(tag, manifest digest) of an image already pushed that is this build (same image ID), else None.

    Looks at the app's current entry first, then the newest CANDIDATES pushes with the same
    build key, as the ledger knows them (a shared ledger: every runner's). Costs two GETs per
    image looked at, stopping at the first match.
    """
    seen: set[str] = set()
    candidates: list[tuple[str | None, str]] = []
    current = ledger.current(app)
    if current is not None and current.digest:
        candidates.append((current.tag, current.digest))
    same_inputs = [b for b in ledger.pushed_builds(app) if b.build_key == build_key]
    candidates += [(b.tag, b.digest) for b in reversed(same_inputs[-CANDIDATES:])]
    for tag, digest in candidates:
        if digest in seen:
            continue
        seen.add(digest)
        pushed = read_image(registry, repository, digest)
        if pushed is not None and pushed.image_id == image_id:
            return tag, digest
    return None


def last_two_differing(builds: list[PushedBuild]) -> tuple[PushedBuild, PushedBuild] | None:
    """The last two pushes (older, newer) of the same inputs (build key) whose digests differ, newest such pair."""
    for index in range(len(builds) - 1, -1, -1):
        newer = builds[index]
        for older in reversed(builds[:index]):
            if older.build_key == newer.build_key and older.digest != newer.digest:
                return older, newer
    return None


def layer_steps(config: dict[str, Any]) -> list[str]:
    """The Dockerfile step that made each layer, in layer order, from the config's history (entries
    without `empty_layer`); "layer N" where the history does not say."""
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    steps = [str(h.get("created_by") or "") for h in config.get("history") or [] if not h.get("empty_layer")]
    if len(steps) != len(diff_ids):
        steps = [""] * len(diff_ids)
    return [_step(text) or f"layer {i + 1}" for i, text in enumerate(steps)]


def _step(created_by: str) -> str:
    # buildah and docker write "/bin/sh -c #(nop) COPY ..." or "/bin/sh -c echo ..." (a RUN): shown as written.
    text = created_by.strip()
    text = text.removeprefix("/bin/sh -c #(nop) ").strip()
    if text.startswith("/bin/sh -c "):
        text = "RUN " + text.removeprefix("/bin/sh -c ")
    return text[:120]


def differences(older: Pushed, newer: Pushed) -> list[str]:
    """One line per layer that differs between two images (position, the step that made it, both digests),
    then the config fields besides the layers that differ; [] when they are the same image."""
    old_ids = (older.config.get("rootfs") or {}).get("diff_ids") or []
    new_ids = (newer.config.get("rootfs") or {}).get("diff_ids") or []
    steps = layer_steps(newer.config)
    lines = []
    for i in range(max(len(old_ids), len(new_ids))):
        before = old_ids[i] if i < len(old_ids) else None
        after = new_ids[i] if i < len(new_ids) else None
        if before != after:
            step = steps[i] if i < len(steps) else f"layer {i + 1}"
            lines.append(f"layer {i + 1}/{len(new_ids)} differs ({step}): {short_digest(before) if before else 'absent'}"
                         f" -> {short_digest(after) if after else 'absent'}")
    fields = sorted(k for k in set(older.config) | set(newer.config)
                    if k != "rootfs" and older.config.get(k) != newer.config.get(k))
    if fields:
        lines.append(f"image config differs in: {', '.join(fields)}")
    return lines
