"""What registries, engines and clusters send back is input too.

A digest a registry sends goes into the immutable ledger and into engine API paths, so it
must fit the OCI digest grammar (image-spec descriptor.md) before rollout uses it; tags,
image names and container names read back from engines are checked the same way. The
checks are fuzzed here like the reference parser is in test_reference.py, against oracles
written from the specs, then a lying registry (the fault proxy rewriting
Docker-Content-Digest in front of the real registry) is met through the real CLI.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.errors import InvalidReference, RegistryUnreachable
from rollout.reference import checked_container_name, checked_digest, checked_image, checked_tag, parse
from rollout.registry import RegistryClient
from support.images import APP_IMAGE
from support.project import Project, write_config
from support.proxy import Fault, RegistryProxy, start_proxy
from support.registry_server import RegistryProcess, push_random_image, start_registry

# The oracles, from the specs rather than from rollout's own patterns.
# image-spec descriptor.md, "Digests": digest := algorithm ":" encoded.
OCI_DIGEST = re.compile(r"(?P<algorithm>[a-z0-9]+(?:[+._-][a-z0-9]+)*):(?P<encoded>[a-zA-Z0-9=_-]+)")
# Registered algorithms: sha256 is 64 and sha512 128 lowercase hex digits.
REGISTERED = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}
# distribution/reference regexp.go: tag := [\w][\w.-]{0,127}; moby daemon/names: container names.
DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
CONTAINER_NAME = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+")

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "0123456789abcdef" * 8
ATTACKS = ["sha256:../../../../x", "sha256:" + "A" * 64, "sha256:%2e%2e%2f" + "0" * 55, "md5:" + "0" * 32,
           "../../containers/create?", SHA256 + "/../../x", "sha256:" + "0" * 63, "SHA256:" + "0" * 64,
           "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564"]


class Refused(Exception):
    """The error type a caller hands to the checks."""


def oci_digest_rollout_takes(value: str) -> bool:
    match = OCI_DIGEST.fullmatch(value)
    if match is None:
        return False
    pattern = REGISTERED.get(match["algorithm"])
    return pattern is not None and pattern.fullmatch(match["encoded"]) is not None


def outcome(check, value: object):  # type: ignore[no-untyped-def]
    """(accepted, message): the check returns value unchanged or raises Refused in one line."""
    try:
        returned = check(value, "engine X sent", Refused)
    except Refused as refused:
        message = str(refused)
        assert message.startswith("engine X sent ") and "\n" not in message and "\r" not in message
        return False, message
    assert returned is value
    return True, ""


# -- the checks, fuzzed ------------------------------------------------------------------------

_hexish = st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=132)
_dotty = st.text(alphabet="0123456789abcdef./%=_-+:\\\n\x00 é", max_size=140)
_algorithm = st.sampled_from(["sha256", "sha512", "SHA256", "sha384", "md5", "", "sha256+b64u", "..", "sha256 "])
_digest_like = st.builds(lambda a, e: f"{a}:{e}", _algorithm, _hexish | _dotty)
_mutated = st.builds(lambda d, i, c: d[:i] + c + d[i:], st.sampled_from([SHA256, SHA512]), st.integers(0, 135),
                     st.characters())


@settings(max_examples=3000, deadline=None)
@given(st.text() | _digest_like | _mutated | st.sampled_from(ATTACKS + [SHA256, SHA512]))
def test_a_digest_is_accepted_only_when_it_fits_the_oci_grammar_and_its_algorithm(value: str) -> None:
    accepted, message = outcome(checked_digest, value)
    assert accepted == oci_digest_rollout_takes(value), message
    if not accepted:
        assert "which is not a digest" in message


@pytest.mark.parametrize("value", [None, 7, b"sha256:" + b"0" * 64, ["sha256"], {"digest": SHA256}])
def test_a_digest_that_is_not_text_is_refused(value: object) -> None:
    accepted, message = outcome(checked_digest, value)
    assert not accepted and "not text" in message


@settings(max_examples=2000, deadline=None)
@given(st.text() | st.text(alphabet="aZ09_.-/:@ \n", max_size=140))
def test_a_tag_is_accepted_only_when_it_fits_dockers_tag_grammar(value: str) -> None:
    accepted, message = outcome(checked_tag, value)
    assert accepted == (DOCKER_TAG.fullmatch(value) is not None), message


@settings(max_examples=2000, deadline=None)
@given(st.text() | st.text(alphabet="aZ09_.-/:@ \n", max_size=80))
def test_a_container_name_is_accepted_only_when_the_engine_would_take_it(value: str) -> None:
    accepted, message = outcome(checked_container_name, value)
    assert accepted == (CONTAINER_NAME.fullmatch(value) is not None), message


def parses(value: str) -> bool:
    try:
        parse(value)
    except InvalidReference:
        return False
    return True


@settings(max_examples=2000, deadline=None)
@given(st.text() | st.text(alphabet="ab09:/@._-[]", max_size=90) | st.sampled_from(ATTACKS))
def test_an_image_read_back_is_a_reference_or_an_image_id(value: str) -> None:
    accepted, message = outcome(checked_image, value)
    image_id = re.fullmatch(r"(sha256:)?[a-f0-9]{64}", value) is not None
    assert accepted == (parses(value) or image_id), message


@pytest.mark.parametrize("value", ["127.0.0.1:5000/web@" + SHA256, "nginx", "web:v1", SHA256, SHA256[7:]])
def test_images_engines_really_report_are_accepted(value: str) -> None:
    assert outcome(checked_image, value) == (True, "")


# -- a registry that lies, met by the client --------------------------------------------------------


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, str]]:
    with start_registry(tmp_path_factory.mktemp("plain")) as registry:
        yield registry, push_random_image(registry.base_url, "web", "1.0")


@pytest.fixture
def lying(plain_registry: tuple[RegistryProcess, str]) -> Iterator[RegistryProxy]:
    with start_proxy(plain_registry[0].host) as started:
        yield started


@pytest.mark.parametrize("bad", ATTACKS)
def test_a_digest_header_that_is_no_digest_is_a_registry_error(lying: RegistryProxy, bad: str) -> None:
    lying.inject(Fault("set_digest", method="HEAD", digest=bad))
    with pytest.raises(RegistryUnreachable) as raised:
        RegistryClient().resolve(parse(f"{lying.host}/web:1.0"))
    message = str(raised.value)
    assert message.startswith(f"registry {lying.host} answered web:1.0 with Docker-Content-Digest ")
    assert "which is not a digest" in message and "nothing was recorded or changed" in message
    assert "\n" not in message
    assert lying.count("GET", "manifest") == 0


def test_when_the_manifest_came_its_hash_must_match_the_header(
        lying: RegistryProxy, plain_registry: tuple[RegistryProcess, str]) -> None:
    # HEAD refused, so the one GET carries both the manifest and a (well-formed) wrong digest.
    lying.inject(Fault("status", status=405, method="HEAD", times=None))
    lying.inject(Fault("set_digest", method="GET", digest="sha256:" + "0" * 64))
    with pytest.raises(RegistryUnreachable) as raised:
        RegistryClient().resolve(parse(f"{lying.host}/web:1.0"))
    assert f"hashes to {plain_registry[1]}, not the sha256:{'0' * 64} its Docker-Content-Digest says" \
        in str(raised.value)
    # The header is checked on the GET too.
    lying.inject(Fault("set_digest", method="GET", digest="sha256:../../x"))
    with pytest.raises(RegistryUnreachable, match="which is not a digest"):
        RegistryClient().resolve(parse(f"{lying.host}/web:1.0"))


def test_a_header_naming_another_digest_than_the_one_asked_for_is_refused(
        lying: RegistryProxy, plain_registry: tuple[RegistryProcess, str]) -> None:
    lying.inject(Fault("set_digest", method="HEAD", digest="sha256:" + "1" * 64))
    with pytest.raises(RegistryUnreachable, match=f"answered a request for {plain_registry[1]} with"):
        RegistryClient().resolve(parse(f"{lying.host}/web@{plain_registry[1]}"))


# -- through the CLI: nothing recorded, nothing changed -------------------------------------------


def recorded(project: Project) -> tuple:
    conn = sqlite3.connect(f"file:{project.ledger}?mode=ro", uri=True)
    try:
        return tuple(tuple(conn.execute(f"SELECT * FROM {table} ORDER BY rowid")) for table in ("entries", "events",
                                                                                             "targets"))
    finally:
        conn.close()


@pytest.mark.parametrize("bad", ["sha256:../../../../x", "sha256:" + "A" * 64, SHA256 + "/../../x",
                                 "sha256:%2e%2e%2f" + "0" * 55])
def test_deploy_refuses_a_registry_digest_that_is_no_digest(project: Project, registry: str, docker_client,  # type: ignore[no-untyped-def]
                                                            bad: str) -> None:
    with start_proxy(registry) as front:
        write_config(project, image=f"{front.host}/rollout-test/app", stable=1)
        assert project.run("deploy", "web:good1").returncode == 0
        ledger_before = recorded(project)
        inspect_before = docker_client.api.inspect_container(project.container)
        front.inject(Fault("set_digest", method="HEAD", digest=bad, times=None))
        result = project.run("deploy", "web:good2")
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("rollout: error: registry ") and "which is not a digest" in last
    assert recorded(project) == ledger_before
    assert docker_client.api.inspect_container(project.container) == inspect_before
    assert project.version() == "good1"


def test_a_label_read_back_from_the_engine_never_shapes_a_container_name(project: Project, registry: str,
                                                                          docker_client) -> None:  # type: ignore[no-untyped-def]
    """Anyone may set `rollout.entry` on a container: it is the engine's answer, not ours. A value that
    is no ledger id must not reach the rename (an engine URL and the name the next revert looks up)."""
    docker_client.containers.run(f"{APP_IMAGE}:good1", name=project.container, detach=True, network_mode="host",
                                 environment={"PORT": str(project.port)},
                                 labels={"rollout.entry": "../../containers/x/kill?signal=9"})
    old = docker_client.containers.get(project.container)
    result = project.run("deploy", "web:good2")
    assert result.returncode == 0, result.stderr
    assert project.version_once_listening() == "good2"
    old.reload()
    assert old.name == f"{project.container}.rollout-{old.short_id}"
    assert old.status == "exited"
