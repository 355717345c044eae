"""rollout's registry credentials and CA bundle reach buildah (issue 15, P2-1): real buildah, real registries.

The registries require htpasswd logins (one of them over TLS with a self-signed CA); both the
Dockerfile's FROM image and the app's repository live there, so `buildah bud` (the pull) and
`buildah push` both need what rollout's own registry client uses. A `buildah` wrapper first on
PATH records every command line and how the --authfile it is given looks, then runs the real one.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import sqlite3
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from rollout import buildah
from rollout.credentials import Credentials
from rollout.reference import parse
from rollout.registry import RegistryClient
from support.bed import TLS_HOST, need
from support.images import REGISTRY, image_names
from support.project import Project, http_get, write_config
from support.registry_server import RegistryProcess, start_registry, upload_blob
from support.token_server import make_self_signed

USER, PASSWORD = "builder", "Fern-7781-never-shown"
BASE_REPOSITORY = "base/busybox"
SOURCE = f"http://{REGISTRY}/v2/rollout-test/busybox"  # the test bed's busybox: one manifest, a config, a layer


def copy_base(registry: RegistryProcess, verify: str | bool = True) -> None:
    """Copy the test bed's busybox into registry as base/busybox:base, logged in (blobs, then the manifest)."""
    manifest = requests.get(f"{SOURCE}/manifests/base", timeout=30,
                            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    manifest.raise_for_status()
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    body = manifest.json()
    for digest in [body["config"]["digest"], *(layer["digest"] for layer in body["layers"])]:
        blob = requests.get(f"{SOURCE}/blobs/{digest}", timeout=60)
        blob.raise_for_status()
        assert upload_blob(session, registry.base_url, BASE_REPOSITORY, blob.content, verify) == digest
    session.put(f"{registry.base_url}/v2/{BASE_REPOSITORY}/manifests/base", data=manifest.content, timeout=30,
                headers={"Content-Type": manifest.headers["Content-Type"]}, verify=verify).raise_for_status()


@pytest.fixture(scope="module")
def have_buildah() -> str:
    found = shutil.which("buildah")
    need(found is not None, "buildah (the Debian package `buildah`, .ci/testbed packages)")
    return str(found)


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory, registry: str) -> Iterator[RegistryProcess]:
    """A registry on 127.0.0.1 (plain HTTP) that wants a login for everything, holding the base image."""
    with start_registry(tmp_path_factory.mktemp("basic"), auth="htpasswd", users={USER: PASSWORD}) as started:
        copy_base(started)
        yield started


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory,
                 registry: str) -> Iterator[tuple[RegistryProcess, str, Path]]:
    """A login-only registry over TLS under TLS_HOST (a name that is not loopback by name, so rollout and
    buildah use HTTPS, resolving to 127.0.0.1), with a self-signed CA; yields it, its host:port and the CA."""
    address = socket.gethostbyname(TLS_HOST) if _resolves(TLS_HOST) else "nothing"
    need(address.startswith("127."), f"host name {TLS_HOST} resolving to 127.0.0.1 (.ci/testbed hosts)")
    directory = tmp_path_factory.mktemp("tls")
    pair = make_self_signed(directory, common_name="registry", dns_names=(TLS_HOST,))
    with start_registry(directory, auth="htpasswd", users={USER: PASSWORD},
                        tls_cert=(pair.cert_path, pair.key_path)) as started:
        copy_base(started, verify=str(pair.cert_path))
        yield started, f"{TLS_HOST}:{started.port}", pair.cert_path


def _resolves(name: str) -> bool:
    try:
        socket.gethostbyname(name)
    except OSError:
        return False
    return True


