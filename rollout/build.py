"""Build inputs: what decides whether an app's image must be rebuilt.

An image built twice from the same inputs still gets a new digest (its config
carries timestamps), so "did anything change?" is answered from the inputs:
the digests of the Dockerfile's external base images, the files Docker would
send as build context, the Dockerfile text and the build arguments. Their hash
is the build key recorded in the ledger.

Nothing here talks to a registry or an engine; rollout.rebuild does the I/O.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

from docker.utils.build import Pattern, PatternMatcher
from docker.utils.fnmatch import fnmatchcase

from rollout.errors import ConfigError, InvalidReference, UserError
from rollout.reference import Reference, parse

BUILD_KEYS = {"context", "dockerfile", "tag", "build_args", "target", "platform"}
DEFAULT_TAG_TEMPLATE = "{date}.{n}"
TAG_PLACEHOLDERS = {"date", "n", "git", "base"}
# The Dockerfile rollout sends, with every external FROM pinned to a digest. It is
# listed in the sent .dockerignore, so the engine drops it after reading it and a
# `COPY . ...` never copies it (the way `docker build -f -` does it).
PINNED_DOCKERFILE = ".rollout.Dockerfile"
HASH_CHUNK = 1 << 20


# -- configuration -------------------------------------------------------------


@dataclass(frozen=True)
class BuildSettings:
    """An app's validated `[apps.NAME.build]` table, with paths made absolute."""

    context: Path
    dockerfile: Path
    tag: str = DEFAULT_TAG_TEMPLATE
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    platform: str | None = None


def build_settings(app_name: str, table: dict[str, Any] | None, config_path: Path | None) -> BuildSettings:
    """Validate the raw build table; every error names the file and the key."""
    where = f"apps.{app_name}.build."
    if not table:
        raise ConfigError(f"{config_path}: app {app_name!r} has no [apps.{app_name}.build] table: add one with"
                          " at least `context = \"DIR\"` to use rebuild")
    unknown = sorted(set(table) - BUILD_KEYS)
    if unknown:
        raise ConfigError(f"{config_path}: unknown key {where}{unknown[0]}: allowed here are {', '.join(sorted(BUILD_KEYS))}")
    for key in ("context", "dockerfile", "tag", "target", "platform"):
        if key in table and not isinstance(table[key], str):
            raise ConfigError(f"{config_path}: {where}{key} must be a string, not {type(table[key]).__name__}")
    if not table.get("context"):
        raise ConfigError(f"{config_path}: {where}context is missing: the build directory, relative to this file")
    build_args = table.get("build_args", {})
    if not isinstance(build_args, dict) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                                   for v in build_args.values()):
        raise ConfigError(f"{config_path}: {where}build_args must be a table of strings, e.g. {{ VERSION = \"1\" }}")
    base = config_path.parent if config_path else Path.cwd()
    context = (base / Path(table["context"]).expanduser()).resolve()
    if not context.is_dir():
        raise ConfigError(f"{config_path}: {where}context = {table['context']!r}: {context} is not a directory")
    dockerfile = (context / Path(table.get("dockerfile") or "Dockerfile").expanduser()).resolve()
    if not dockerfile.is_file():
        raise ConfigError(f"{config_path}: {where}dockerfile: {dockerfile} is not a file")
    template = table.get("tag") or DEFAULT_TAG_TEMPLATE
    check_tag_template(template, f"{config_path}: {where}tag")
    return BuildSettings(context=context, dockerfile=dockerfile, tag=template,
                         build_args={str(k): str(v) for k, v in build_args.items()},
                         target=table.get("target") or None, platform=table.get("platform") or None)


def check_tag_template(template: str, where: str) -> None:
    for name in re.findall(r"\{([^{}]*)\}", template):
        if name not in TAG_PLACEHOLDERS:
            raise ConfigError(f"{where} = {template!r}: unknown placeholder {{{name}}}:"
                              f" use {', '.join('{' + p + '}' for p in sorted(TAG_PLACEHOLDERS))}")
    if template.count("{") != template.count("}"):
        raise ConfigError(f"{where} = {template!r}: unbalanced braces")


