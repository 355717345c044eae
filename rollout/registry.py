"""Resolve image tags to digests over the registry HTTP API (OCI distribution spec).

One HEAD per resolve: the digest comes from Docker-Content-Digest, and only a
registry that leaves that header out, or refuses HEAD (405), costs a GET (hashed
locally: the digest of a manifest is the hash of its exact bytes, OCI distribution
spec "Pulling manifests"), because GETs count against Docker Hub's pull limit. A
registry that refused HEAD once is asked with GET for the rest of the process.
Every digest a registry sends is checked before it is used or recorded
(reference.checked_digest: sha256/sha512 in the OCI digest grammar) and, when the
manifest itself came too, against the hash of its bytes; a bad one is a registry
error (exit 5) and nothing is recorded. Authentication follows the registry's
WWW-Authenticate challenge: Basic, or a Bearer token fetched from the realm and
cached per registry and scope until it expires. Transient failures (connection
errors, timeouts, 429, 5xx) are retried a bounded number of times.

Plain HTTP is used only for loopback registries and ones listed as insecure;
everything else is HTTPS with certificate verification. Proxies are picked as
Docker picks them (rollout.proxies): never for loopback, NO_PROXY honoured.
"""

from __future__ import annotations

import base64
import collections
import email.utils
import hashlib
import ipaddress
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay

from rollout.credentials import Credentials, credentials_for
from rollout.errors import RegistryAuthError, RegistryUnreachable, TagNotFound
from rollout.proxies import ProxyRoutedSession
from rollout.reference import Reference, checked_digest, is_digest, registry_endpoint

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
DEFAULT_TOKEN_LIFETIME = 60.0  # the token spec's default when expires_in is absent
TOKEN_EXPIRY_MARGIN = 5.0  # renew a little early so a token does not expire in flight
RETRY_AFTER_CAP = 10.0
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 4.0
TOTAL_RETRY_BUDGET = 60.0  # no more attempts start after this many seconds
DIGEST_HEADER = "Docker-Content-Digest"
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}

# Registries that answered 405 to a manifest HEAD in this process: asked with GET from then on,
# and said so once (a command talks to a registry many times: `check` of 20 apps, a fleet).
_head_refused: set[str] = set()
_head_refused_lock = threading.Lock()


@dataclass(frozen=True)
class Challenge:
    """A registry's `WWW-Authenticate` challenge (RFC 7235 section 4.1; the Docker token
    authentication spec, distribution `docs/spec/auth/token.md`): the scheme and its
    parameters (`realm`, `service`, `scope` for Bearer), names lower-cased."""

    scheme: str  # "basic" or "bearer", lower-cased
    params: dict[str, str]


@dataclass
class CachedToken:
    """A Bearer token for one (registry, scope); `expires_at` is a time.monotonic() deadline
    in seconds, already shortened by TOKEN_EXPIRY_MARGIN."""

    value: str = field(repr=False)
    expires_at: float  # time.monotonic() deadline

    def fresh(self) -> bool:
        """Whether the token may still be sent (monotonic clock: not fooled by a wall-clock step)."""
        return time.monotonic() < self.expires_at


class TransientStatus(Exception):
    """A 429 or 5xx answer that is worth another attempt."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(f"{response.status_code} {response.reason}")
        self.response = response


RETRYABLE_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,  # body cut short
    TransientStatus,
)


def is_transient(error: BaseException) -> bool:
    """Whether a failed request is worth another attempt: connection errors, timeouts, a body
    cut short, 429 and 5xx answers (TransientStatus); never a TLS verification failure."""
    # A certificate that fails verification will fail the same way next time.
    return isinstance(error, RETRYABLE_ERRORS) and not isinstance(error, requests.exceptions.SSLError)


def parse_challenge(header: str | None) -> Challenge | None:
    """'Bearer realm="https://auth",service="reg",scope="repository:x:pull"' -> Challenge."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for name, value in _challenge_params(rest):
        params[name.lower()] = value
    return Challenge(scheme.lower(), params)


