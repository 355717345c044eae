"""Proxies: rollout reaches a host through a proxy exactly when the docker CLI would.

The rule (rollout/proxies.py) is Go's golang.org/x/net/http/httpproxy: loopback is never
proxied, NO_PROXY is honoured by name as written, everything else goes through
HTTP(S)_PROXY. Checked as a table, then on real traffic: a dead proxy in the environment
must not stop a deploy from a loopback registry with a loopback probe (through the CLI on
the real engine), and a live forwarding proxy must carry what is not loopback.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout.health import http_probe
from rollout.notify import Channel, send
from rollout.proxies import proxies_for
from rollout.reference import parse
from rollout.registry import RegistryClient
from support.bed import TLS_HOST, need
from support.forward_proxy import ForwardProxy, start_forward_proxy
from support.ports import free_port
from support.project import Project
from support.receiver import start_receiver
from support.registry_server import RegistryProcess, push_random_image, start_registry
from support.token_server import make_self_signed

PROXY = "http://proxy.corp:3128"
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy",
                   "ALL_PROXY")


def via(url: str, **environ: str) -> str | None:
    """The proxy url goes through with this environment, None for direct."""
    chosen = proxies_for(url, environ)
    assert len(chosen) <= 1
    return next(iter(chosen.values()), None)


# -- the rule, as a table (no network) ---------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:5000/v2/", "http://127.0.0.2/", "http://127.255.255.254:80/", "http://localhost:5000/v2/",
    "http://LOCALHOST/", "http://[::1]:5000/v2/", "https://[::1]/", "http://[::ffff:127.0.0.1]:5000/",
    "https://127.0.0.1:5000/v2/",
])
def test_loopback_never_goes_through_a_proxy(url: str) -> None:
    assert via(url, HTTP_PROXY=PROXY, HTTPS_PROXY=PROXY) is None


@pytest.mark.parametrize(("url", "environ", "expected"), [
    # Which variable: the URL's scheme picks it; upper case wins; ALL_PROXY is not Go's (nor Docker's).
    ("http://registry.corp/v2/", {"HTTP_PROXY": PROXY}, PROXY),
    ("http://registry.corp/v2/", {"http_proxy": PROXY}, PROXY),
    ("http://registry.corp/v2/", {"HTTP_PROXY": PROXY, "http_proxy": "http://other:1"}, PROXY),
    ("http://registry.corp/v2/", {"HTTP_PROXY": "", "http_proxy": PROXY}, PROXY),
    ("https://registry.corp/v2/", {"HTTP_PROXY": PROXY}, None),
    ("https://registry.corp/v2/", {"https_proxy": PROXY}, PROXY),
    ("http://registry.corp/v2/", {"HTTPS_PROXY": PROXY}, None),
    ("https://registry.corp/v2/", {"ALL_PROXY": PROXY, "all_proxy": PROXY}, None),
    # A value without a scheme is http://.
    ("https://registry.corp/", {"HTTPS_PROXY": "proxy.corp:3128"}, "http://proxy.corp:3128"),
    ("https://registry.corp/", {"HTTPS_PROXY": "socks5://proxy.corp:1080"}, "socks5://proxy.corp:1080"),
    # Names are not resolved: a name that happens to resolve to 127.0.0.1 is not loopback.
    (f"http://{TLS_HOST}:5000/v2/", {"HTTP_PROXY": PROXY}, PROXY),
    ("http://localhost.corp/", {"HTTP_PROXY": PROXY}, PROXY),
    ("http://[::2]/", {"HTTP_PROXY": PROXY}, PROXY),
])
def test_which_proxy_variable_applies(url: str, environ: dict[str, str], expected: str | None) -> None:
    assert via(url, **environ) == expected


@pytest.mark.parametrize(("no_proxy", "url", "bypassed"), [
    ("*", "https://registry.corp/", True),
    ("registry.corp", "https://registry.corp/", True),
    ("registry.corp", "https://eu.registry.corp/", True),
    ("registry.corp", "https://myregistry.corp/", False),
    ("REGISTRY.corp", "https://registry.CORP/", True),
    # A leading "." (or "*.") means subdomains only: Go's rule, where curl and requests differ.
    (".registry.corp", "https://registry.corp/", False),
    (".registry.corp", "https://eu.registry.corp/", True),
    ("*.registry.corp", "https://registry.corp/", False),
    ("*.registry.corp", "https://eu.registry.corp/", True),
    (" other.corp , registry.corp ", "https://registry.corp/", True),
    (",,", "https://registry.corp/", False),
    # Ports: an entry with a port matches that port only; a URL without one has the default.
    ("registry.corp:5000", "https://registry.corp:5000/", True),
    ("registry.corp:5000", "https://registry.corp/", False),
    ("registry.corp:443", "https://registry.corp/", True),
    ("registry.corp:80", "http://registry.corp/", True),
    # IP addresses and CIDR ranges match IP literals, never names that resolve into them.
    ("10.1.2.3", "http://10.1.2.3:5000/", True),
    ("10.1.2.3:5000", "http://10.1.2.3:5000/", True),
    ("10.1.2.3:5001", "http://10.1.2.3:5000/", False),
    ("10.0.0.0/8", "http://10.1.2.3:5000/", True),
    ("10.0.0.0/8", "http://11.1.2.3:5000/", False),
    ("127.0.0.0/8", f"http://{TLS_HOST}:5000/", False),
    ("fd00::/8", "http://[fd12::1]:5000/", True),
    ("[fd12::1]:5000", "http://[fd12::1]:5000/", True),
    ("fd12::1", "http://[fd12::1]:80/", True),
    ("10.0.0.0/8", "http://[fd12::1]/", False),
])
def test_no_proxy_follows_go_httpproxy(no_proxy: str, url: str, bypassed: bool) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        assert via(url, HTTP_PROXY=PROXY, HTTPS_PROXY=PROXY, **{name: no_proxy}) == (None if bypassed else PROXY)


def test_upper_case_no_proxy_wins_like_the_proxies() -> None:
    assert via("https://registry.corp/", HTTPS_PROXY=PROXY, NO_PROXY="other.corp", no_proxy="registry.corp") == PROXY


# -- real traffic --------------------------------------------------------------------------------


@pytest.fixture
def clean_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def dead_proxy() -> str:
    """A proxy URL nothing listens on: anything sent through it fails."""
    return f"http://127.0.0.1:{free_port()}"


def name_resolving_to_loopback() -> str:
    try:
        address = socket.gethostbyname(TLS_HOST)
    except OSError:
        address = "nothing"
    need(address.startswith("127."), f"host name {TLS_HOST} resolving to 127.0.0.1 (it resolves to {address})")
    return TLS_HOST


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, str]]:
    with start_registry(tmp_path_factory.mktemp("plain")) as registry:
        yield registry, push_random_image(registry.base_url, "web", "1.0")


@pytest.fixture
def forward_proxy() -> Iterator[ForwardProxy]:
    with start_forward_proxy() as started:
        yield started


@pytest.fixture
def health_server() -> Iterator[int]:
    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_loopback_registry_is_reached_directly_when_the_proxy_is_down(
        clean_proxy_environment: pytest.MonkeyPatch, plain_registry: tuple[RegistryProcess, str]) -> None:
    registry, digest = plain_registry
    for name in ("http_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        clean_proxy_environment.setenv(name, dead_proxy())
    for host in (registry.host, f"localhost:{registry.port}"):
        assert RegistryClient(attempts=1).resolve(parse(f"{host}/web:1.0")) == digest


def test_a_loopback_probe_is_reached_directly_when_the_proxy_is_down(
        clean_proxy_environment: pytest.MonkeyPatch, health_server: int) -> None:
    clean_proxy_environment.setenv("http_proxy", dead_proxy())
    clean_proxy_environment.setenv("HTTP_PROXY", dead_proxy())
    assert http_probe(f"http://127.0.0.1:{health_server}/health") == (True, "http 200")
    assert http_probe(f"http://localhost:{health_server}/health") == (True, "http 200")


def test_a_loopback_webhook_is_delivered_when_the_proxy_is_down(clean_proxy_environment: pytest.MonkeyPatch) -> None:
    clean_proxy_environment.setenv("HTTP_PROXY", dead_proxy())
    warnings: list[str] = []
    with start_receiver() as receiver:
        assert send(Channel(url=receiver.url(), style="json"), {"event": "deployed", "app": "web"}, 2.0,
                    warnings.append)
        assert receiver.events() == ["deployed"]
    assert warnings == []


def test_a_registry_by_name_goes_through_the_configured_proxy(
        clean_proxy_environment: pytest.MonkeyPatch, plain_registry: tuple[RegistryProcess, str],
        forward_proxy: ForwardProxy) -> None:
    registry, digest = plain_registry
    host = f"{name_resolving_to_loopback()}:{registry.port}"
    clean_proxy_environment.setenv("HTTP_PROXY", forward_proxy.url)
    client = RegistryClient(insecure=[host])
    assert client.resolve(parse(f"{host}/web:1.0")) == digest
    assert forward_proxy.seen(host) == 1


def test_no_proxy_sends_a_named_registry_direct(
        clean_proxy_environment: pytest.MonkeyPatch, plain_registry: tuple[RegistryProcess, str],
        forward_proxy: ForwardProxy) -> None:
    registry, digest = plain_registry
    name = name_resolving_to_loopback()
    host = f"{name}:{registry.port}"
    clean_proxy_environment.setenv("HTTP_PROXY", forward_proxy.url)
    clean_proxy_environment.setenv("NO_PROXY", f"example.com,{name}:{registry.port}")
    assert RegistryClient(insecure=[host]).resolve(parse(f"{host}/web:1.0")) == digest
    assert sum(forward_proxy.hosts.values()) == 0
    # ".name" is for subdomains only (Go's rule; requests would have bypassed the proxy here).
    clean_proxy_environment.setenv("NO_PROXY", f".{name}")
    assert RegistryClient(insecure=[host]).resolve(parse(f"{host}/web:1.0")) == digest
    assert forward_proxy.seen(host) == 1


def test_an_https_registry_by_name_is_tunnelled_through_the_proxy(
        clean_proxy_environment: pytest.MonkeyPatch, tmp_path: Path, forward_proxy: ForwardProxy) -> None:
    name = name_resolving_to_loopback()
    pair = make_self_signed(tmp_path, common_name="registry", dns_names=(name,))
    with start_registry(tmp_path, tls_cert=(pair.cert_path, pair.key_path)) as registry:
        digest = push_random_image(registry.base_url, "web", "1.0", verify=str(pair.cert_path))
        host = f"{name}:{registry.port}"
        clean_proxy_environment.setenv("HTTPS_PROXY", forward_proxy.url)
        assert RegistryClient(ca_bundle=str(pair.cert_path)).resolve(parse(f"{host}/web:1.0")) == digest
    assert forward_proxy.seen(host) == 1  # one CONNECT, the HEAD inside the tunnel


def test_a_probe_by_name_goes_through_the_configured_proxy(
        clean_proxy_environment: pytest.MonkeyPatch, health_server: int, forward_proxy: ForwardProxy) -> None:
    host = f"{name_resolving_to_loopback()}:{health_server}"
    clean_proxy_environment.setenv("http_proxy", forward_proxy.url)
    assert http_probe(f"http://{host}/health") == (True, "http 200")
    assert forward_proxy.seen(host) == 1
    clean_proxy_environment.setenv("no_proxy", name_resolving_to_loopback())
    assert http_probe(f"http://{host}/health") == (True, "http 200")
    assert forward_proxy.seen(host) == 1


# -- through the CLI, on the real engine ---------------------------------------------------------


def test_deploy_from_a_loopback_registry_with_a_loopback_probe_ignores_a_dead_proxy(project: Project) -> None:
    dead = dead_proxy()
    project.env.update({"http_proxy": dead, "HTTP_PROXY": dead, "https_proxy": dead, "HTTPS_PROXY": dead,
                        "NO_PROXY": "", "no_proxy": ""})
    for tag in ("good1", "good2"):
        result = project.run("deploy", f"web:{tag}")
        assert result.returncode == 0, result.stderr
        assert project.version() == tag
    history = project.history()
    assert [(entry["tag"], entry["kind"], entry["status"]) for entry in history] == [
        ("good2", "deploy", "healthy"), ("good1", "deploy", "healthy")]