# -- Dockerfile: FROM lines ----------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper-cased, e.g. "FROM"
    arguments: str  # the text after the keyword, continuation lines joined
    first_line: int  # 0-based index of its first physical line
    last_line: int  # 0-based index of its last physical line


@dataclass(frozen=True)
class Stage:
    index: int
    name: str | None  # lower-cased, as Docker compares stage names
    image: str  # after ARG substitution
    flags: tuple[str, ...]  # e.g. ("--platform=linux/amd64",)
    instruction: Instruction
    base: Reference | None  # None for `scratch` and for a FROM naming an earlier stage
    parent: int | None  # index of the earlier stage it builds on


@dataclass(frozen=True)
class CopyFrom:
    """`COPY --from=IMAGE` naming an external image: as much an input as a FROM."""

    stage: int  # index of the stage it is in
    source: str  # the --from value as written
    instruction: Instruction
    base: Reference


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    text: str
    stages: tuple[Stage, ...]
    copies: tuple[CopyFrom, ...] = ()

    def stages_for(self, target: str | None) -> tuple[Stage, ...]:
        """The stages the classic builder runs for target: all of them up to it."""
        if target is None:
            return self.stages
        for stage in self.stages:
            if stage.name == target.lower():
                return self.stages[: stage.index + 1]
        names = ", ".join(s.name for s in self.stages if s.name) or "none"
        raise UserError(f"{self.path}: no stage named {target!r} for build target: stages are {names}")

    def bases(self, target: str | None = None) -> list[Reference]:
        """External images (FROM and COPY --from) of the stages that are built, in Dockerfile order, each once."""
        stages = self.stages_for(target)
        uses = [(s.instruction.first_line, s.base) for s in stages if s.base is not None]
        uses += [(c.instruction.first_line, c.base) for c in self.copies if c.stage < len(stages)]
        seen: dict[str, Reference] = {}
        for _, base in sorted(uses, key=lambda use: use[0]):
            seen.setdefault(str(base), base)
        return list(seen.values())

    def final_base(self, target: str | None = None) -> Reference | None:
        """The external image the final stage ultimately builds on (for the OCI base labels)."""
        stages = self.stages_for(target)
        stage: Stage | None = stages[-1]
        while stage is not None and stage.base is None:
            stage = self.stages[stage.parent] if stage.parent is not None else None
        return stage.base if stage else None

    def pinned(self, digests: dict[str, str]) -> str:
        """The Dockerfile text with every external FROM and COPY --from rewritten to name@digest.

        Flags and stage names are kept; a rewritten instruction becomes one line.
        """
        rewritten: dict[Instruction, str] = {}
        for stage in self.stages:
            if stage.base is not None and str(stage.base) in digests:
                words = ["FROM", *stage.flags, f"{stage.base.name}@{digests[str(stage.base)]}"]
                rewritten[stage.instruction] = " ".join(words + (["AS", stage.name] if stage.name else []))
        for copy in self.copies:
            if str(copy.base) in digests:
                flag = f"--from={copy.base.name}@{digests[str(copy.base)]}"
                arguments = re.sub(r"(?i)--from=\S+", lambda _: flag, copy.instruction.arguments, count=1)
                rewritten[copy.instruction] = f"{copy.instruction.keyword} {arguments}"
        lines = self.text.splitlines()
        for instruction in sorted(rewritten, key=lambda i: i.first_line, reverse=True):
            lines[instruction.first_line : instruction.last_line + 1] = [rewritten[instruction]]
        return "\n".join(lines) + "\n"


def read_dockerfile(path: Path, build_args: dict[str, str] | None = None) -> Dockerfile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read Dockerfile {path}: {exc}") from None
    return parse_dockerfile(text, build_args or {}, path)