def _challenge_params(text: str) -> Iterable[tuple[str, str]]:
    position = 0
    while position < len(text):
        equals = text.find("=", position)
        if equals < 0:
            return
        name = text[position:equals].strip().lstrip(",").strip()
        if text[equals + 1 : equals + 2] == '"':
            end = text.find('"', equals + 2)
            end = len(text) if end < 0 else end
            yield name, text[equals + 2 : end]
            position = end + 1
        else:
            end = text.find(",", equals)
            end = len(text) if end < 0 else end
            yield name, text[equals + 1 : end].strip()
            position = end
        position = text.find(",", position)
        if position < 0:
            return
        position += 1


def host_of(registry: str) -> str:
    """'127.0.0.1:5000' -> '127.0.0.1'; '[::1]:5000' -> '::1'; 'ghcr.io' -> 'ghcr.io'."""
    if registry.startswith("["):
        return registry[1:].partition("]")[0]
    return registry.rpartition(":")[0] if registry.count(":") == 1 else registry


def is_loopback(registry: str) -> bool:
    """Whether a registry host (`host[:port]`, `[v6]:port`) is `localhost` or a loopback address
    (127.0.0.0/8, ::1): such registries are spoken to over plain HTTP, as dockerd treats
    127.0.0.0/8 as insecure by default (moby `registry/config.go`, "localhost is by default
    considered as an insecure registry")."""
    host = host_of(registry).lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(registry: str, insecure: Iterable[str] = ()) -> str:
    """Where the registry API lives; plain HTTP only for loopback or explicitly insecure registries."""
    endpoint = registry_endpoint(registry)
    insecure = set(insecure)
    plain = is_loopback(endpoint) or registry in insecure or host_of(registry) in insecure
    return f"{'http' if plain else 'https'}://{endpoint}"