@dataclass
class Bed:
    """A project whose app builds with buildah FROM host/base/busybox:base and pushes to host."""

    project: Project
    host: str
    image: str
    calls: Path  # what the buildah wrapper recorded

    def rebuild(self, *args: str) -> Any:
        return self.project.run("rebuild", *args, timeout=600)

    def built_not_deployed(self) -> tuple[dict[str, Any], Any]:
        """`rebuild --no-deploy --json`, which must build and push: (its report, the finished run)."""
        result = self.rebuild("--no-deploy", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["action"] == "built", report
        return report, result

    def buildah_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def ledger_text(self) -> str:
        """The whole SQLite ledger as SQL text."""
        connection = sqlite3.connect(f"file:{self.project.ledger}?mode=ro", uri=True, timeout=30)
        try:
            return "\n".join(connection.iterdump())
        finally:
            connection.close()


def make_bed(project: Project, host: str, real_buildah: str, docker_config: dict[str, Any], ca_bundle: str = "") -> Bed:
    """The app's context, its rollout.toml with `[registry] docker_config` holding docker_config as config.json
    (and ca_bundle when given), and the buildah wrapper."""
    (project.root / "docker").mkdir()
    (project.root / "docker" / "config.json").write_text(json.dumps(docker_config))
    context = project.root / "ctx"
    (context / "www").mkdir(parents=True)
    (context / "www" / "health").write_text("ok\n")
    (context / "www" / "index.html").write_text("<h1>private</h1>\n")
    (context / "Dockerfile").write_text(f"FROM {host}/{BASE_REPOSITORY}:base\nCOPY www/ /www/\n"
                                        'CMD ["sh", "-c", "exec httpd -f -p 127.0.0.1:$PORT -h /www"]\n')
    image = f"{host}/team/rt-cred-{uuid.uuid4().hex[:10]}"
    write_config(project, image, extra='\n[apps.web.build]\ncontext = "ctx"\nbuilder = "buildah"\nreproducible = true\n')
    with project.config.open("a") as config:
        config.write('\n[registry]\ndocker_config = "docker"\n' + (f'ca_bundle = "{ca_bundle}"\n' if ca_bundle else ""))
    bin_dir, calls = project.root / "bin", project.root / "buildah-calls"
    bin_dir.mkdir()
    wrapper = bin_dir / "buildah"
    wrapper.write_text(  # each command line, then the mode of the --authfile it was given
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$*\" >>'{calls}'\n"
        "previous=\n"
        "for arg in \"$@\"; do\n"
        f"  [ \"$previous\" = --authfile ] && stat -c 'authfile mode %a' \"$arg\" >>'{calls}'\n"
        "  previous=$arg\n"
        "done\n"
        f"exec '{real_buildah}' \"$@\"\n")
    wrapper.chmod(0o755)
    project.env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    return Bed(project, host, image, calls)


def write_helper(bin_dir: Path, server: str) -> None:
    """docker-credential-test, a credsStore: answers USER/PASSWORD for server (rollout, buildah's file and the
    Docker SDK's pull all ask it), 'not found' for anything else, as the real helpers do."""
    script = bin_dir / "docker-credential-test"
    answer = json.dumps({"ServerURL": server, "Username": USER, "Secret": PASSWORD})
    script.write_text("#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r server\n"
                      f"[ \"$server\" = '{server}' ] && {{ printf '%s' '{answer}'; exit 0; }}\n"
                      "echo 'credentials not found in native keychain'; exit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def assert_no_secret(bed: Bed, *outputs: str) -> None:
    """PASSWORD (plain or in its base64 `auth` form) is in no output, not in the ledger, on no buildah command
    line; buildah got it in a 0600 file only, and that file went with the build's storage root."""
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    calls = bed.buildah_calls()
    for where, text in [*(("output", o) for o in outputs), ("the ledger", bed.ledger_text()),
                        ("a buildah command line", "\n".join(calls))]:
        assert PASSWORD not in text and encoded not in text, f"the password is in {where}"
    assert [line for line in calls if line.startswith("authfile")] == ["authfile mode 600"] * 2, calls  # bud, push
    assert not list((bed.project.root / "state").glob("buildah-*")), "the storage root (and auth.json) is gone"


def pushed(bed: Bed, report: dict[str, Any], ca: Path | None = None) -> str:
    """The digest the registry holds under the report's tag, read with rollout's own client (logged in)."""
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    reader = bed.project.root / "reader"
    reader.mkdir(exist_ok=True)
    (reader / "config.json").write_text(json.dumps({"auths": {bed.host: {"auth": encoded}}}))
    client = RegistryClient(docker_config=str(reader), ca_bundle=str(ca) if ca else None)
    return client.resolve(parse(f"{bed.image}:{report['tag']}"))


@pytest.fixture
def cleanup_images(project: Project, docker_client) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """Registries (host:port) whose images the engine pulled during the test: removed afterwards, after the
    project's containers that run them."""
    hosts: list[str] = []
    yield hosts
    project.remove_containers(docker_client)
    for host in hosts:
        # By name, not id: a reproducible build gives the same image id in other tests, whose
        # containers (another xdist worker's) may run it; untagging never touches those.
        for name in image_names(docker_client, f"{host}/"):
            docker_client.images.remove(name, noprune=False)


def test_a_creds_store_login_builds_pulls_pushes_and_deploys_without_showing_the_password(
        have_buildah: str, project: Project, private_registry: RegistryProcess, cleanup_images: list[str]) -> None:
    host = private_registry.host
    cleanup_images.append(host)
    bed = make_bed(project, host, have_buildah, {"credsStore": "test"})
    write_helper(project.root / "bin", host)

    result = bed.rebuild("--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["action"] == "deployed", report
    [entry] = project.history()
    assert (entry["kind"], entry["status"], entry["tag"]) == ("rebuild", "healthy", report["tag"])
    assert http_get(f"http://127.0.0.1:{project.port}/index.html") == "<h1>private</h1>"
    assert pushed(bed, report) == entry["digest"]
    assert_no_secret(bed, result.stdout, result.stderr, project.run("history").stdout)


def test_a_username_and_password_in_config_json_reach_buildah(
        have_buildah: str, project: Project, private_registry: RegistryProcess) -> None:
    # The `username`/`password` form of an `auths` entry, which rollout's client accepts and buildah alone
    # does not read. --no-deploy: the Docker SDK's pull (the deploy) reads only `auth` entries.
    host = private_registry.host
    bed = make_bed(project, host, have_buildah, {"auths": {host: {"username": USER, "password": PASSWORD}}})

    report, result = bed.built_not_deployed()
    assert pushed(bed, report) == report["digest"]
    assert_no_secret(bed, result.stdout, result.stderr)


def test_the_ca_bundle_lets_buildah_pull_and_push_over_tls(
        have_buildah: str, project: Project, tls_registry: tuple[RegistryProcess, str, Path]) -> None:
    # Credentials in the form buildah read before too (`auth`): what this needs is the CA bundle.
    # --no-deploy: the shared test engine does not trust this CA (its certs.d is not the tests' to change).
    _, host, ca = tls_registry
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    shutil.copyfile(ca, project.root / "ca.pem")
    bed = make_bed(project, host, have_buildah, {"auths": {host: {"auth": encoded}}}, ca_bundle="ca.pem")

    report, result = bed.built_not_deployed()
    commands = [line for line in bed.buildah_calls() if " bud " in line or " push " in line]
    assert len(commands) == 2 and all("--cert-dir" in line for line in commands), commands
    assert pushed(bed, report, ca) == report["digest"]
    assert_no_secret(bed, result.stdout, result.stderr)


def test_an_unreadable_ca_bundle_is_exit_2_naming_it(
        have_buildah: str, project: Project, private_registry: RegistryProcess) -> None:
    host = private_registry.host
    bed = make_bed(project, host, have_buildah, {"auths": {host: {"username": USER, "password": PASSWORD}}},
                   ca_bundle="missing.pem")

    result = bed.rebuild("--no-deploy")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ca_bundle" in result.stderr and "missing.pem" in result.stderr and "Traceback" not in result.stderr
    assert bed.buildah_calls() == []  # stopped before any build


def test_the_auth_file_holds_each_registrys_login_and_a_helpers_identity_token_as_one() -> None:
    # containers-auth.json(5): `auth` is base64("user:secret"); a credential helper answering user "<token>"
    # holds an identity token (docker/cli native_store.go), which containers/image reads as `identitytoken`.
    written = json.loads(buildah.auth_json({
        "127.0.0.1:5000": Credentials(USER, PASSWORD, "config.json auths"),
        "ghcr.io": Credentials("<token>", "refresh-token-value", "docker-credential-test"),
        "docker.io": None}))
    assert written == {"auths": {
        "127.0.0.1:5000": {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()},
        "ghcr.io": {"identitytoken": "refresh-token-value"}}}