def parse_dockerfile(text: str, build_args: dict[str, str], path: Path = Path("Dockerfile")) -> Dockerfile:
    """Stages with their FROM images resolved through global ARGs and build_args."""
    escape = _escape_directive(text)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    copies: list[CopyFrom] = []
    for instruction in instructions(text, escape):
        where = f"{path}:{instruction.first_line + 1}"
        if instruction.keyword == "ARG" and not stages:
            # Only ARGs before the first FROM can be used in FROM lines.
            for name, default in _arg_declarations(instruction.arguments, escape, global_args):
                if name in build_args:
                    global_args[name] = build_args[name]
                elif default is not None:
                    global_args[name] = default
                else:
                    global_args.setdefault(name, "")
        elif instruction.keyword == "FROM":
            stages.append(_stage(instruction, len(stages), stages, global_args, escape, where))
        elif instruction.keyword in ("COPY", "ADD") and stages:
            copy = _copy_from(instruction, stages, where)
            if copy is not None:
                copies.append(copy)
    if not stages:
        raise UserError(f"{path}: no FROM instruction: not a Dockerfile")
    return Dockerfile(path=path, text=text, stages=tuple(stages), copies=tuple(copies))


def _copy_from(instruction: Instruction, stages: list[Stage], where: str) -> CopyFrom | None:
    match = re.search(r"(?i)--from=(\S+)", instruction.arguments)
    if match is None:
        return None
    source = match[1]
    lowered = source.lower()
    if lowered.isdigit() or any(s.name == lowered for s in stages):
        return None  # an earlier stage, by name or index
    try:
        return CopyFrom(len(stages) - 1, source, instruction, parse(source))
    except InvalidReference as exc:
        raise UserError(f"{where}: {instruction.keyword} --from={source}: {exc}") from None


def _stage(instruction: Instruction, index: int, earlier: list[Stage], args: dict[str, str],
           escape: str, where: str) -> Stage:
    words = instruction.arguments.split()
    flags = tuple(w for w in words if w.startswith("--"))
    rest = [w for w in words if not w.startswith("--")]
    if len(rest) == 3 and rest[1].lower() == "as":
        name: str | None = rest[2].lower()
    elif len(rest) == 1:
        name = None
    else:
        raise UserError(f"{where}: cannot read `FROM {instruction.arguments}`: expected FROM [--flags] IMAGE [AS NAME]")
    image = expand(rest[0], args, escape)
    if not image:
        raise UserError(f"{where}: `FROM {rest[0]}` names no image after ARG substitution: give the ARG a default or a build_args value")
    lowered = image.lower()
    parent = next((s.index for s in earlier if s.name == lowered), None)
    base = None
    if parent is None and lowered != "scratch":
        try:
            base = parse(image)
        except InvalidReference as exc:
            raise UserError(f"{where}: FROM {image}: {exc}") from None
    return Stage(index, name, image, flags, instruction, base, parent)


def instructions(text: str, escape: str = "\\") -> Iterator[Instruction]:
    """Logical instructions: comments skipped, continuation lines joined (heredoc bodies are not parsed)."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        stripped = lines[index].strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        first, parts = index, []
        while True:
            line = lines[index].rstrip()
            continued = line.endswith(escape)
            parts.append(line[:-1] if continued else line)
            index += 1
            if not continued:
                break
            # Comment and blank lines inside a continuation are skipped, as Docker does.
            while index < len(lines) and (not lines[index].strip() or lines[index].strip().startswith("#")):
                index += 1
            if index >= len(lines):
                break
        joined = " ".join(part.strip() for part in parts).strip()
        keyword, _, arguments = joined.partition(" ")
        yield Instruction(keyword.upper(), arguments.strip(), first, index - 1)


def _escape_directive(text: str) -> str:
    """The `# escape=` parser directive, which must come before anything else."""
    for line in text.splitlines():
        match = re.match(r"^\s*#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$", line)
        if not match:
            break
        if match[1].lower() == "escape" and match[2] in ("\\", "`"):
            return match[2]
    return "\\"


def _arg_declarations(arguments: str, escape: str, known: dict[str, str]) -> Iterator[tuple[str, str | None]]:
    for word in _shell_words(arguments, escape):
        name, equals, default = word.partition("=")
        yield name, expand(default, known, escape) if equals else None


def _shell_words(text: str, escape: str) -> list[str]:
    """Split on unquoted whitespace and drop the quotes, as Docker's ARG parser does."""
    words, current, quote, index, started = [], "", "", 0, False
    while index < len(text):
        char = text[index]
        if char == escape and index + 1 < len(text) and quote != "'":
            current += text[index + 1]
            index += 2
            started = True
            continue
        if quote:
            if char == quote:
                quote = ""
            else:
                current += char
        elif char in "'\"":
            quote, started = char, True
        elif char.isspace():
            if started:
                words.append(current)
            current, started = "", False
        else:
            current += char
            started = True
        index += 1
    if started:
        words.append(current)
    return words