def retry_after_seconds(response: requests.Response) -> float | None:
    """Retry-After as seconds (delay-seconds or an HTTP date, RFC 9110 section 10.2.3), capped
    at RETRY_AFTER_CAP; None if absent or unreadable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def backoff(state: RetryCallState) -> float:
    """Seconds to wait before the next attempt: exponential from BACKOFF_FIRST up to BACKOFF_MAX,
    except that a 429/503 with Retry-After waits what the registry asked (capped)."""
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, TransientStatus):
        asked = retry_after_seconds(error.response)
        if asked is not None:
            return asked
    return min(BACKOFF_FIRST * 2 ** (state.attempt_number - 1), BACKOFF_MAX)


def describe_failure(error: BaseException, timeout: float) -> str:
    """A short reason for a one-line message (requests' own texts run to several lines)."""
    if isinstance(error, TransientStatus):
        return f"it answered {error}"
    if isinstance(error, requests.Timeout):
        return f"no answer within {timeout:g}s"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return "the response was cut short"
    text = str(error).lower()
    for needle, reason in (
        ("refused", "connection refused"),
        ("reset", "connection reset"),
        ("name or service not known", "host name not found"),
        ("nodename nor servname", "host name not found"),
        ("temporary failure in name resolution", "host name not found"),
        ("remotedisconnected", "connection closed without an answer"),
        ("aborted", "connection aborted"),
    ):
        if needle in text:
            return reason
    return "connection failed"


def token_lifetime(body: dict[str, Any]) -> float:
    """Seconds a token stays valid: expires_in, or the spec's 60 s when absent or unusable."""
    try:
        lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
    except (TypeError, ValueError):
        return DEFAULT_TOKEN_LIFETIME
    return lifetime if lifetime > 0 else DEFAULT_TOKEN_LIFETIME


def basic_authorization(credentials: Credentials) -> str:
    """The `Authorization: Basic ...` header value for credentials (RFC 7617: base64 of
    `user:secret`). The result holds the secret: send it, never log or print it."""
    pair = f"{credentials.username}:{credentials.secret}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


class RegistryClient:
    """Talks to registries for one rollout command; keeps a connection pool and token cache.
    Safe to share between threads: one client (one session) per command, whatever its threads.

    timeout: seconds each HTTP request may take; attempts: tries of one request on transient
    failures (at least 1; none starts after TOTAL_RETRY_BUDGET seconds); docker_config: the
    directory of Docker's config.json for credentials (None: $DOCKER_CONFIG or ~/.docker);
    insecure: registries spoken to over plain HTTP; ca_bundle: a PEM file verifying TLS.
    `request_counts` counts requests sent, by (method, "manifest" | "token").
    """

    def __init__(
        self,
        *,
        docker_config: str | None = None,
        insecure: Iterable[str] = (),
        ca_bundle: str | None = None,
        timeout: float = 10.0,
        attempts: int = 4,
    ) -> None:
        self._docker_config = docker_config
        self._insecure = frozenset(insecure)
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._session = ProxyRoutedSession()
        # Passed with every request: the session lets $REQUESTS_CA_BUNDLE fill in an unset verify.
        self._verify: str | bool = ca_bundle if ca_bundle else True
        self._tokens: dict[tuple[str, str], CachedToken] = {}
        self._challenges: dict[str, Challenge] = {}
        self._credentials: dict[str, Credentials | None] = {}
        self._lock = threading.Lock()
        # Thread safety (check asks for many apps at once): registries contacted at least once,
        # and the locks that make a first contact and a token fetch happen once.
        self._contacted: set[str] = set()
        self._contact_locks: dict[str, threading.Lock] = {}
        self._token_locks: dict[tuple[str, str], threading.Lock] = {}
        self.request_counts: collections.Counter[tuple[str, str]] = collections.Counter()

    @property
    def ca_bundle(self) -> str | None:
        """`[registry] ca_bundle`: the PEM file this client verifies TLS with; None: the default trust store."""
        return self._verify if isinstance(self._verify, str) else None

    def credentials(self, registry: str) -> Credentials | None:
        """The credentials this client sends to registry (rollout.credentials.credentials_for with this
        client's Docker config directory, asked once per registry); None: anonymous. Raises ConfigError
        (exit 2) as credentials_for does. Also what a buildah build is given (rollout.buildah)."""
        if registry not in self._credentials:
            self._credentials[registry] = credentials_for(registry, self._docker_config)
        return self._credentials[registry]

    def base_url(self, registry: str) -> str:
        """`http(s)://host[:port]` of the registry's API, as the module function base_url decides
        with this client's insecure list."""
        return base_url(registry, self._insecure)

    def manifest_url(self, ref: Reference, reference: str) -> str:
        """The manifest URL of ref's repository for `reference` (a tag or a digest):
        `<base>/v2/<repository>/manifests/<reference>` (OCI distribution spec, "Pulling manifests")."""
        return f"{self.base_url(ref.registry)}/v2/{ref.repository}/manifests/{reference}"

    def resolve(self, ref: Reference) -> str:
        """The digest ref's tag points at now (a digest-only ref: its digest, once confirmed to exist).

        Returns "sha256:<64 hex>" (or sha512), checked as the module docstring says. Raises
        TagNotFound (exit 2) when there is no such manifest, RegistryAuthError or
        RegistryUnreachable (exit 5) when the registry cannot be asked or its answer is unusable.
        """
        wanted = ref.tag if ref.tag is not None else ref.digest
        if wanted is None:
            raise ValueError(f"{ref} has neither tag nor digest")
        response = self._head_manifest(ref, wanted)
        if response is None:
            return self._digest_from_body(ref, wanted)
        if response.status_code == 404:
            raise TagNotFound(_not_found_message(ref, wanted))
        sent = response.headers.get(DIGEST_HEADER)
        if not sent:  # absent, or sent empty: the same to a client
            log.info("registry %s sent no %s; hashing the manifest instead", ref.registry, DIGEST_HEADER)
            return self._digest_from_body(ref, wanted)
        digest = self._checked_header(sent, ref, wanted)
        if ref.tag is None and ref.digest is not None and _algorithm(digest) == _algorithm(ref.digest) \
                and digest != ref.digest:
            raise RegistryUnreachable(
                f"registry {ref.registry} answered a request for {ref.digest} with {DIGEST_HEADER} {digest}; "
                "nothing was changed"
            )
        return ref.digest if ref.tag is None and ref.digest is not None else digest

    def exists(self, ref: Reference) -> bool:
        """Whether the registry has a manifest for ref's digest (or, without one, its tag).
        One HEAD (a GET where the registry refuses HEAD); raises as resolve does."""
        wanted = ref.digest if ref.digest is not None else ref.tag
        if wanted is None:
            raise ValueError(f"{ref} has neither tag nor digest")
        response = self._head_manifest(ref, wanted)
        if response is None:
            response = self._manifest_request("GET", ref, wanted)
        return response.status_code != 404

    def content(self, ref: Reference, digest: str, kind: str = "manifest") -> bytes:
        """The bytes of the manifest (kind "manifest") or blob (kind "blob") `digest` in ref's repository:
        one GET, checked to hash to digest (OCI distribution spec, "Pulling manifests" / "Pulling blobs").

        Raises TagNotFound when the registry has no such content, RegistryUnreachable (exit 5) when it
        cannot be asked or what it sends does not hash to digest.
        """
        path = "manifests" if kind == "manifest" else "blobs"
        url = f"{self.base_url(ref.registry)}/v2/{ref.repository}/{path}/{digest}"
        response = self._authorized("GET", url, ref, kind)
        if response.status_code == 404:
            raise TagNotFound(_not_found_message(ref, digest))
        if response.status_code != 200:
            raise RegistryUnreachable(f"registry {ref.registry} answered {response.status_code} {response.reason}"
                                      f" to GET of {ref.repository} {kind} {digest}")
        if _hash_of(response.content, _algorithm(digest)) != digest:
            raise RegistryUnreachable(f"registry {ref.registry} served {ref.repository} {kind} {digest} with"
                                      " content that does not hash to it")
        return response.content

    def _head_manifest(self, ref: Reference, wanted: str) -> requests.Response | None:
        """The HEAD answer (200 or 404), or None when this registry refuses HEAD: then ask with GET."""
        with _head_refused_lock:
            if ref.registry in _head_refused:
                return None
        response = self._manifest_request("HEAD", ref, wanted)
        if response.status_code != 405:
            return response
        with _head_refused_lock:
            first = ref.registry not in _head_refused
            _head_refused.add(ref.registry)
        if first:
            # What containerd's resolver does too: a GET answers everything a HEAD would.
            log.info("registry %s refuses HEAD of manifests (405 Method Not Allowed); asking with GET instead",
                     ref.registry)
        return None

    def _digest_from_body(self, ref: Reference, wanted: str) -> str:
        """The manifest's digest from one GET: the hash of its exact bytes (OCI distribution spec),
        which must agree with the Docker-Content-Digest the registry sent, if any, and with the
        digest asked for, if one was."""
        response = self._manifest_request("GET", ref, wanted)
        if response.status_code == 404:
            raise TagNotFound(_not_found_message(ref, wanted))
        sent = response.headers.get(DIGEST_HEADER)
        claimed = self._checked_header(sent, ref, wanted) if sent else None
        asked = ref.digest if ref.tag is None else None
        for expected, what in ((claimed, f"its {DIGEST_HEADER} says"), (asked, "was asked for")):
            if expected is not None and _hash_of(response.content, _algorithm(expected)) != expected:
                raise RegistryUnreachable(
                    f"registry {ref.registry} served a manifest for {ref.repository}:{wanted} that hashes to "
                    f"{_hash_of(response.content, _algorithm(expected))}, not the {expected} {what}; nothing was changed"
                )
        return asked or claimed or _hash_of(response.content, "sha256")

    def _checked_header(self, sent: str, ref: Reference, wanted: str) -> str:
        return checked_digest(
            sent, f"registry {ref.registry} answered {ref.repository}:{wanted} with {DIGEST_HEADER}",
            RegistryUnreachable, hint="nothing was recorded or changed",
        )

    def _manifest_request(self, method: str, ref: Reference, wanted: str) -> requests.Response:
        response = self._authorized(method, self.manifest_url(ref, wanted), ref, "manifest")
        if response.status_code in (200, 404) or (method == "HEAD" and response.status_code == 405):
            return response
        raise RegistryUnreachable(
            f"registry {ref.registry} answered {response.status_code} {response.reason} to {method} of {ref.repository}:{wanted}"
        )

    def _authorized(self, method: str, url: str, ref: Reference, kind: str) -> requests.Response:
        """Send with the best authorization we have; on a 401 answer the challenge once.

        The first request to a registry goes alone: threads asking the same registry meanwhile
        (`rollout check` of many apps) wait for it, then send with the challenge it learnt,
        instead of each being refused once anonymously (a request more per image, per thread).
        """
        if ref.registry not in self._contacted:
            with self._first_contact(ref.registry):
                if ref.registry not in self._contacted:  # else it was made while we waited: go at once
                    try:
                        return self._authorized_request(method, url, ref, kind)
                    finally:
                        # Failed too: the others then try at once instead of one after another
                        # (a registry that is down would cost each of them its retry budget in turn).
                        self._contacted.add(ref.registry)
        return self._authorized_request(method, url, ref, kind)

    def _first_contact(self, registry: str) -> threading.Lock:
        with self._lock:
            return self._contact_locks.setdefault(registry, threading.Lock())

    def _authorized_request(self, method: str, url: str, ref: Reference, kind: str) -> requests.Response:
        scope = f"repository:{ref.repository}:pull"
        sent = self._authorization(ref.registry, scope, challenge=None)
        response = self._send(method, url, ref.registry, kind, sent)
        if response.status_code != 401:
            return self._check_forbidden(response, ref)
        challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
        if challenge is None:
            raise RegistryAuthError(f"registry {ref.registry} refused access without saying how to authenticate")
        self._challenges[ref.registry] = challenge
        self._forget_token(ref.registry, scope)
        answer = self._authorization(ref.registry, scope, challenge)
        if answer is None or answer == sent:
            raise RegistryAuthError(f"registry {ref.registry} refused {self._who(ref.registry)}")
        response = self._send(method, url, ref.registry, kind, answer)
        if response.status_code == 401 and challenge.scheme == "bearer":
            # The token service let us in but the registry did not: Docker Hub answers
            # this way for repositories that do not exist as well as for private ones.
            raise RegistryAuthError(
                f"registry {ref.registry} refused pull access to {ref.repository} for {self._who(ref.registry)}; "
                "the repository may not exist or need other credentials"
            )
        if response.status_code == 401:
            raise RegistryAuthError(f"registry {ref.registry} refused {self._who(ref.registry)}")
        return self._check_forbidden(response, ref)

    def _check_forbidden(self, response: requests.Response, ref: Reference) -> requests.Response:
        if response.status_code == 403:
            who = self._who(ref.registry)
            raise RegistryAuthError(f"registry {ref.registry} denied pull access to {ref.repository} for {who}")
        return response

    def _authorization(self, registry: str, scope: str, challenge: Challenge | None) -> str | None:
        """The Authorization header to send, using a known challenge; None means anonymous."""
        challenge = challenge or self._challenges.get(registry)
        if challenge is None:
            return None
        if challenge.scheme == "bearer":
            return f"Bearer {self._token(registry, scope, challenge)}"
        credentials = self.credentials(registry)
        if challenge.scheme == "basic" and credentials is not None:
            return basic_authorization(credentials)
        return None

    def _who(self, registry: str) -> str:
        """Who we were, for an auth error: the user name and where it came from, never the secret."""
        credentials = self.credentials(registry)
        if credentials is None:
            return f"anonymous access (no credentials for it in Docker's config.json; try docker login {registry})"
        return f"user {credentials.username!r} (credentials from {credentials.source})"

    def _token(self, registry: str, scope: str, challenge: Challenge) -> str:
        # One fetch per (registry, scope) at a time: threads wanting the same token wait for it.
        with self._lock:
            fetching = self._token_locks.setdefault((registry, scope), threading.Lock())
        with fetching:
            with self._lock:
                cached = self._tokens.get((registry, scope))
            if cached is not None and cached.fresh():
                return cached.value
            token = self._fetch_token(registry, scope, challenge)
            with self._lock:
                self._tokens[(registry, scope)] = token
            return token.value

    def _forget_token(self, registry: str, scope: str) -> None:
        with self._lock:
            self._tokens.pop((registry, scope), None)

    def _fetch_token(self, registry: str, scope: str, challenge: Challenge) -> CachedToken:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryAuthError(f"registry {registry} asked for a token but named no realm")
        params = {"scope": scope}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        credentials = self.credentials(registry)
        auth = (credentials.username, credentials.secret) if credentials else None
        response = self._send("GET", realm, registry, "token", None, params=params, auth=auth)
        if response.status_code in (401, 403):
            raise RegistryAuthError(f"the token service of registry {registry} refused {self._who(registry)}")
        if response.status_code != 200:
            raise RegistryUnreachable(f"token service of registry {registry} answered {response.status_code} {response.reason}")
        return _token_from(response, registry)

    def _send(
        self,
        method: str,
        url: str,
        registry: str,
        kind: str,
        authorization: str | None,
        **extra: Any,
    ) -> requests.Response:
        """One logical request: retried on transient failures, then RegistryUnreachable."""
        headers = {"Accept": MANIFEST_ACCEPT} if kind == "manifest" else {}
        if authorization is not None:
            headers["Authorization"] = authorization
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts) | stop_after_delay(TOTAL_RETRY_BUDGET),
            wait=backoff,
            retry=retry_if_exception(is_transient),
            before_sleep=lambda state: _log_retry(registry, state, self._timeout),
            reraise=True,
        )
        try:
            return retrying(self._attempt, method, url, kind, headers, **extra)
        except requests.exceptions.SSLError:
            raise RegistryUnreachable(
                f"registry {registry}: TLS verification failed (set a CA bundle, or list it as insecure if it is plain HTTP)"
            ) from None
        except RETRYABLE_ERRORS as error:
            attempts = retrying.statistics.get("attempt_number", self._attempts)
            raise RegistryUnreachable(
                f"registry {registry} unreachable after {attempts} attempt{'s' if attempts != 1 else ''}: "
                f"{describe_failure(error, self._timeout)}"
            ) from None
        except requests.RequestException as error:
            raise RegistryUnreachable(f"registry {registry}: {type(error).__name__}") from None

    def _attempt(self, method: str, url: str, kind: str, headers: dict[str, str], **extra: Any) -> requests.Response:
        with self._lock:
            self.request_counts[(method, kind)] += 1
        response = self._session.request(
            method, url, headers=headers, timeout=self._timeout, verify=self._verify, **extra
        )
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientStatus(response)
        return response


def _token_from(response: requests.Response, registry: str) -> CachedToken:
    try:
        body = response.json()
        value = body.get("token") or body.get("access_token")
    except (ValueError, AttributeError):
        value = None
    if not value:
        raise RegistryAuthError(f"token service of registry {registry} sent no token")
    lifetime = token_lifetime(body)
    return CachedToken(value, time.monotonic() + lifetime - min(TOKEN_EXPIRY_MARGIN, lifetime / 2))


def _log_retry(registry: str, state: RetryCallState, timeout: float) -> None:
    error = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "registry %s: attempt %d failed (%s); retrying in %.1fs",
        registry,
        state.attempt_number,
        describe_failure(error, timeout) if error else "?",
        wait,
    )


def _algorithm(digest: str) -> str:
    return digest.partition(":")[0]


def _hash_of(content: bytes, algorithm: str) -> str:
    """algorithm:hex of content; algorithm is one checked_digest accepts (sha256 or sha512)."""
    return f"{algorithm}:{_HASHES[algorithm](content).hexdigest()}"


def _not_found_message(ref: Reference, wanted: str) -> str:
    what = "digest" if is_digest(wanted) else "tag"
    return f"{what} {wanted} not found in {ref.name}"
