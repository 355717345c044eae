"""Run the real distribution registry (Debian's /usr/bin/docker-registry) for a test.

`start_registry` writes a config, starts `docker-registry serve` on a free port of
127.0.0.1 and waits until `/v2/` answers; the returned RegistryProcess stops it on
close. `push_random_image` uploads a tiny, unique, valid image over the plain
registry HTTP API, so registry tests need no Docker engine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import requests
import yaml

from .bed import need
from .ports import free_port

REGISTRY_BINARY = os.environ.get("ROLLOUT_REGISTRY_BINARY", "/usr/bin/docker-registry")
DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
START_TIMEOUT = 20.0


class TokenSettings(Protocol):
    realm: str
    service: str
    issuer: str
    root_cert_path: Path


def registry_binary() -> str:
    """The registry binary; a missing one fails the test under CI=true, skips it otherwise."""
    need(shutil.which(REGISTRY_BINARY) is not None, f"{REGISTRY_BINARY} (apt-get install docker-registry)")
    return REGISTRY_BINARY


@dataclass
class RegistryProcess:
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    scheme: str = "http"

    @property
    def host(self) -> str:
        """The registry part of an image reference, e.g. 127.0.0.1:41234."""
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def log_tail(self, lines: int = 20) -> str:
        log = self.root / "registry.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def __enter__(self) -> "RegistryProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_htpasswd(path: Path, users: dict[str, str]) -> None:
    """bcrypt entries (the only kind distribution accepts), password passed on stdin."""
    lines = []
    for user, password in users.items():
        made = subprocess.run(
            ["htpasswd", "-niB", user], input=password.encode(), capture_output=True, check=True
        )
        lines.append(made.stdout.decode().strip())
    path.write_text("\n".join(lines) + "\n")


def registry_config(
    root: Path,
    port: int,
    auth: Literal["htpasswd", "token"] | None,
    users: dict[str, str],
    token: TokenSettings | None,
    tls_cert: tuple[Path, Path] | None,
) -> dict[str, Any]:
    http: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)}
    if tls_cert is not None:
        http["tls"] = {"certificate": str(tls_cert[0]), "key": str(tls_cert[1])}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": http,
    }
    if auth == "htpasswd":
        write_htpasswd(root / "htpasswd", users)
        config["auth"] = {"htpasswd": {"realm": "rollout-test", "path": str(root / "htpasswd")}}
    elif auth == "token":
        if token is None:
            raise ValueError("auth='token' needs token settings (a started TokenServer)")
        config["auth"] = {
            "token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": token.issuer,
                "rootcertbundle": str(token.root_cert_path),
            }
        }
    return config


def start_registry(
    tmpdir: Path | str,
    *,
    auth: Literal["htpasswd", "token"] | None = None,
    users: dict[str, str] | None = None,
    token: TokenSettings | None = None,
    tls_cert: tuple[Path, Path] | None = None,
) -> RegistryProcess:
    """A running registry on 127.0.0.1; use it with `with` or call close()."""
    binary = registry_binary()
    root = Path(tmpdir) / f"registry-{secrets.token_hex(4)}"
    root.mkdir(parents=True)
    port = free_port()
    config = registry_config(root, port, auth, users or {}, token, tls_cert)
    config_path = root / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    with open(root / "registry.log", "wb") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT
        )
    registry = RegistryProcess(process, port, root, "https" if tls_cert else "http")
    try:
        wait_until_serving(registry, ca_bundle=tls_cert[0] if tls_cert else None)
    except BaseException:
        registry.close()
        raise
    return registry


def wait_until_serving(registry: RegistryProcess, ca_bundle: Path | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if registry.process.poll() is not None:
            raise RuntimeError(f"docker-registry exited early:\n{registry.log_tail()}")
        try:
            answer = requests.get(f"{registry.base_url}/v2/", timeout=1, verify=str(ca_bundle) if ca_bundle else True)
            if answer.status_code in (200, 401):
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not answer /v2/ within {START_TIMEOUT}s:\n{registry.log_tail()}")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def random_layer() -> tuple[bytes, str]:
    """A gzipped tar holding one random file, and the digest of the uncompressed tar (diff_id)."""
    content = secrets.token_bytes(64)
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w") as archive:
        member = tarfile.TarInfo("random.bin")
        member.size = len(content)
        member.mtime = int(time.time())
        archive.addfile(member, io.BytesIO(content))
    raw = tar_buffer.getvalue()
    return gzip.compress(raw, mtime=0), _digest(raw)


def upload_blob(session: requests.Session, base_url: str, repo: str, data: bytes, verify: str | bool) -> str:
    digest = _digest(data)
    started = session.post(f"{base_url}/v2/{repo}/blobs/uploads/", timeout=10, verify=verify)
    started.raise_for_status()
    location = urllib.parse.urljoin(base_url, started.headers["Location"])
    separator = "&" if "?" in location else "?"
    finished = session.put(
        f"{location}{separator}digest={urllib.parse.quote(digest)}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=10,
        verify=verify,
    )
    finished.raise_for_status()
    return digest


def push_random_image(
    base_url: str, repo: str, tag: str, auth: Any = None, verify: str | bool = True
) -> str:
    """Push a tiny unique image (one layer, Docker v2 manifest) and return its manifest digest.

    `auth` is anything requests accepts: (user, password), or TokenServer.bearer_auth(repo).
    `verify` is passed per request because $REQUESTS_CA_BUNDLE overrides Session.verify.
    """
    session = requests.Session()
    session.auth = auth
    layer, diff_id = random_layer()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    config_digest = upload_blob(session, base_url, repo, config, verify)
    layer_digest = upload_blob(session, base_url, repo, layer, verify)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_V2,
            "config": {"mediaType": DOCKER_CONFIG_V1, "size": len(config), "digest": config_digest},
            "layers": [{"mediaType": DOCKER_LAYER_GZIP, "size": len(layer), "digest": layer_digest}],
        }
    ).encode()
    stored = session.put(
        f"{base_url}/v2/{repo}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": DOCKER_MANIFEST_V2},
        timeout=10,
        verify=verify,
    )
    stored.raise_for_status()
    digest = _digest(manifest)
    if stored.headers.get("Docker-Content-Digest") != digest:
        raise RuntimeError(f"registry stored {stored.headers.get('Docker-Content-Digest')}, we sent {digest}")
    return digest
