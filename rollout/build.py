"""What identifies a build: the build key, and the commit of its context.

An image built twice from the same inputs still gets a new digest (its config
carries timestamps), so "did anything change?" is answered from the inputs: the
digests of the Dockerfile's external base images (rollout.dockerfile), the hash of
the files Docker would send as build context with the Dockerfile text and build
arguments (rollout.build_context), the target stage and the platform. Their hash
is the build key recorded in the ledger. The tag a new build gets is rollout.tags;
the settings are `[apps.NAME.build]` (rollout.config.BuildSettings).

Nothing here talks to a registry or an engine; rollout.rebuild does the I/O.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rollout.build_context import ContextDigest, hash_context
from rollout.config import AppConfig, BuildSettings, require_build
from rollout.dockerfile import Dockerfile, read_dockerfile
from rollout.reference import Reference, short_digest


class Resolver(Protocol):
    """What the build needs of a registry (rollout.registry.RegistryClient)."""

    def resolve(self, ref: Reference) -> str:
        """The digest ref's tag points at; TagNotFound, RegistryUnreachable (exit 5) otherwise."""

    def exists(self, ref: Reference) -> bool:
        """Whether the registry has ref's manifest (one HEAD); raises as resolve does."""
        ...


@dataclass(frozen=True)
class Inputs:
    """Everything that decides an app's build, as checked just now."""

    settings: BuildSettings
    dockerfile: Dockerfile
    bases: tuple[tuple[Reference, str], ...]  # (base image as written, digest), Dockerfile order
    context: ContextDigest
    build_key: str

    @property
    def base_digests(self) -> dict[str, str]:
        """{base image as written: "sha256:..." digest}."""
        return {str(ref): digest for ref, digest in self.bases}

    def to_json(self) -> dict[str, Any]:
        """The JSON shape `rebuild --json` and `check --json` print under "inputs"/"build"."""
        return {"build_key": self.build_key, "base_digests": self.base_digests, "context_digest": self.context.digest,
                "context_files": self.context.files, "target": self.settings.target, "platform": self.settings.platform}

    def describe(self) -> str:
        """One line for people: the bases with short digests, the context's size and hash, the key."""
        bases = ", ".join(f"{ref} = {short_digest(digest)}" for ref, digest in self.bases) or "no external base image"
        return f"bases {bases}; context {self.context.files} files {short_digest(self.context.digest)}; key {short_digest(self.build_key)}"


def gather_inputs(app: AppConfig, config_path: Path | None, registry: Resolver) -> Inputs:
    """Resolve every external base with one HEAD (a FROM already pinned by digest costs none) and hash the context.

    Raises ConfigError (exit 2) when the app has no build settings or its context or
    Dockerfile is missing, UserError for a Dockerfile that cannot be parsed, and what
    registry.resolve raises (RegistryUnreachable, exit 5; TagNotFound).
    """
    settings = require_build(app, config_path)
    dockerfile = read_dockerfile(settings.dockerfile, settings.build_args)
    bases = tuple((ref, ref.digest or registry.resolve(ref)) for ref in dockerfile.bases(settings.target))
    context = hash_context(settings)
    key = build_key([(str(ref), digest) for ref, digest in bases], context.digest, settings.target, settings.platform)
    return Inputs(settings, dockerfile, bases, context, key)


def build_key(base_digests: list[tuple[str, str]], context_digest: str, target: str | None, platform: str | None) -> str:
    """The build key, "sha256:<64 hex>": a hash of the base digests, the context hash, the target stage and the platform.

    base_digests: (base image as written, "sha256:..." digest) pairs in Dockerfile order;
    context_digest: rollout.build_context.hash_context's digest. Two builds with the same
    key have the same inputs; the key is stored in the ledger and as the image label
    `rollout.build-key`, so its material must never change shape.
    """
    material = json.dumps({"bases": [list(pair) for pair in base_digests], "context": context_digest,
                           "target": target or "", "platform": platform or ""}, sort_keys=True)
    return "sha256:" + hashlib.sha256(material.encode()).hexdigest()


def git_commit(directory: Path, short: bool = True) -> str | None:
    """The commit checked out in directory's git work tree (abbreviated with `short`, else 40 hex
    digits); None when it is not one, git is missing or takes over 10 seconds."""
    command = ["git", "-C", str(directory), "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None
