"""Image references: parse, validate and normalise them the way Docker does.

Grammar (github.com/distribution/reference):

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ registry "/" ] path
    registry   := host [ ":" port ]       host: DNS-like name, IPv4, or [IPv6]
    path       := component [ "/" component ]*
    component  := [a-z0-9]+ ( separator [a-z0-9]+ )*    separator: . _ __ or -+
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := sha256:<64 lowercase hex> | sha512:<128 lowercase hex>

Deliberate differences from distribution, both to fail early with a clear
message rather than talk to a host nobody meant:
- a first component is a registry only if it contains "." or ":" or is
  "localhost"; distribution also takes an upper-case one ("MyOrg/app"),
  here that is an upper-case path error;
- ports must be 1-65535, and only sha256/sha512 digests are accepted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from rollout.errors import InvalidReference

DOCKER_HUB = "docker.io"
DEFAULT_TAG = "latest"

# Docker Hub's registry API is not served at the name users write.
_DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_LEGACY_DOCKER_HUB = "index.docker.io"
_OFFICIAL_NAMESPACE = "library/"
_NAME_MAX = 255
_SHOWN_MAX = 80  # longest slice of user input quoted back in an error message

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REGISTRY = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::(?P<port>[0-9]+))?"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha512": 128}
# A bare 64-hex string is an image ID to Docker, so it is refused as a name.
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")
_CONTAINER_NAME = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+")

_TAG_RULE = "tags are letters, digits, _ . - up to 128 characters, not starting with . or -"
_PATH_RULE = (
    "path components are lowercase letters and digits joined by one . or _, "
    "two __, or any run of -"
)
_REGISTRY_RULE = "a registry is a host name, IPv4 address or [IPv6] address with an optional :port"


@dataclass(frozen=True)
class Reference:
    """A normalised image reference; at least one of tag and digest is set when made by parse()."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """Fully qualified repository, e.g. docker.io/library/busybox."""
        return f"{self.registry}/{self.repository}"

    def pinned(self) -> str:
        """name@digest: the exact image, whatever the tag points at later; ValueError without a digest."""
        if self.digest is None:
            raise ValueError(f"{self} has no digest to pin")
        return f"{self.name}@{self.digest}"

    def with_digest(self, digest: str) -> Reference:
        """A copy with `digest` set; InvalidReference (exit 2) when it is not sha256/sha512 by the grammar above."""
        _check_digest(digest, digest)
        return replace(self, digest=digest)

    def with_tag(self, tag: str) -> Reference:
        """A copy with `tag` set; InvalidReference (exit 2) when it is not a tag by the grammar above."""
        _check_tag(tag, tag)
        return replace(self, tag=tag)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse(text: str) -> Reference:
    """Parse a reference such as `busybox`, `127.0.0.1:5000/web:v2` or `web@sha256:...`.

    Familiar Docker Hub names are normalised (`busybox` -> docker.io/library/busybox)
    and a reference with neither tag nor digest gets the tag `latest`. Raises
    InvalidReference (exit 2; also a ValueError) naming the bad part and the rule.
    """
    registry, repository, tag, digest = _parse_parts(text)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)


def parse_repository(text: str) -> tuple[str, str]:
    """(registry, repository) of a name given without tag or digest, e.g. in config:
    "busybox" -> ("docker.io", "library/busybox"). InvalidReference (exit 2) for a bad name
    or one that carries a tag or digest."""
    registry, repository, tag, digest = _parse_parts(text)
    if digest is not None or tag is not None:
        why = "give the repository alone, without a tag or digest"
        if tag is not None and "/" not in text.partition("@")[0]:
            # "localhost:5000" reads as repository "localhost" with tag "5000".
            why += f'; a registry needs a repository after it, e.g. "{_clip(text)}/NAME"'
        raise _invalid(text, why, "repository")
    return registry, repository


def repo_digests(names: Iterable[str]) -> set[tuple[str, str, str]]:
    """An image's RepoDigests as (registry, repository, digest), names normalised as references
    are (the engine writes Docker Hub images as `user/web@...`, a config says `docker.io/user/web`)."""
    digests = set()
    for name in names:
        try:
            reference = parse(name)
        except ValueError:
            continue
        if reference.digest is not None:
            digests.add((reference.registry, reference.repository, reference.digest))
    return digests


def registry_endpoint(registry: str) -> str:
    """The host[:port] to send registry API requests to: docker.io's API is served at
    registry-1.docker.io (as the Docker CLI and moby `registry/config.go` map it)."""
    return _DOCKER_HUB_ENDPOINT if registry == DOCKER_HUB else registry


def short_digest(digest: str | None) -> str:
    """The first 12 hex digits, as `docker images` shows them; "-" for none."""
    return str(digest).split(":", 1)[-1][:12] if digest else "-"


def is_digest(text: str) -> bool:
    """Whether text is a digest rollout uses: sha256:<64 lowercase hex> or sha512:<128>."""
    return _DIGEST.fullmatch(text) is not None


def _parse_parts(text: str) -> tuple[str, str, str | None, str | None]:
    """Validate text and split it into normalised registry and repository, raw tag and digest."""
    if text == "":
        raise _invalid(text, "empty; expected NAME[:TAG][@DIGEST]")
    if _IMAGE_ID.fullmatch(text):
        raise _invalid(text, "64 hex digits is an image ID, not a repository name")

    name_and_tag, at_sign, digest = text.partition("@")
    # The tag colon is the last one after the last "/": earlier colons belong to a registry port.
    colon = name_and_tag.rfind(":")
    if colon > name_and_tag.rfind("/"):
        name, tag = name_and_tag[:colon], name_and_tag[colon + 1 :]
    else:
        name, tag = name_and_tag, None

    registry, repository = _parse_name(name, text)
    if tag is not None:
        if tag == "":
            raise _invalid(text, '":" without a tag after it')
        _check_tag(tag, text)
    if at_sign:
        if digest == "":
            raise _invalid(text, '"@" without a digest after it')
        _check_digest(digest, text)
        return registry, repository, tag, digest
    return registry, repository, tag, None


def _parse_name(name: str, text: str) -> tuple[str, str]:
    if name == "":
        raise _invalid(text, "no repository name before the tag or digest")
    first, slash, rest = name.partition("/")
    if slash and (first == "localhost" or "." in first or ":" in first):
        registry, path = first, rest
        _check_registry(registry, text)
    else:
        registry, path = DOCKER_HUB, name
    _check_path(path, text)

    if registry == _LEGACY_DOCKER_HUB:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = _OFFICIAL_NAMESPACE + path
    full_name = f"{registry}/{path}"
    if len(full_name) > _NAME_MAX:
        raise _invalid(
            text,
            f"the full repository name (registry/path) is {len(full_name)} characters; "
            f"the limit is {_NAME_MAX}",
        )
    return registry, path


def _check_registry(registry: str, text: str) -> None:
    match = _REGISTRY.fullmatch(registry)
    if match is None:
        raise _invalid(text, _REGISTRY_RULE, "registry", registry)
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise _invalid(text, "ports are 1-65535", "registry", registry)


def _check_path(path: str, text: str) -> None:
    for component in path.split("/"):
        if component == "":
            raise _invalid(text, "empty path component (leading, trailing or doubled /)", "repository", path)
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if component.lower() != component:
            raise _invalid(text, "repository names must be lowercase", "repository", path)
        raise _invalid(text, _PATH_RULE, "path component", component)


def _check_tag(tag: str, text: str) -> None:
    why = _tag_problem(tag)
    if why is not None:
        raise _invalid(text, why, "tag", tag)


def _tag_problem(tag: str) -> str | None:
    """Why tag is no tag, or None when it is one."""
    if _TAG.fullmatch(tag):
        return None
    if len(tag) > 128:
        return f"tags are at most 128 characters, this one has {len(tag)}"
    return _TAG_RULE


def _check_digest(digest: str, text: str) -> None:
    why = _digest_problem(digest)
    if why is not None:
        raise _invalid(text, why, "digest", digest)


def _digest_problem(digest: str) -> str | None:
    """Why digest is not one rollout uses, or None when it is one."""
    if _DIGEST.fullmatch(digest):
        return None
    algorithm, colon, hex_digits = digest.partition(":")
    if not colon:
        return "a digest is sha256:<64 hex digits> or sha512:<128 hex digits>"
    if algorithm not in _DIGEST_HEX_LENGTH:
        return f"unsupported digest algorithm {_show(algorithm)}; use sha256 or sha512"
    if len(hex_digits) != _DIGEST_HEX_LENGTH[algorithm]:
        return f"{algorithm} digests have {_DIGEST_HEX_LENGTH[algorithm]} hex digits, this one has {len(hex_digits)}"
    return "digest hex digits must be 0-9 and lowercase a-f"


# -- what engines, clusters and registries send back ------------------------------------------
#
# Their answers are input too: a value that does not fit its grammar must not be recorded in
# the ledger (where it stays forever) nor spliced into an engine API path. Each check returns
# the value unchanged when it fits, and otherwise raises `error(message)`: the caller picks
# the error type, so a bad answer from a registry ends as RegistryUnreachable (exit 5), not as
# the user's bad input (exit 2).


def checked_digest(value: object, source: str, error: Callable[[str], Exception], hint: str = "") -> str:
    """value when it is a digest rollout can use, else raise error("<source> "<value>", which is ...").

    Digests follow the OCI image spec (image-spec descriptor.md, "Digests"): algorithm ":"
    encoded, with algorithm [a-z0-9]+([+._-][a-z0-9]+)* and encoded [a-zA-Z0-9=_-]+; of the
    registered algorithms rollout takes sha256 (exactly 64 lowercase hex digits) and sha512
    (128), the only ones Docker's reference grammar (distribution/reference) accepts, so what
    passes here also passes the OCI grammar. source names who sent it ("registry X answered
    web:1.0 with Docker-Content-Digest"); hint, if given, ends the message ("nothing was changed").
    """
    why = _digest_problem(value) if isinstance(value, str) else f"a {type(value).__name__}, not text"
    if why is None:
        return value  # type: ignore[return-value]  # a str: _digest_problem accepted it
    raise error(_answer_message(source, value, f"which is not a digest: {why}", hint))


def checked_tag(value: object, source: str, error: Callable[[str], Exception], hint: str = "") -> str:
    """value when it is a tag by Docker's grammar ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127},
    distribution/reference regexp.go), else raise error(message naming source and value)."""
    why = _tag_problem(value) if isinstance(value, str) else f"a {type(value).__name__}, not text"
    if why is None:
        return value  # type: ignore[return-value]
    raise error(_answer_message(source, value, f"which is not a tag: {why}", hint))


def checked_image(value: object, source: str, error: Callable[[str], Exception], hint: str = "") -> str:
    """value when it names an image the way an engine or a pod spec may: a reference by Docker's
    grammar (parse() accepts it), or an image ID (sha256:<64 hex>, or the 64 hex alone); else
    raise error(message naming source and value). E.g. a container's Config.Image read back."""
    if isinstance(value, str):
        if _IMAGE_ID.fullmatch(value) or _DIGEST.fullmatch(value):
            return value
        try:
            parse(value)
            return value
        except InvalidReference as invalid:
            why = str(invalid)
    else:
        why = f"a {type(value).__name__}, not text"
    raise error(_answer_message(source, value, f"which is not an image reference ({why})", hint))


