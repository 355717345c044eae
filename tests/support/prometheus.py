"""A real Prometheus per test, scraping an exporter the test serves on loopback (issue 17 point 7).

`.ci/testbed prometheus` only installs Debian's binary; each test starts its own server on a
free loopback port with a config it writes (SCRAPE_INTERVAL between scrapes, one job: the
exporter), so tests never share metric state. A missing binary fails under CI=true and skips
elsewhere (support.bed.need). The exporter serves what the test `set`s in the text exposition
format, and counts the scrapes it answers, so a test waits on scrapes, not on time.
"""

from __future__ import annotations

import shutil
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from support.bed import need
from support.ports import free_port
from support.routers import _process, _wait_for

SCRAPE_INTERVAL = 0.2  # seconds; Prometheus accepts sub-second intervals ("200ms")
SCRAPE_WAIT = 30.0  # seconds a test waits for scrapes before failing (a loaded machine is slow)


class Exporter:
    """Metrics served on 127.0.0.1 at /metrics: `set(series, value)` with a series written as in
    the exposition format (`name{label="v"}`); `address` is "127.0.0.1:PORT"."""

    def __init__(self) -> None:
        self._values: dict[str, float] = {}
        self._scrapes = 0
        self._changed = threading.Condition()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                with exporter._changed:
                    exporter._scrapes += 1
                    body = "".join(f"{series} {value:g}\n" for series, value in exporter._values.items()).encode()
                    exporter._changed.notify_all()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """host:port Prometheus scrapes."""
        return f"127.0.0.1:{self._server.server_address[1]}"

    def set(self, series: str, value: float) -> None:
        """Serve `series` with `value` from the next scrape on."""
        with self._changed:
            self._values[series] = value

    def wait_scraped(self, times: int = 2) -> None:
        """Wait until `times` scrapes started after this call: each scrape of one target starts
        after the one before was stored, so with times=2 what is set now is queryable."""
        with self._changed:
            until = self._scrapes + times
            if not self._changed.wait_for(lambda: self._scrapes >= until, timeout=SCRAPE_WAIT):
                raise AssertionError(f"Prometheus scraped {self.address} fewer than {times} times in {SCRAPE_WAIT} s")

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def exporter() -> Iterator[Exporter]:
    """An Exporter for the block."""
    served = Exporter()
    try:
        yield served
    finally:
        served.close()


@contextmanager
def prometheus(tmp: Path, target: str, interval: float = SCRAPE_INTERVAL) -> Iterator[str]:
    """Debian's prometheus on a free loopback port scraping `target` (host:port) every `interval`
    seconds, its data under tmp; yields its URL ("http://127.0.0.1:PORT") once it is ready."""
    binary = shutil.which("prometheus")
    need(binary is not None, "prometheus (Debian package prometheus; `.ci/testbed prometheus`)")
    assert binary is not None
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    every = f"{int(interval * 1000)}ms"
    config = tmp / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: {every}
  scrape_timeout: {every}
  evaluation_interval: 10s
scrape_configs:
  - job_name: rollout-test
    static_configs:
      - targets: ["{target}"]
""")
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    url = f"http://127.0.0.1:{port}"
    with _process(argv, tmp / "prometheus.log") as process:
        _wait_for(lambda: _ready(url), process, tmp / "prometheus.log", "prometheus")
        yield url


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False
