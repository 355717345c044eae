"""A Docker engine reached over tcp:// takes the proxy the docker CLI would give it (issue 11, item 5).

The docker CLI proxies a tcp:// engine by Go's rule (go-connections sockets.ConfigureTransport:
http.ProxyFromEnvironment), so a loopback engine is never proxied; rollout.proxies implements that
rule. The engine here is the real one, reached over TCP through a byte-for-byte forwarder from
127.0.0.1 to its unix socket; the proxy is a real forwarding proxy that counts what it carried.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from rollout.targets.docker import Endpoint, connect
from support.bed import TLS_HOST, need
from support.forward_proxy import ForwardProxy, start_forward_proxy
from support.ports import free_port

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy",
                   "ALL_PROXY")


def engine_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    need(host.startswith("unix://") and os.path.exists(host[len("unix://"):]), f"the Docker engine's socket ({host})")
    return host[len("unix://"):]


@contextmanager
def engine_over_tcp() -> Iterator[int]:
    """The local engine's socket served on 127.0.0.1:PORT (yielded), one unix connection per TCP one."""
    path = engine_socket()
    listener = socket.create_server(("127.0.0.1", free_port()))
    stopping = threading.Event()

    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve() -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(path)
            for source, sink in ((client, engine), (engine, client)):
                threading.Thread(target=pump, args=(source, sink), daemon=True).start()

    threading.Thread(target=serve, name="engine-over-tcp", daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        listener.close()


@pytest.fixture
def proxy_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[pytest.MonkeyPatch, ForwardProxy]]:
    """No proxy variable but the ones a test sets; HTTP(S)_PROXY point at a real counting proxy."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with start_forward_proxy() as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY"):
            monkeypatch.setenv(name, proxy.url)
        yield monkeypatch, proxy


def test_a_loopback_tcp_engine_is_reached_directly_whatever_the_proxy(
        proxy_environment: tuple[pytest.MonkeyPatch, ForwardProxy]) -> None:
    monkeypatch, proxy = proxy_environment
    with engine_over_tcp() as port:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            client = connect(Endpoint(f"tcp://{host}"))
            assert client.ping() and client.version()["ApiVersion"]
            assert proxy.seen(host) == 0, host
        # Through a proxy that is down, the engine would be unreachable: it is not.
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
        assert connect(Endpoint(f"tcp://127.0.0.1:{port}")).ping()


def test_an_engine_by_name_goes_through_the_proxy_unless_no_proxy_names_it(
        proxy_environment: tuple[pytest.MonkeyPatch, ForwardProxy]) -> None:
    monkeypatch, proxy = proxy_environment
    try:
        address = socket.gethostbyname(TLS_HOST)
    except OSError:
        address = "nothing"
    need(address.startswith("127."), f"host name {TLS_HOST} resolving to 127.0.0.1 (it resolves to {address})")
    with engine_over_tcp() as port:
        host = f"{TLS_HOST}:{port}"
        assert connect(Endpoint(f"tcp://{host}")).ping()
        through = proxy.seen(host)
        assert through >= 1  # the version request and the ping, as the docker CLI would send them
        monkeypatch.setenv("NO_PROXY", TLS_HOST)
        assert connect(Endpoint(f"tcp://{host}")).ping()
        assert proxy.seen(host) == through
