"""Which HTTP proxy a request of rollout's goes through, decided the way Docker decides it.

rollout's own HTTP traffic (registry API and token services, the HTTP health probe,
notification webhooks) follows one rule, the one of Go's `net/http.ProxyFromEnvironment`,
implemented in golang.org/x/net/http/httpproxy/proxy.go and used by the docker CLI and
daemon and by kubectl, so rollout reaches a host exactly when they do:

- HTTPS_PROXY (or https_proxy) for https URLs, HTTP_PROXY (or http_proxy) for http URLs;
  the upper-case name wins when both are set and non-empty. ALL_PROXY is not used.
  A value without a scheme ("proxy:3128") means http://proxy:3128.
- Never for loopback: "localhost", 127.0.0.0/8 and ::1, whatever NO_PROXY says.
- NO_PROXY (or no_proxy): comma-separated; "*" alone bypasses everything; an IP address
  (optionally with :port) or a CIDR range matches IP literals; "example.com" matches it and
  its subdomains, ".example.com" and "*.example.com" subdomains only; a ":port" suffix
  restricts an entry to that port (default ports 80/443 when the URL has none).
- The decision is made on the host name as written in the URL, never on what it resolves
  to: "registry.test" that resolves to 127.0.0.1 is not loopback to this rule (nor to Go's).

requests and urllib read the same variables but by other rules (no loopback exception, a
different NO_PROXY grammar, ALL_PROXY honoured, and on macOS a lookup that may resolve
names), so the sessions and openers made here never consult the environment themselves.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

_DEFAULT_PORTS = {"http": "80", "https": "443"}
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class _DomainRule:
    suffix: str  # always starts with "."
    also_exact: bool  # "example.com" matches example.com itself; ".example.com" does not
    port: str


@dataclass(frozen=True)
class _AddressRule:
    address: IPAddress
    port: str


@dataclass(frozen=True)
class NoProxy:
    """A parsed NO_PROXY value (httpproxy's config.init)."""

    everything: bool = False
    networks: tuple[IPNetwork, ...] = ()
    addresses: tuple[_AddressRule, ...] = ()
    domains: tuple[_DomainRule, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "NoProxy":
        """Entries that fit no form are ignored, as Go ignores them."""
        networks: list[IPNetwork] = []
        addresses: list[_AddressRule] = []
        domains: list[_DomainRule] = []
        for raw in text.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                return cls(everything=True)
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    pass
                continue
            host, port = _split_host_port(entry)
            if not host:
                continue
            address = _ip(host)
            if address is not None:
                addresses.append(_AddressRule(address, port))
                continue
            host = host[1:] if host.startswith("*.") else host
            also_exact = not host.startswith(".")
            domains.append(_DomainRule(host if not also_exact else "." + host, also_exact, port))
        return cls(False, tuple(networks), tuple(addresses), tuple(domains))

    def bypasses(self, host: str, port: str) -> bool:
        """Whether NO_PROXY sends host:port direct (host lower-case, without brackets)."""
        if self.everything:
            return True
        address = _ip(host)
        if address is not None:
            if any(address in network for network in self.networks if network.version == address.version):
                return True
            if any(rule.address == address and rule.port in ("", port) for rule in self.addresses):
                return True
        return any(
            (host.endswith(rule.suffix) or (rule.also_exact and host == rule.suffix[1:])) and rule.port in ("", port)
            for rule in self.domains
        )


def proxies_for(url: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The proxy for url as requests' `proxies` mapping: {"http": proxy} or {"https": proxy},
    or {} when the request goes direct. environ defaults to os.environ, read on every call."""
    env = os.environ if environ is None else environ
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        proxy = _first_set(env, "HTTPS_PROXY", "https_proxy")
    elif scheme == "http":
        proxy = _first_set(env, "HTTP_PROXY", "http_proxy")
    else:
        return {}
    host = (parts.hostname or "").lower()
    if not proxy or not host or is_loopback_host(host):
        return {}
    try:
        port = str(parts.port) if parts.port is not None else _DEFAULT_PORTS[scheme]
    except ValueError:  # a port out of range: let the request itself fail on it
        return {}
    if NoProxy.parse(_first_set(env, "NO_PROXY", "no_proxy")).bypasses(host, port):
        return {}
    return {scheme: _proxy_url(proxy)}


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8, ::1 (also IPv4-mapped), by the name as written: nothing is resolved."""
    host = host.lower().strip("[]")
    if host == "localhost":
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


class ProxyRoutedSession(requests.Session):
    """A requests Session whose every request, and every redirect, takes the proxy proxies_for
    picks for its URL. requests' own reading of the environment is off (trust_env), so it
    neither adds a proxy by its own rules nor reads ~/.netrc (which Docker does not read
    either); REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE still apply when a request does not set its
    own CA bundle, as they did with trust_env on."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        """requests.Session.request with `proxies` replaced by proxies_for(url) (any given is ignored)."""
        kwargs["proxies"] = proxies_for(url.decode() if isinstance(url, bytes) else url)
        if kwargs.get("verify") in (None, True):
            kwargs["verify"] = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        return super().request(method, url, *args, **kwargs)

    def rebuild_proxies(self, prepared_request: requests.PreparedRequest, proxies: Any) -> dict[str, str]:
        """requests' hook on each redirect: the proxy (and its Proxy-Authorization) for the new URL."""
        # A redirect may lead to another host: decide again for where it leads.
        return super().rebuild_proxies(prepared_request, proxies_for(str(prepared_request.url)))


class ProxyRoutedHandler(urllib.request.ProxyHandler):
    """urllib's handler for the same rule: give it to build_opener (it replaces the default
    ProxyHandler, which would apply urllib's own environment rules)."""

    def __init__(self) -> None:
        super().__init__({})  # no scheme -> proxy table: every request is decided below

    def http_open(self, request: urllib.request.Request) -> Any:
        """urllib's hook for http:// requests: route it by proxies_for (see _route)."""
        return self._route(request)

    def https_open(self, request: urllib.request.Request) -> Any:
        """urllib's hook for https:// requests: route it by proxies_for (see _route)."""
        return self._route(request)

    def _route(self, request: urllib.request.Request) -> Any:
        """Point the request at its proxy, if any; returning None lets HTTP(S)Handler send it."""
        proxy = proxies_for(request.full_url).get(request.type)
        if not proxy:
            return None
        parts = urllib.parse.urlsplit(proxy)
        if parts.username is not None:
            pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            request.add_header("Proxy-authorization", "Basic " + base64.b64encode(pair.encode()).decode("ascii"))
        original = request.type
        request.set_proxy(parts.netloc.rpartition("@")[2], parts.scheme)
        if original == "http" and parts.scheme != "http":
            # As urllib's own ProxyHandler: the handlers for the proxy's scheme must send it.
            return self.parent.open(request, timeout=request.timeout)
        return None


def _proxy_url(value: str) -> str:
    """Go's parseProxy: a value with no usable scheme is taken as http://value."""
    scheme, separator, _ = value.partition("://")
    if not separator or scheme.lower() not in _PROXY_SCHEMES:
        return "http://" + value
    return value


def _first_set(env: Mapping[str, str], *names: str) -> str:
    return next((env[name] for name in names if env.get(name)), "")


def _split_host_port(entry: str) -> tuple[str, str]:
    """'host:80' -> ('host', '80'); '[::1]:80' -> ('::1', '80'); 'host' and '::1' -> no port."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""


def _ip(host: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    # Go compares an IPv4-mapped IPv6 address as the IPv4 address it carries.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
