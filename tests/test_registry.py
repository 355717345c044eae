"""The registry client against the real distribution registry (docker-registry 2.8).

Plain, htpasswd and token-auth registries run on 127.0.0.1; a counting,
fault-injecting proxy sits in front when a test needs to see or break traffic.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout.credentials import Credentials, credentials_for
from rollout.errors import RegistryAuthError, RegistryUnreachable, TagNotFound
from rollout.reference import parse
from rollout.registry import RegistryClient
from support.bed import TLS_HOST, need
from support.proxy import Fault, RegistryProxy, start_proxy
from support.registry_server import RegistryProcess, push_random_image, start_registry
from support.token_server import TokenServer, make_self_signed, start_token_server

USER, PASSWORD = "deployer", "correct-horse-battery-staple"
WRONG_PASSWORD = "hunter2-wrong-horse"


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, str]]:
    """An anonymous registry holding web:1.0; yields it and the digest of web:1.0."""
    with start_registry(tmp_path_factory.mktemp("plain")) as registry:
        yield registry, push_random_image(registry.base_url, "web", "1.0")


@pytest.fixture()
def proxy(plain_registry: tuple[RegistryProcess, str]) -> Iterator[RegistryProxy]:
    with start_proxy(plain_registry[0].host) as started:
        yield started


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, str]]:
    with start_registry(tmp_path_factory.mktemp("basic"), auth="htpasswd", users={USER: PASSWORD}) as registry:
        yield registry, push_random_image(registry.base_url, "team/web", "2.0", auth=(USER, PASSWORD))


@pytest.fixture(scope="module")
def token_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    with start_token_server(tmp_path_factory.mktemp("token"), {USER: PASSWORD}) as service:
        yield service


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, token_service: TokenServer
) -> Iterator[tuple[RegistryProcess, str]]:
    with start_registry(tmp_path_factory.mktemp("bearer"), auth="token", token=token_service) as registry:
        auth = token_service.bearer_auth("team/api")
        yield registry, push_random_image(registry.base_url, "team/api", "3.1", auth=auth)


def write_docker_config(directory: Path, config: dict[str, object]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


def auths_config(directory: Path, registry: str, password: str = PASSWORD) -> str:
    encoded = base64.b64encode(f"{USER}:{password}".encode()).decode()
    return write_docker_config(directory, {"auths": {registry: {"auth": encoded}}})


# --- anonymous access and request economy -------------------------------------------------


def test_resolve_returns_the_digest_the_registry_stored(plain_registry: tuple[RegistryProcess, str]) -> None:
    registry, digest = plain_registry
    client = RegistryClient()
    assert client.resolve(parse(f"{registry.host}/web:1.0")) == digest


def test_resolve_costs_one_head_and_no_get(proxy: RegistryProxy, plain_registry: tuple[RegistryProcess, str]) -> None:
    client = RegistryClient()
    assert client.resolve(parse(f"{proxy.host}/web:1.0")) == plain_registry[1]
    assert dict(proxy.request_counts) == {("HEAD", "manifest"): 1}
    assert dict(client.request_counts) == {("HEAD", "manifest"): 1}


def test_missing_digest_header_falls_back_to_hashing_the_manifest(
    proxy: RegistryProxy, plain_registry: tuple[RegistryProcess, str]
) -> None:
    proxy.inject(Fault("strip_digest", method="HEAD"))
    assert RegistryClient().resolve(parse(f"{proxy.host}/web:1.0")) == plain_registry[1]
    assert proxy.count("GET", "manifest") == 1
    assert proxy.faults_applied["strip_digest"] == 1


def test_unknown_tag_raises_tag_not_found_naming_tag_and_repository(plain_registry: tuple[RegistryProcess, str]) -> None:
    registry, _ = plain_registry
    with pytest.raises(TagNotFound) as raised:
        RegistryClient().resolve(parse(f"{registry.host}/web:1.0.9"))
    assert str(raised.value) == f"tag 1.0.9 not found in {registry.host}/web"


def test_digest_only_reference_is_confirmed(plain_registry: tuple[RegistryProcess, str]) -> None:
    registry, digest = plain_registry
    client = RegistryClient()
    assert client.resolve(parse(f"{registry.host}/web@{digest}")) == digest
    missing = "sha256:" + "0" * 64
    with pytest.raises(TagNotFound, match=f"digest {missing} not found"):
        client.resolve(parse(f"{registry.host}/web@{missing}"))


def test_exists_answers_from_a_head(proxy: RegistryProxy, plain_registry: tuple[RegistryProcess, str]) -> None:
    client = RegistryClient()
    assert client.exists(parse(f"{proxy.host}/web@{plain_registry[1]}")) is True
    assert client.exists(parse(f"{proxy.host}/web:no-such-tag")) is False
    assert client.exists(parse(f"{proxy.host}/no-such-repo:1.0")) is False
    assert dict(proxy.request_counts) == {("HEAD", "manifest"): 3}


# --- transient failures ------------------------------------------------------------------


def test_429_waits_what_retry_after_asks_then_succeeds(
    proxy: RegistryProxy, plain_registry: tuple[RegistryProcess, str], caplog: pytest.LogCaptureFixture
) -> None:
    proxy.inject(Fault("status", status=429, retry_after="1"))
    with caplog.at_level(logging.WARNING, logger="rollout.registry"):
        assert RegistryClient().resolve(parse(f"{proxy.host}/web:1.0")) == plain_registry[1]
    assert proxy.count("HEAD", "manifest") == 2
    # Exponential back-off would have waited 0.25s; the registry asked for 1s.
    assert "retrying in 1.0s" in caplog.text


def test_persistent_503_gives_up_after_the_configured_attempts(proxy: RegistryProxy) -> None:
    proxy.inject(Fault("status", status=503, times=None))
    with pytest.raises(RegistryUnreachable) as raised:
        RegistryClient(attempts=3).resolve(parse(f"{proxy.host}/web:1.0"))
    message = str(raised.value)
    assert proxy.count("HEAD", "manifest") == 3
    assert proxy.host in message and "503" in message and "3 attempts" in message
    assert "\n" not in message


def test_connection_reset_is_retried(proxy: RegistryProxy, plain_registry: tuple[RegistryProcess, str]) -> None:
    proxy.inject(Fault("reset"))
    assert RegistryClient().resolve(parse(f"{proxy.host}/web:1.0")) == plain_registry[1]
    assert proxy.faults_applied["reset"] == 1
    assert proxy.count("HEAD", "manifest") == 2


def test_a_slow_answer_times_out_and_is_retried(
    proxy: RegistryProxy, plain_registry: tuple[RegistryProcess, str]
) -> None:
    proxy.inject(Fault("delay", delay=10.0))
    # A timeout a busy machine's real answers still fit in, well short of the delayed one.
    assert RegistryClient(timeout=2.0).resolve(parse(f"{proxy.host}/web:1.0")) == plain_registry[1]
    assert proxy.count("HEAD", "manifest") == 2


def test_a_truncated_manifest_body_is_fetched_again(
    proxy: RegistryProxy, plain_registry: tuple[RegistryProcess, str]
) -> None:
    proxy.inject(Fault("strip_digest", method="HEAD"))
    proxy.inject(Fault("truncate", method="GET"))
    assert RegistryClient().resolve(parse(f"{proxy.host}/web:1.0")) == plain_registry[1]
    assert proxy.count("GET", "manifest") == 2


def test_an_unreachable_registry_is_named_in_one_line() -> None:
    from support.registry_server import free_port

    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(RegistryUnreachable) as raised:
        RegistryClient(attempts=2).resolve(parse(f"{host}/web:1.0"))
    assert str(raised.value) == f"registry {host} unreachable after 2 attempts: connection refused"


# --- Basic auth and where credentials come from ------------------------------------------


@pytest.mark.parametrize("form", ["auth", "username/password", "scheme and path in key"])
def test_basic_auth_with_credentials_from_config_json(
    tmp_path: Path, basic_registry: tuple[RegistryProcess, str], form: str
) -> None:
    registry, digest = basic_registry
    entries = {
        "auth": {registry.host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}},
        "username/password": {registry.host: {"username": USER, "password": PASSWORD}},
        "scheme and path in key": {f"http://{registry.host}/v1/": {"username": USER, "password": PASSWORD}},
    }[form]
    config_dir = write_docker_config(tmp_path / "docker", {"auths": entries})
    assert RegistryClient(docker_config=config_dir).resolve(parse(f"{registry.host}/team/web:2.0")) == digest


def test_docker_config_environment_variable_is_honoured(
    tmp_path: Path, basic_registry: tuple[RegistryProcess, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, digest = basic_registry
    monkeypatch.setenv("DOCKER_CONFIG", auths_config(tmp_path / "docker", registry.host))
    assert RegistryClient().resolve(parse(f"{registry.host}/team/web:2.0")) == digest


def test_wrong_password_names_registry_and_user_but_not_the_password(
    tmp_path: Path, basic_registry: tuple[RegistryProcess, str], caplog: pytest.LogCaptureFixture
) -> None:
    registry, _ = basic_registry
    client = RegistryClient(docker_config=auths_config(tmp_path / "docker", registry.host, WRONG_PASSWORD))
    with caplog.at_level(logging.DEBUG), pytest.raises(RegistryAuthError) as raised:
        client.resolve(parse(f"{registry.host}/team/web:2.0"))
    message = str(raised.value)
    assert registry.host in message and USER in message
    assert WRONG_PASSWORD not in message and WRONG_PASSWORD not in repr(raised.value)
    assert WRONG_PASSWORD not in caplog.text
    encoded = base64.b64encode(f"{USER}:{WRONG_PASSWORD}".encode()).decode()
    assert encoded not in message and encoded not in caplog.text


def test_no_credentials_for_a_private_registry_says_so(tmp_path: Path, basic_registry: tuple[RegistryProcess, str]) -> None:
    registry, _ = basic_registry
    client = RegistryClient(docker_config=write_docker_config(tmp_path / "docker", {}))
    with pytest.raises(RegistryAuthError, match=f"registry {registry.host} refused anonymous access"):
        client.resolve(parse(f"{registry.host}/team/web:2.0"))


def install_credential_helper(bin_dir: Path, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-credential-test: knows one server, answers like the real helpers do."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "docker-credential-test"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 1\n'
        "read -r server\n"
        f'if [ "$server" = "{server}" ]; then\n'
        f"  printf '%s' '{json.dumps({'ServerURL': server, 'Username': USER, 'Secret': PASSWORD})}'\n"
        "else\n"
        "  echo 'credentials not found in native keychain'; exit 1\n"
        "fi\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("setting", ["credHelpers", "credsStore"])
def test_credentials_from_a_credential_helper(
    tmp_path: Path, basic_registry: tuple[RegistryProcess, str], monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    registry, digest = basic_registry
    install_credential_helper(tmp_path / "bin", registry.host, monkeypatch)
    config: dict[str, object] = (
        {"credHelpers": {registry.host: "test"}} if setting == "credHelpers" else {"credsStore": "test"}
    )
    client = RegistryClient(docker_config=write_docker_config(tmp_path / "docker", config))
    assert client.resolve(parse(f"{registry.host}/team/web:2.0")) == digest


def test_credentials_never_show_their_secret() -> None:
    found = Credentials(USER, PASSWORD, "config.json auths")
    assert PASSWORD not in repr(found) and PASSWORD not in str(found) and PASSWORD not in f"{found}"


def test_docker_hub_credentials_are_found_under_the_index_url(tmp_path: Path) -> None:
    config_dir = write_docker_config(
        tmp_path / "docker", {"auths": {"https://index.docker.io/v1/": {"username": USER, "password": PASSWORD}}}
    )
    found = credentials_for("docker.io", config_dir)
    assert found is not None and (found.username, found.secret) == (USER, PASSWORD)
    assert credentials_for("ghcr.io", config_dir) is None


# --- Bearer tokens -----------------------------------------------------------------------


def test_bearer_token_flow_and_token_reuse(
    tmp_path: Path, token_registry: tuple[RegistryProcess, str], token_service: TokenServer
) -> None:
    registry, digest = token_registry
    client = RegistryClient(docker_config=auths_config(tmp_path / "docker", registry.host))
    ref = parse(f"{registry.host}/team/api:3.1")
    before = token_service.token_requests
    assert client.resolve(ref) == digest
    assert token_service.token_requests == before + 1
    assert token_service.requests_seen[(USER, "repository:team/api:pull")] >= 1
    assert client.resolve(ref) == digest
    assert token_service.token_requests == before + 1, "the cached token should have been reused"
    # The second resolve went straight in with the token: no 401 round trip.
    assert client.request_counts[("HEAD", "manifest")] == 3


def test_token_sent_as_access_token_is_accepted(
    tmp_path: Path, token_registry: tuple[RegistryProcess, str], token_service: TokenServer
) -> None:
    registry, digest = token_registry
    token_service.token_field = "access_token"
    try:
        client = RegistryClient(docker_config=auths_config(tmp_path / "docker", registry.host))
        assert client.resolve(parse(f"{registry.host}/team/api:3.1")) == digest
    finally:
        token_service.token_field = "token"


def test_token_service_refusing_the_password_is_an_auth_error(
    tmp_path: Path, token_registry: tuple[RegistryProcess, str]
) -> None:
    registry, _ = token_registry
    client = RegistryClient(docker_config=auths_config(tmp_path / "docker", registry.host, WRONG_PASSWORD))
    with pytest.raises(RegistryAuthError) as raised:
        client.resolve(parse(f"{registry.host}/team/api:3.1"))
    assert registry.host in str(raised.value) and USER in str(raised.value)
    assert WRONG_PASSWORD not in str(raised.value)


def test_unknown_tag_behind_token_auth_is_tag_not_found(
    tmp_path: Path, token_registry: tuple[RegistryProcess, str]
) -> None:
    registry, _ = token_registry
    client = RegistryClient(docker_config=auths_config(tmp_path / "docker", registry.host))
    with pytest.raises(TagNotFound, match=f"tag 9.9 not found in {registry.host}/team/api"):
        client.resolve(parse(f"{registry.host}/team/api:9.9"))


def test_a_token_without_access_to_the_repository_is_an_auth_error(
    tmp_path: Path, token_registry: tuple[RegistryProcess, str], token_service: TokenServer
) -> None:
    registry, _ = token_registry
    token_service.denied_repositories.add("team/api")
    try:
        client = RegistryClient(docker_config=auths_config(tmp_path / "docker", registry.host))
        with pytest.raises(RegistryAuthError) as raised:
            client.resolve(parse(f"{registry.host}/team/api:3.1"))
    finally:
        token_service.denied_repositories.clear()
    assert str(raised.value).startswith(f"registry {registry.host} refused pull access to team/api for user '{USER}'")


# --- token lifetime ----------------------------------------------------------------------


def test_an_expired_token_is_fetched_again(
    tmp_path: Path, token_registry: tuple[RegistryProcess, str], token_service: TokenServer
) -> None:
    registry, digest = token_registry
    token_service.expires_in = 1
    try:
        client = RegistryClient(docker_config=auths_config(tmp_path / "docker", registry.host))
        ref = parse(f"{registry.host}/team/api:3.1")
        before = token_service.token_requests
        assert client.resolve(ref) == digest
        time.sleep(1.2)
        assert client.resolve(ref) == digest
        assert token_service.token_requests == before + 2
    finally:
        token_service.expires_in = 300


def test_a_token_without_expires_in_is_still_reused(
    tmp_path: Path, token_registry: tuple[RegistryProcess, str], token_service: TokenServer
) -> None:
    registry, digest = token_registry
    token_service.expires_in = None  # the spec says: then it lives 60 s
    try:
        client = RegistryClient(docker_config=auths_config(tmp_path / "docker", registry.host))
        ref = parse(f"{registry.host}/team/api:3.1")
        before = token_service.token_requests
        assert client.resolve(ref) == digest
        assert client.resolve(ref) == digest
        assert token_service.token_requests == before + 1
    finally:
        token_service.expires_in = 300


# --- where requests go (no network) ------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "insecure", "url"),
    [
        ("ghcr.io/org/app:1", (), "https://ghcr.io/v2/org/app/manifests/1"),
        ("busybox:1.36", (), "https://registry-1.docker.io/v2/library/busybox/manifests/1.36"),
        ("registry.internal:5000/app:1", (), "https://registry.internal:5000/v2/app/manifests/1"),
        ("registry.internal:5000/app:1", ("registry.internal:5000",), "http://registry.internal:5000/v2/app/manifests/1"),
        ("127.0.0.1:5000/app:1", (), "http://127.0.0.1:5000/v2/app/manifests/1"),
        ("localhost:5000/app:1", (), "http://localhost:5000/v2/app/manifests/1"),
        ("[::1]:5000/app:1", (), "http://[::1]:5000/v2/app/manifests/1"),
    ],
)
def test_plain_http_only_for_loopback_or_listed_insecure(reference: str, insecure: tuple[str, ...], url: str) -> None:
    ref = parse(reference)
    assert RegistryClient(insecure=insecure).manifest_url(ref, ref.tag or "") == url


# --- HTTPS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, str, str, Path]]:
    """A TLS registry reachable under a name that is not loopback *by name* (so the client picks
    HTTPS) but resolves to 127.0.0.1 (tests stay on this machine): the test bed adds it to /etc/hosts."""
    name = TLS_HOST
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = "nothing"
    need(address.startswith("127."), f"host name {name} resolving to 127.0.0.1 (it resolves to {address})")
    directory = tmp_path_factory.mktemp("tls")
    pair = make_self_signed(directory, common_name="registry", dns_names=(name,))
    with start_registry(directory, tls_cert=(pair.cert_path, pair.key_path)) as registry:
        digest = push_random_image(registry.base_url, "web", "1.0", verify=str(pair.cert_path))
        yield registry, digest, f"{name}:{registry.port}", pair.cert_path


def test_https_with_a_ca_bundle(tls_registry: tuple[RegistryProcess, str, str, Path]) -> None:
    _, digest, host, ca_bundle = tls_registry
    client = RegistryClient(ca_bundle=str(ca_bundle))
    assert client.manifest_url(parse(f"{host}/web:1.0"), "1.0").startswith("https://")
    assert client.resolve(parse(f"{host}/web:1.0")) == digest


def test_https_certificates_are_verified_by_default(tls_registry: tuple[RegistryProcess, str, str, Path]) -> None:
    _, _, host, _ = tls_registry
    client = RegistryClient()
    with pytest.raises(RegistryUnreachable, match=f"registry {host}: TLS verification failed"):
        client.resolve(parse(f"{host}/web:1.0"))
    assert client.request_counts[("HEAD", "manifest")] == 1, "a bad certificate is not worth retrying"



def test_challenge_parameters_keep_commas_inside_quotes() -> None:
    from rollout.registry import parse_challenge

    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    )
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_challenge('Basic realm="Registry Realm"') == parse_challenge("basic realm=Registry Realm")


# --- registries that refuse HEAD ----------------------------------------------------------


def test_a_registry_that_refuses_head_is_asked_with_one_get_and_it_is_said_once(
    proxy: RegistryProxy, plain_registry: tuple[RegistryProcess, str], caplog: pytest.LogCaptureFixture
) -> None:
    proxy.inject(Fault("status", status=405, method="HEAD", times=None))
    client, ref = RegistryClient(), parse(f"{proxy.host}/web:1.0")
    with caplog.at_level(logging.INFO, logger="rollout.registry"):
        assert client.resolve(ref) == plain_registry[1]
        # Known to refuse HEAD now: straight to GET, also for another client in this process.
        assert RegistryClient().resolve(ref) == plain_registry[1]
        assert client.exists(parse(f"{proxy.host}/web@{plain_registry[1]}")) is True
        assert client.exists(parse(f"{proxy.host}/web:no-such-tag")) is False
    assert dict(proxy.request_counts) == {("HEAD", "manifest"): 1, ("GET", "manifest"): 4}
    said = [r for r in caplog.records if "refuses HEAD" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO and proxy.host in said[0].getMessage()


def test_a_registry_that_refuses_head_still_says_when_a_tag_is_missing(proxy: RegistryProxy) -> None:
    proxy.inject(Fault("status", status=405, method="HEAD", times=None))
    with pytest.raises(TagNotFound, match=f"tag 9.9 not found in {proxy.host}/web"):
        RegistryClient().resolve(parse(f"{proxy.host}/web:9.9"))


def test_other_refusals_of_head_are_still_errors(proxy: RegistryProxy) -> None:
    proxy.inject(Fault("status", status=400, method="HEAD", times=None))
    with pytest.raises(RegistryUnreachable, match="answered 400"):
        RegistryClient().resolve(parse(f"{proxy.host}/web:1.0"))
    assert proxy.count("GET", "manifest") == 0


def test_deploy_from_a_registry_that_refuses_head(project, registry: str) -> None:  # type: ignore[no-untyped-def]
    from support.project import write_config

    good1 = RegistryClient().resolve(parse(f"{registry}/rollout-test/app:good1"))
    with start_proxy(registry) as front:
        front.inject(Fault("status", status=405, method="HEAD", times=None))
        write_config(project, image=f"{front.host}/rollout-test/app", stable=1)
        result = project.run("deploy", "web:good1")
        assert result.returncode == 0, result.stderr
        assert project.version() == "good1"
        assert front.faults_applied["status"] >= 1  # rollout's HEAD was refused, and it went on
    entry = project.history()[0]
    assert (entry["tag"], entry["digest"], entry["status"]) == ("good1", good1, "healthy")
