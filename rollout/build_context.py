"""The build context: exactly the files Docker would send, their hash, and the tar that is sent.

The hash covers each path, mode and content (plus the Dockerfile text and the build
args), so "did the context change?" has an answer that does not depend on file
times. The file list follows Docker's .dockerignore rules (moby/patternmatcher, read
as moby's dockerignore.ReadAll reads it), through the Docker SDK's walker made
case-sensitive as Docker is on Linux.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rollout.config import BuildSettings
from rollout.errors import UserError
from rollout.targets.docker.ssh import import_docker_without_paramiko

# The SDK loaded here first (check, rebuild) must come without paramiko too, as the docker
# target kind loads it (rollout.targets.docker.ssh): importing it costs every such command.
import_docker_without_paramiko()

from docker.utils.build import Pattern, PatternMatcher  # noqa: E402
from docker.utils.fnmatch import fnmatchcase  # noqa: E402

# The Dockerfile rollout sends, with every external FROM pinned to a digest. It is
# listed in the sent .dockerignore, so the engine drops it after reading it and a
# `COPY . ...` never copies it (the way `docker build -f -` does it).
PINNED_DOCKERFILE = ".rollout.Dockerfile"
HASH_CHUNK = 1 << 20  # bytes read at a time while hashing


class _CaseSensitivePattern(Pattern):
    # The SDK lower-cases both sides; Docker's Go matcher is case-sensitive on Linux.
    def match(self, filepath: str) -> bool:
        return fnmatchcase(filepath.replace(os.sep, "/"), self.cleaned_pattern)


class IgnoreMatcher(PatternMatcher):
    """The Docker SDK's .dockerignore walker (same `**`, `!` and parent-directory rules as Docker), case-sensitive."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = [p for p in (_CaseSensitivePattern(p) for p in patterns) if p.dirs]
        self.patterns.append(_CaseSensitivePattern("!.dockerignore"))


def read_dockerignore(context: Path) -> list[str]:
    """The context's .dockerignore patterns as Docker's dockerignore.ReadAll reads them ([] without one):
    comments and blank lines dropped, each pattern cleaned, a leading / removed, `!` kept."""
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    patterns = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = os.path.normpath(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append(("!" if invert else "") + pattern)
    return patterns


def context_files(context: Path, dockerfile: Path) -> list[str]:
    """Relative paths (files, directories, symlinks) Docker would send, sorted.

    Like the Docker CLI, the Dockerfile and .dockerignore are always sent, even when
    .dockerignore lists them (the engine then drops them after reading).
    """
    patterns = read_dockerignore(context)
    try:
        relative = dockerfile.relative_to(context).as_posix()
        patterns.append(f"!{relative}")
    except ValueError:
        pass  # a Dockerfile outside the context is not part of it
    return sorted(path.replace(os.sep, "/") for path in IgnoreMatcher(patterns).walk(str(context)))


@dataclass(frozen=True)
class ContextDigest:
    """The hash of a build context ("sha256:<64 hex>") and how many paths it covers."""

    digest: str  # sha256:...
    files: int


def hash_context(settings: BuildSettings, tar_into: IO[bytes] | None = None,
                 extra_files: dict[str, bytes] | None = None) -> ContextDigest:
    """sha256 over the context's paths, modes and contents, the Dockerfile text and the build args.

    With tar_into, the same bytes that are hashed are written to a tar archive there,
    so what is built is exactly what was hashed. extra_files (the pinned Dockerfile,
    the .dockerignore to send) go into the tar only, not into the hash.
    """
    digest = hashlib.sha256()
    dockerfile_text = settings.dockerfile.read_bytes()
    digest.update(b"dockerfile\0" + _length_prefixed(dockerfile_text))
    digest.update(b"build_args\0" + json.dumps(settings.build_args, sort_keys=True).encode() + b"\0")
    tar = tarfile.open(fileobj=tar_into, mode="w", format=tarfile.PAX_FORMAT) if tar_into is not None else None
    replaced = set(extra_files or {})
    paths = context_files(settings.context, settings.dockerfile)
    try:
        for relative in paths:
            _add_path(settings.context, relative, digest, None if relative in replaced else tar)
        if tar is not None:
            for name, data in (extra_files or {}).items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, int(dt.datetime.now().timestamp())
                tar.addfile(info, io.BytesIO(data))
    finally:
        if tar is not None:
            tar.close()
    return ContextDigest("sha256:" + digest.hexdigest(), len(paths))


def _add_path(context: Path, relative: str, digest: "hashlib._Hash", tar: tarfile.TarFile | None) -> None:
    path = context / relative
    info = path.lstat()
    mode = stat.S_IMODE(info.st_mode)
    header = f"{relative}\0{mode:o}\0".encode()
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(path)
        digest.update(b"link\0" + header + _length_prefixed(target.encode()))
        if tar is not None:
            entry = tarfile.TarInfo(relative)
            entry.type, entry.linkname, entry.mode, entry.mtime = tarfile.SYMTYPE, target, mode, int(info.st_mtime)
            tar.addfile(entry)
    elif stat.S_ISDIR(info.st_mode):
        digest.update(b"dir\0" + header)
        if tar is not None:
            entry = tarfile.TarInfo(relative)
            entry.type, entry.mode, entry.mtime = tarfile.DIRTYPE, mode, int(info.st_mtime)
            tar.addfile(entry)
    elif stat.S_ISREG(info.st_mode):
        digest.update(b"file\0" + header + str(info.st_size).encode() + b"\0")
        with open(path, "rb") as handle:
            hashing = _HashingReader(handle, digest)
            if tar is not None:
                entry = tarfile.TarInfo(relative)
                entry.size, entry.mode, entry.mtime = info.st_size, mode, int(info.st_mtime)
                tar.addfile(entry, hashing)  # type: ignore[arg-type]
            hashing.drain()
        if hashing.read_bytes != info.st_size:
            raise UserError(f"{path} changed while it was read: run again when the build context is quiet")
    # Sockets, FIFOs and devices are not sent by Docker either.


class _HashingReader:
    """A file reader that feeds every byte it hands out into a hash."""

    def __init__(self, handle: IO[bytes], digest: "hashlib._Hash") -> None:
        self.handle, self.digest, self.read_bytes = handle, digest, 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        self.read_bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(HASH_CHUNK):
            pass


def _length_prefixed(data: bytes) -> bytes:
    return str(len(data)).encode() + b"\0" + data


def build_context_tar(settings: BuildSettings, pinned_dockerfile: str, tar_into: IO[bytes]) -> ContextDigest:
    """Write the context as a tar for the engine to tar_into, with the pinned Dockerfile (PINNED_DOCKERFILE)
    and a .dockerignore listing it added, hashing it as it is written; return the hash.

    Raises UserError when the context already holds a file named PINNED_DOCKERFILE, or a
    file changed while it was read.
    """
    ignore = settings.context / ".dockerignore"
    ignore_text = ignore.read_text(encoding="utf-8") if ignore.is_file() else ".dockerignore\n"
    ignore_text = ignore_text.rstrip("\n") + f"\n{PINNED_DOCKERFILE}\n"
    extra = {PINNED_DOCKERFILE: pinned_dockerfile.encode(), ".dockerignore": ignore_text.encode()}
    if (settings.context / PINNED_DOCKERFILE).exists():
        raise UserError(f"{settings.context / PINNED_DOCKERFILE}: this name is reserved for the Dockerfile rollout sends: rename the file")
    return hash_context(settings, tar_into, extra)