def checked_container_name(value: object, source: str, error: Callable[[str], Exception], hint: str = "") -> str:
    """value when the engine accepts it as a container name, [a-zA-Z0-9][a-zA-Z0-9_.-]+ (moby
    daemon/names/names.go, RestrictedNamePattern; the engine's leading "/" is allowed and kept),
    else raise error(message naming source and value). Such names are safe in engine URL paths."""
    if isinstance(value, str) and _CONTAINER_NAME.fullmatch(value):
        return value
    why = ("names are a letter or digit, then letters, digits, _ . or -" if isinstance(value, str)
           else f"a {type(value).__name__}, not text")
    raise error(_answer_message(source, value, f"which is not a container name: {why}", hint))


def _answer_message(source: str, value: object, why: str, hint: str) -> str:
    shown = _show(value) if isinstance(value, str) else repr(type(value).__name__)
    return f"{source} {shown}, {why}" + (f"; {hint}" if hint else "")


def _invalid(text: str, why: str, kind: str = "reference", part: str | None = None) -> InvalidReference:
    """A one-line error naming the bad part, quoting user input escaped and clipped."""
    if part is None or part == text:
        return InvalidReference(f"invalid {kind} {_show(text)}: {why}")
    return InvalidReference(f"invalid {kind} {_show(part)} in {_show(text)}: {why}")


def _show(text: str) -> str:
    """Quote text on one line: escape quotes, backslashes and anything unprintable; clip long text."""
    shown = f'"{_clip(text)}"'
    if len(text) > _SHOWN_MAX:
        shown += f"... ({len(text)} characters)"
    return shown


def _clip(text: str) -> str:
    return "".join(_escape(char) for char in text[:_SHOWN_MAX])


def _escape(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    if char.isprintable():
        return char
    # Covers newlines and every other line break str.splitlines() knows (\x1c, \x85, \u2028 ...).
    return char.encode("unicode_escape").decode("ascii")
