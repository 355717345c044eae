"""Dockerfile parsing: the stages, their FROM images and `COPY --from` images, as the classic builder reads them.

What rollout needs from a Dockerfile is which external images it builds on (each an
input of the build key) and the same text with each of them pinned to a digest.
The rules follow the builder's own parser (moby/buildkit frontend/dockerfile/parser:
comments, continuation lines, the `# escape=` directive; frontend/dockerfile/shell:
variable substitution; instructions/parse.go: FROM and ARG).

Nothing here talks to a registry or an engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rollout.errors import InvalidReference, UserError
from rollout.reference import Reference, parse


@dataclass(frozen=True)
class Instruction:
    """One logical instruction of a Dockerfile (continuation lines joined)."""

    keyword: str  # upper-cased, e.g. "FROM"
    arguments: str  # the text after the keyword, continuation lines joined
    first_line: int  # 0-based index of its first physical line
    last_line: int  # 0-based index of its last physical line


@dataclass(frozen=True)
class Stage:
    """One FROM and what it builds on: an external image (`base`), an earlier stage (`parent`) or scratch."""

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
    """A parsed Dockerfile: its text, stages in order, and the `COPY --from` instructions naming external images."""

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
    """Read and parse the Dockerfile at path (UTF-8); UserError (exit 2) when it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read Dockerfile {path}: {exc}") from None
    return parse_dockerfile(text, build_args or {}, path)


def parse_dockerfile(text: str, build_args: dict[str, str], path: Path = Path("Dockerfile")) -> Dockerfile:
    """Parse Dockerfile text: stages with their FROM images resolved through global ARGs and build_args.

    Raises UserError (exit 2) naming path:line for a FROM that cannot be read, names no image after
    substitution or no valid reference, and when there is no FROM at all.
    """
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
    """Docker's variable substitution: $VAR, ${VAR}, ${VAR:-word}, ${VAR:+word} (and without the colon);
    an unset variable expands to "" (buildkit frontend/dockerfile/shell/lex.go)."""
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