_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-+])(?P<word>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def expand(text: str, variables: dict[str, str], escape: str = "\\") -> str:
    """Docker's variable substitution: $VAR, ${VAR}, ${VAR:-word}, ${VAR:+word} (and without the colon)."""
    out, index = "", 0
    while index < len(text):
        if text[index] == escape and index + 1 < len(text) and text[index + 1] == "$":
            out += "$"
            index += 2
            continue
        match = _VARIABLE.match(text, index)
        if not match:
            out += text[index]
            index += 1
            continue
        index = match.end()
        if match["plain"]:
            out += variables.get(match["plain"], "")
            continue
        name, op, word = match["braced"], match["op"], match["word"] or ""
        value = variables.get(name)
        is_set, non_empty = value is not None, bool(value)
        if op is None:
            out += value or ""
        elif op == ":-":
            out += value if non_empty else expand(word, variables, escape)
        elif op == "-":
            out += value if is_set else expand(word, variables, escape)  # type: ignore[operator]
        elif op == ":+":
            out += expand(word, variables, escape) if non_empty else ""
        else:  # "+"
            out += expand(word, variables, escape) if is_set else ""
    return out


# -- context: the files Docker would send ----------------------------------------------


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
    """Patterns as Docker's dockerignore.ReadAll reads them."""
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
    """The context as a tar for the engine, with the pinned Dockerfile added, hashed as it is written."""
    ignore = settings.context / ".dockerignore"
    ignore_text = ignore.read_text(encoding="utf-8") if ignore.is_file() else ".dockerignore\n"
    ignore_text = ignore_text.rstrip("\n") + f"\n{PINNED_DOCKERFILE}\n"
    extra = {PINNED_DOCKERFILE: pinned_dockerfile.encode(), ".dockerignore": ignore_text.encode()}
    if (settings.context / PINNED_DOCKERFILE).exists():
        raise UserError(f"{settings.context / PINNED_DOCKERFILE}: this name is reserved for the Dockerfile rollout sends: rename the file")
    return hash_context(settings, tar_into, extra)


# -- build key and tag --------------------------------------------------------------


def build_key(base_digests: list[tuple[str, str]], context_digest: str, target: str | None, platform: str | None) -> str:
    """sha256 of the base digests (in Dockerfile order), the context hash, the target stage and the platform."""
    material = json.dumps({"bases": [list(pair) for pair in base_digests], "context": context_digest,
                           "target": target or "", "platform": platform or ""}, sort_keys=True)
    return "sha256:" + hashlib.sha256(material.encode()).hexdigest()


def git_commit(directory: Path, short: bool = True) -> str | None:
    """The commit checked out in directory's git work tree; None when it is not one (or git is missing)."""
    command = ["git", "-C", str(directory), "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def render_tag(template: str, *, n: int, first_base_digest: str | None, git: str | None,
               now: dt.datetime | None = None) -> str:
    """The tag for a new build; an invalid result (say {git} outside a git work tree) is an error."""
    values = {"date": (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d"), "n": str(n)}
    if "{git}" in template:
        if not git:
            raise UserError(f"tag template {template!r} uses {{git}} but the build context is not a git work tree")
        values["git"] = git
    if "{base}" in template:
        if not first_base_digest:
            raise UserError(f"tag template {template!r} uses {{base}} but the Dockerfile has no external base image")
        values["base"] = first_base_digest.split(":", 1)[-1][:12]
    tag = template
    for name, value in values.items():
        tag = tag.replace("{" + name + "}", value)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        raise UserError(f"tag template {template!r} renders {tag!r}, not a valid tag:"
                        " tags are letters, digits, _ . - up to 128 characters, not starting with . or -")
    return tag
