"""Image reference parsing: Docker's grammar, normalisation, and one-line errors."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rollout.errors import InvalidReference, UserError
from rollout.reference import (
    DOCKER_HUB,
    Reference,
    is_digest,
    parse,
    parse_repository,
    registry_endpoint,
    repo_digests,
)

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "0123456789abcdef" * 8


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        # Familiar Docker Hub names
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("docker.io/library/busybox:musl", "docker.io", "library/busybox", "musl", None),
        ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("index.docker.io/acme/web:v2", "docker.io", "acme/web", "v2", None),
        ("acme/web", "docker.io", "acme/web", "latest", None),
        ("acme/team/web:v1", "docker.io", "acme/team/web", "v1", None),
        # Digest only: no default tag is invented
        (f"busybox@{SHA256}", "docker.io", "library/busybox", None, SHA256),
        (f"web:v1@{SHA256}", "docker.io", "library/web", "v1", SHA256),
        (f"web@{SHA512}", "docker.io", "library/web", None, SHA512),
        # Registries: dotted, with port, localhost, IPv4, IPv6, upper case host
        ("127.0.0.1:5000/web", "127.0.0.1:5000", "web", "latest", None),
        ("127.0.0.1:5000/web:v2", "127.0.0.1:5000", "web", "v2", None),
        (f"127.0.0.1:5000/team/web:v2@{SHA256}", "127.0.0.1:5000", "team/web", "v2", SHA256),
        ("localhost/web", "localhost", "web", "latest", None),
        ("localhost:5000/web:v1", "localhost:5000", "web", "v1", None),
        ("registry.example.com/web", "registry.example.com", "web", "latest", None),
        ("Registry.Example.COM:443/web", "Registry.Example.COM:443", "web", "latest", None),
        ("myhost:5000/web", "myhost:5000", "web", "latest", None),
        ("[::1]:5000/web:v1", "[::1]:5000", "web", "v1", None),
        ("[fe80::1]/web", "[fe80::1]", "web", "latest", None),
        ("ghcr.io/acme/web", "ghcr.io", "acme/web", "latest", None),
        # Separators inside path components
        ("acme/a.b_c__d-e---f", "docker.io", "acme/a.b_c__d-e---f", "latest", None),
        ("127.0.0.1:5000/my-app_v2.web", "127.0.0.1:5000", "my-app_v2.web", "latest", None),
        # Tags: upper case, underscore start, 128 characters
        ("web:V1.2-rc_3", "docker.io", "library/web", "V1.2-rc_3", None),
        ("web:_x", "docker.io", "library/web", "_x", None),
        ("web:" + "t" * 128, "docker.io", "library/web", "t" * 128, None),
        # A colon with no slash after it is a tag, even if it looks like a port (as in Docker)
        ("localhost:5000", "docker.io", "library/localhost", "5000", None),
    ],
)
def test_valid_references_parse_and_normalise(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse(text)
    assert ref == Reference(registry, repository, tag, digest)
    assert parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "named_part"),
    [
        ("", '""'),
        ("web:Bad Tag!", '"Bad Tag!"'),
        ("web:v1;rm -rf x", '"v1;rm -rf x"'),
        # The slash makes "web:v1..." a registry host, as in Docker
        ("web:v1;rm -rf /", 'invalid registry "web:v1;rm -rf "'),
        ("web;ls", '"web;ls"'),
        ("$(reboot)", '"$(reboot)"'),
        ("`id`/web", '"`id`"'),
        ("web|cat", '"web|cat"'),
        ("web&&x", '"web&&x"'),
        ("web:v1\nrm -rf x", r'"v1\nrm -rf x"'),
        ("web\n", r'"web\n"'),
        (" web", '" web"'),
        ("web :v1", '"web "'),
        ("we b", '"we b"'),
        ("Web", '"Web"'),
        ("acme/Web:v1", '"acme/Web"'),
        ("MyOrg/web", '"MyOrg/web"'),
        ("127.0.0.1:5000/Web", '"Web"'),
        ("web:" + "v" * 129, "129"),
        ("web:.v1", '".v1"'),
        ("web:-v1", '"-v1"'),
        ("web@md5:d41d8cd98f00b204e9800998ecf8427e", '"md5"'),
        ("web@sha1:" + "a" * 40, '"sha1"'),
        ("web@sha256:" + "a" * 63, "63"),
        ("web@sha256:" + "a" * 65, "65"),
        ("web@sha512:" + "a" * 64, "64"),
        ("web@sha256:" + "A" * 64, "lowercase"),
        ("web@sha256:" + "g" * 64, '"sha256:ggg'),
        ("web@" + "a" * 64, '"aaaa'),
        (f"web@{SHA256}@{SHA256}", '"sha256:'),
        ("web:", '":" without a tag'),
        ("127.0.0.1:5000/web:", '":" without a tag'),
        ("web@", '"@" without a digest'),
        ("web:v1@", '"@" without a digest'),
        (":v1", "no repository name"),
        (f"@{SHA256}", "no repository name"),
        ("a//b", "empty path component"),
        ("/web", "empty path component"),
        ("acme/", "empty path component"),
        ("127.0.0.1:5000/", "empty path component"),
        ("127.0.0.1:5000//web", "empty path component"),
        ("-web", '"-web"'),
        ("web-", '"web-"'),
        (".web", '".web"'),
        ("web.", '"web."'),
        ("_web", '"_web"'),
        ("web_", '"web_"'),
        ("we___b", '"we___b"'),
        ("we..b", '"we..b"'),
        ("we._b", '"we._b"'),
        ("acme/-web", '"-web"'),
        ("exa mple.com/web", '"exa mple.com"'),
        ("-bad.com/web", '"-bad.com"'),
        ("bad-.com/web", '"bad-.com"'),
        ("bad..com/web", '"bad..com"'),
        ("host.com:/web", '"host.com:"'),
        ("host.com:port/web", '"host.com:port"'),
        ("host.com:99999/web", "65535"),
        ("[::1/web", '"[::1"'),
        ("[zz::1]/web", '"[zz::1]"'),
        ("0123456789abcdef" * 4, "image ID"),
        ("a" * 238, "256 characters"),
        ("example.com/" + "a" * 244, "256 characters"),
        ("wéb", '"wéb"'),
        ("web\u2028x", r'"web\u2028x"'),
        ("web\x00", r'"web\x00"'),
    ],
)
def test_invalid_references_name_the_offending_part(text: str, named_part: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse(text)
    message = str(caught.value)
    assert named_part in message
    assert len(message.splitlines()) == 1
    assert message.startswith("invalid ")


def test_invalid_reference_is_a_usage_error_and_a_value_error() -> None:
    with pytest.raises(ValueError) as caught:
        parse("web:Bad Tag!")
    assert isinstance(caught.value, UserError)
    assert caught.value.exit_code == 2
    assert str(caught.value) == (
        'invalid tag "Bad Tag!" in "web:Bad Tag!": '
        "tags are letters, digits, _ . - up to 128 characters, not starting with . or -"
    )


def test_name_length_limit_is_255_after_normalisation() -> None:
    # docker.io/library/ is 18 characters, so a familiar name may have 237.
    assert parse("a" * 237).name == "docker.io/library/" + "a" * 237
    assert len(parse("example.com/" + "a" * 243).name) == 255
    with pytest.raises(InvalidReference, match="256 characters; the limit is 255"):
        parse("a" * 238)


def test_huge_input_is_not_echoed_back() -> None:
    huge = "a" * 1_000_000
    for text in (huge, huge + ":", "web:" + huge, "web@sha256:" + huge, "\n" * 1_000_000):
        with pytest.raises(InvalidReference) as caught:
            parse(text)
        message = str(caught.value)
        assert len(message) < 600
        assert len(message.splitlines()) == 1


def test_str_and_name() -> None:
    ref = parse(f"127.0.0.1:5000/web:v2@{SHA256}")
    assert ref.name == "127.0.0.1:5000/web"
    assert str(ref) == f"127.0.0.1:5000/web:v2@{SHA256}"
    assert str(parse("busybox")) == "docker.io/library/busybox:latest"
    assert str(parse(f"busybox@{SHA256}")) == f"docker.io/library/busybox@{SHA256}"
    assert str(Reference("127.0.0.1:5000", "web")) == "127.0.0.1:5000/web"


def test_pinned_uses_digest_and_drops_tag() -> None:
    ref = parse(f"127.0.0.1:5000/web:v2@{SHA256}")
    assert ref.pinned() == f"127.0.0.1:5000/web@{SHA256}"
    with pytest.raises(ValueError, match="no digest"):
        parse("127.0.0.1:5000/web:v2").pinned()


def test_with_digest_and_with_tag_return_new_references() -> None:
    tagged = parse("127.0.0.1:5000/web:v2")
    pinned = tagged.with_digest(SHA512)
    assert pinned == Reference("127.0.0.1:5000", "web", "v2", SHA512)
    assert tagged.digest is None  # the original is unchanged
    assert pinned.with_tag("v3") == Reference("127.0.0.1:5000", "web", "v3", SHA512)
    with pytest.raises(InvalidReference, match="md5"):
        tagged.with_digest("md5:d41d8cd98f00b204e9800998ecf8427e")
    with pytest.raises(InvalidReference, match='"v 3"'):
        tagged.with_tag("v 3")


def test_reference_is_immutable() -> None:
    ref = parse("busybox")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "evil"  # type: ignore[misc]
    assert hash(ref) == hash(parse("docker.io/library/busybox:latest"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000/web", ("127.0.0.1:5000", "web")),
        ("busybox", ("docker.io", "library/busybox")),
        ("index.docker.io/acme/web", ("docker.io", "acme/web")),
        ("localhost/a/b", ("localhost", "a/b")),
    ],
)
def test_parse_repository(text: str, expected: tuple[str, str]) -> None:
    assert parse_repository(text) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("127.0.0.1:5000/web:v1", "without a tag or digest"),
        (f"127.0.0.1:5000/web@{SHA256}", "without a tag or digest"),
        ("localhost:5000", '"localhost:5000/NAME"'),
        ("Web", "lowercase"),
        ("", "empty"),
    ],
)
def test_parse_repository_rejects_tags_digests_and_bad_names(text: str, hint: str) -> None:
    with pytest.raises(InvalidReference, match=hint):
        parse_repository(text)


def test_registry_endpoint() -> None:
    assert DOCKER_HUB == "docker.io"
    assert registry_endpoint(parse("busybox").registry) == "registry-1.docker.io"
    assert registry_endpoint("127.0.0.1:5000") == "127.0.0.1:5000"
    assert registry_endpoint("ghcr.io") == "ghcr.io"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SHA256, True),
        (SHA512, True),
        ("sha256:" + "a" * 63, False),
        ("sha256:" + "A" * 64, False),
        ("sha512:" + "a" * 64, False),
        ("md5:d41d8cd98f00b204e9800998ecf8427e", False),
        ("0123456789abcdef" * 4, False),
        (SHA256 + "\n", False),
        ("", False),
    ],
)
def test_is_digest(text: str, expected: bool) -> None:
    assert is_digest(text) is expected


# --- property-based -------------------------------------------------------

_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_separator = st.sampled_from([".", "_", "__", "-", "--", "---"])
_path_component = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    _alnum,
    st.lists(st.tuples(_separator, _alnum), max_size=3),
)
_path = st.lists(_path_component, min_size=1, max_size=4).map("/".join)
_domain_component = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
_port = st.integers(1, 65535).map(str)
_registry = st.one_of(
    st.builds(lambda parts, port: ".".join(parts) + (f":{port}" if port else ""),
              st.lists(_domain_component, min_size=2, max_size=4), st.none() | _port),
    st.builds(lambda host, port: f"{host}:{port}", _domain_component, _port),
    st.builds(lambda port: "localhost" + (f":{port}" if port else ""), st.none() | _port),
    st.builds(lambda octets, port: ".".join(map(str, octets)) + f":{port}",
              st.lists(st.integers(0, 255), min_size=4, max_size=4), _port),
    st.builds(lambda ip, port: f"[{ip}]:{port}", st.from_regex(r"[0-9a-fA-F:]{1,39}", fullmatch=True), _port),
    st.sampled_from(["docker.io", "index.docker.io"]),
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
_digest = st.one_of(
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h),
    st.text("0123456789abcdef", min_size=128, max_size=128).map(lambda h: "sha512:" + h),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(registry=st.none() | _registry, path=_path, tag=st.none() | _tag, digest=st.none() | _digest)
def test_generated_valid_references_parse_and_round_trip(
    registry: str | None, path: str, tag: str | None, digest: str | None
) -> None:
    first_component = path.split("/")[0]
    if registry is None:
        # Without an explicit registry, such a first component would be read as one.
        assume("/" not in path or ("." not in first_component and first_component != "localhost"))
    text = (f"{registry}/" if registry else "") + path
    text += (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    expected_registry = DOCKER_HUB if registry in (None, "docker.io", "index.docker.io") else registry
    expected_path = path
    if expected_registry == DOCKER_HUB and "/" not in path:
        expected_path = "library/" + path
    assume(len(f"{expected_registry}/{expected_path}") <= 255)

    ref = parse(text)
    expected_tag = "latest" if tag is None and digest is None else tag
    assert ref == Reference(expected_registry, expected_path, expected_tag, digest)
    assert parse(str(ref)) == ref
    if digest:
        assert is_digest(ref.digest or "")
        assert parse(ref.pinned()) == Reference(expected_registry, expected_path, None, digest)


def _check_parse_outcome(text: str) -> None:
    """parse() either succeeds consistently or fails with a one-line InvalidReference."""
    try:
        ref = parse(text)
    except InvalidReference as error:
        message = str(error)
        assert len(message.splitlines()) == 1
        assert len(message) < 600
        return
    assert parse(str(ref)) == ref
    assert ref.tag is not None or ref.digest is not None


@settings(max_examples=1000, deadline=None)
@given(st.text())
def test_arbitrary_text_parses_or_fails_cleanly(text: str) -> None:
    _check_parse_outcome(text)


# Mostly characters that matter to the grammar, so fuzzing reaches deep into it.
_reference_ish = st.text("abz09AZ._-/:@[]\n é", max_size=30)


@settings(max_examples=10000, deadline=None)
@given(_reference_ish)
def test_fuzz_reference_like_text(text: str) -> None:
    _check_parse_outcome(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=_path, tag=_tag, digest=_digest, position=st.integers(0, 400), junk=st.characters())
def test_one_stray_character_in_a_valid_reference_fails_cleanly(
    path: str, tag: str, digest: str, position: int, junk: str
) -> None:
    text = f"127.0.0.1:5000/{path}:{tag}@{digest}"
    position %= len(text) + 1
    _check_parse_outcome(text[:position] + junk + text[position:])


def test_repo_digests_are_normalised_like_references() -> None:
    hub, local = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    names = [f"shop/web@{hub}", f"busybox@{hub}", f"127.0.0.1:5000/web@{local}", "not a name@x", "web:1.0"]
    assert repo_digests(names) == {
        ("docker.io", "shop/web", hub),  # the engine's short Docker Hub name is the config's docker.io/shop/web
        ("docker.io", "library/busybox", hub),
        ("127.0.0.1:5000", "web", local),
    }
