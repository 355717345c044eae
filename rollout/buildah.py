"""The buildah builder (`[apps.NAME.build] builder = "buildah"`): a build whose image is known before any push.

The classic docker builder stamps every build with the current time (the image config's
`created`, each history entry, every file's mtime in a layer), so two builds of the same
inputs never have the same image. `buildah bud --timestamp T` writes T everywhere instead:
the same Dockerfile and context then give the same image ID (the config digest) in any
storage root, on any machine with the same buildah, the base images pinned by digest.

Each build runs in a storage root of its own (a temporary directory under the state
directory, removed afterwards): no cache, no image left behind, nothing shared between
two runs on one runner. Storage driver vfs and `--isolation chroot`, so it needs neither
fuse-overlayfs nor a user namespace (it needs root, as the docker engine does).

Plain HTTP is allowed only for the registries rollout itself reaches over plain HTTP
(loopback ones and `[registry] insecure`, rollout.registry.base_url), through a
registries.conf written for the build (containers-registries.conf(5) `insecure = true`),
never with buildah's global `--tls-verify=false`.

Credentials and the CA bundle are the ones rollout's own registry client uses
(rollout.registry.RegistryClient.credentials and .ca_bundle): for each registry the build
talks to (its FROM images' and the push destination's), what rollout.credentials found
(credHelpers, credsStore, config.json `auths` with `auth` or `username`/`password`) is
written into a containers-auth.json(5) of the build's own (mode 0600, in its storage root,
removed with it) passed as `--authfile`, and `[registry] ca_bundle` is copied into a
containers-certs.d(5) directory passed as `--cert-dir`. Secrets only ever go into that file:
never on a command line (`ps`), into the environment, the output or the ledger.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

from rollout.build_context import PINNED_DOCKERFILE, build_context_tar
from rollout.credentials import TOKEN_USERNAME, Credentials
from rollout.errors import ConfigError, RegistryUnreachable, UserError, one_line
from rollout.reference import Reference, checked_digest

PACKAGE = "buildah"  # the Debian (and Fedora) package with the buildah binary
BUILD_TIMEOUT = 1800  # seconds one `buildah bud` or `buildah push` may take
STOP_GRACE = 10  # seconds a stopped build has to end after SIGTERM before SIGKILL
LOG_LINES = 20  # the last lines of a failed build that are shown
EPOCH_MAX = 253402300799  # 9999-12-31T23:59:59Z: the last second RFC 3339 (and Python's datetime) can write
LOCK_FILE = "lock"  # in each storage root: flock'ed while a build uses it
LOCAL_NAME = "localhost/rollout-build"  # the image's name in the build's own storage (never pushed as such)
AUTH_FILE = "auth.json"  # in each storage root: the build's containers-auth.json(5), mode 0600
CERT_DIR = "certs"  # in each storage root: the build's containers-certs.d(5) directory (--cert-dir)


class Reporter(Protocol):
    """Where build steps are told (rollout.rebuild.Reporter)."""

    def info(self, message: str) -> None:
        """One line: a build step."""
        ...

    def warn(self, message: str) -> None:
        """One line that needs a look (a failed build's log)."""
        ...


def binary() -> str:
    """The buildah executable's path. UserError (exit 2) naming the package when it is not installed, and
    naming root when rollout does not run as root (vfs storage and chroot isolation need it; buildah's
    own error for that names neither)."""
    found = shutil.which("buildah")
    if found is None:
        raise UserError(f"builder = \"buildah\" needs the buildah program, which is not installed:"
                        f" install the `{PACKAGE}` package (Debian/Ubuntu: apt-get install {PACKAGE})")
    if os.geteuid() != 0:
        raise UserError("builder = \"buildah\" builds as root (chroot isolation, vfs storage) and rollout runs as"
                        f" user id {os.geteuid()}: run it as root, or use builder = \"docker\"")
    return found


def source_date_epoch(context: Path) -> int:
    """The build's timestamp, seconds since the epoch: $SOURCE_DATE_EPOCH when set (reproducible-builds.org's
    convention), else the time of the last commit that touched the context directory (`context_commit`;
    a commit elsewhere in the repository changes nothing), else 0 (not in a git work tree, or no commit
    touches it).

    Raises UserError (exit 2) for a SOURCE_DATE_EPOCH that is not a whole number from 0 to EPOCH_MAX,
    and as context_commit when git fails in a work tree.
    """
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is not None and value.strip() != "":
        # [0-9] and not str.isdigit(): isdigit() accepts '²', which int() refuses.
        if not re.fullmatch(r"[0-9]+", value.strip()) or int(value.strip()) > EPOCH_MAX:
            raise UserError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds from 1970 to the year 9999:"
                            " unset or fix it")
        return int(value.strip())
    commit = context_commit(context)
    return commit[0] if commit is not None else 0


def context_commit(context: Path) -> tuple[int, str] | None:
    """(commit time in seconds since the epoch, full commit hash) of the last commit that touched the
    context directory (`git log -1 -- .` run in it); None when the context is in no git work tree or
    no commit touches it.

    git runs with `-c safe.directory=<the work tree>`: as root over another user's checkout git
    otherwise refuses ("detected dubious ownership") and the timestamp would silently become 0.
    Raises UserError (exit 2) when the context is in a work tree and git fails there (or is missing):
    two runners would otherwise build different images for the same inputs without a word.
    """
    top = _work_tree(context)
    if top is None:
        return None
    command = ["git", "-c", f"safe.directory={top}", "-C", str(context), "log", "-1", "--format=%ct %H", "--", "."]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise UserError(f"reading the last commit of the build context {context} with git failed ({one_line(exc)}):"
                        " install git, or set SOURCE_DATE_EPOCH") from None
    if result.returncode != 0:
        raise UserError(f"git cannot read the last commit of the build context {context} ({one_line(result.stderr)}):"
                        " fix the checkout, or set SOURCE_DATE_EPOCH") from None
    fields = result.stdout.split()
    if len(fields) != 2 or not fields[0].isdecimal():
        return None  # no commit touches the context (all of it untracked, or a repository without commits)
    return int(fields[0]), fields[1]


def _work_tree(context: Path) -> Path | None:
    """The nearest directory at or above context holding `.git` (a directory, or a file for worktrees/submodules)."""
    for directory in [context.resolve(), *context.resolve().parents]:
        if (directory / ".git").exists():
            return directory
    return None


def rfc3339(seconds: int) -> str:
    """seconds since the epoch as RFC 3339 UTC with seconds (the OCI `created` label's form)."""
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


def registries_conf(plain_http: list[str]) -> str:
    """A containers-registries.conf(5) that lets buildah speak plain HTTP to exactly these registries."""
    return "".join(f'[[registry]]\nlocation = "{registry}"\ninsecure = true\n\n' for registry in sorted(set(plain_http)))


def auth_file() -> Path | None:
    """Docker's config.json ($DOCKER_CONFIG or ~/.docker), which buildah reads as its --authfile when rollout
    found no credentials for the build's registries (what it did before credentials were resolved, kept for
    `auths` entries holding only an `identitytoken`, which rollout's own client does not use); None without one."""
    directory = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    path = directory / "config.json"
    return path if path.is_file() else None


def auth_json(credentials: Mapping[str, Credentials | None]) -> str:
    """A containers-auth.json(5) holding credentials by registry ("host[:port]" as in image references):
    `{"auths": {"host:5000": {"auth": base64("user:secret")}}}`, or `{"identitytoken": secret}` for a
    credential helper's identity token (rollout.credentials.TOKEN_USERNAME: the form docker login and containers/image store one in). Registries mapped to None are left out."""
    auths: dict[str, dict[str, str]] = {}
    for registry, found in sorted(credentials.items()):
        if found is None:
            continue
        if found.username == TOKEN_USERNAME:
            auths[registry] = {"identitytoken": found.secret}
        else:
            auths[registry] = {"auth": base64.b64encode(f"{found.username}:{found.secret}".encode()).decode()}
    return json.dumps({"auths": auths})


def registry_args(storage: Path, credentials: Mapping[str, Credentials | None], ca_bundle: str | None) -> list[str]:
    """The options giving buildah rollout's credentials and CA bundle, for `bud` and `push`: `--authfile` with
    the build's own auth.json (written 0600 into storage) when any registry has credentials, else Docker's
    config.json when there is one (auth_file); `--cert-dir` with a copy of ca_bundle as `ca.crt` when set.

    containers/image (pkg/tlsclientconfig) adds a --cert-dir's *.crt files to the system's CA pool, as
    requests' verify=ca_bundle trusts the bundle: a registry rollout's client verifies, buildah verifies. It
    reads that directory instead of /etc/containers/certs.d/HOST (client certificates there are not used).
    Raises ConfigError (exit 2) naming ca_bundle when it cannot be read.
    """
    args: list[str] = []
    if any(found is not None for found in credentials.values()):
        path = storage / AUTH_FILE
        # Created 0600 (O_EXCL: never an existing file), so the secrets are never readable by others, not even briefly.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "w") as written:
            written.write(auth_json(credentials))
        args += ["--authfile", str(path)]
    else:
        docker = auth_file()
        args += ["--authfile", str(docker)] if docker is not None else []
    if ca_bundle:
        certs = storage / CERT_DIR
        certs.mkdir()
        try:
            shutil.copyfile(ca_bundle, certs / "ca.crt")
        except OSError as error:
            raise ConfigError(f"[registry] ca_bundle {ca_bundle} cannot be read ({error.strerror or error}):"
                              " fix the path in rollout.toml") from None
        args += ["--cert-dir", str(certs)]
    return args


@dataclass
class Build:
    """One build in its own storage root: the image ID, and pushing it."""

    storage: Path
    image_id: str  # "sha256:<64 hex>": the digest of the image config (what the image *is*)
    env: dict[str, str]
    lock: int  # the storage root's lock (a file descriptor), passed on to every buildah process
    registry_args: list[str]  # --authfile / --cert-dir (registry_args): the registries' credentials and CA

    def buildah(self, *args: str) -> list[str]:
        """The buildah command line for args, in this build's storage root."""
        return [binary(), "--root", str(self.storage / "root"), "--runroot", str(self.storage / "run"),
                "--storage-driver", "vfs", *args]

    def push(self, ref: Reference) -> str:
        """Push the image to ref (registry/repository:tag); the registry's manifest digest ("sha256:...").

        Blobs the registry already holds are not uploaded again (buildah asks first). Raises
        RegistryUnreachable (exit 5) when the push fails, takes over BUILD_TIMEOUT seconds or names
        no usable digest.
        """
        digest_file = self.storage / "pushed-digest"
        command = self.buildah("push", "--quiet", "--format", "oci", "--digestfile", str(digest_file),
                               *self.registry_args, f"{LOCAL_NAME}:latest", f"docker://{ref}")
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=self.env,
                                    stdin=subprocess.DEVNULL, pass_fds=(self.lock,))
        except subprocess.TimeoutExpired:  # run() has killed buildah
            raise RegistryUnreachable(f"pushing {ref} took over {BUILD_TIMEOUT} s: stopped") from None
        if result.returncode != 0:
            raise RegistryUnreachable(f"pushing {ref} failed: {one_line(result.stderr or result.stdout)}")
        text = digest_file.read_text().strip() if digest_file.is_file() else ""
        return checked_digest(text, f"pushing {ref}: buildah reported", RegistryUnreachable)


@contextmanager
def build(settings: Any, pinned_dockerfile: str, context_digest: str, *, labels: dict[str, str],
          timestamp: int | None, plain_http: list[str], state_dir: Path, reporter: Reporter,
          credentials: Mapping[str, Credentials | None] | None = None, ca_bundle: str | None = None) -> Iterator[Build]:
    """Build exactly the hashed context (rollout.build_context) with `buildah bud` in a new storage root
    under state_dir; yield the Build; remove the storage root afterwards.

    settings: rollout.config.BuildSettings; timestamp: seconds since the epoch for every time in
    the image (None: the current time, not reproducible); plain_http: registries reached over HTTP;
    credentials: by registry ("host[:port]"), what rollout's registry client uses for the FROM images'
    registries and the push destination (None: anonymous); ca_bundle: `[registry] ca_bundle` (registry_args).
    Raises ConfigError (exit 2) for an unreadable ca_bundle, UserError (exit 2) when buildah is missing,
    the build fails, takes over BUILD_TIMEOUT
    seconds (its whole process group is stopped) or the context changed while it was read; an
    exception while it runs (an interrupt) stops the build's process group before it propagates.
    """
    binary()  # missing: exit 2 before anything is written
    state_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_roots(state_dir, reporter)
    storage = Path(tempfile.mkdtemp(prefix="buildah-", dir=state_dir))
    lock = os.open(storage / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # Held as long as this run or any buildah it started lives (they inherit it): a root whose lock is
        # free was left by a run killed before its `finally` (SIGKILL, OOM) and goes at the next build.
        fcntl.flock(lock, fcntl.LOCK_EX)
        context = storage / "context"
        context.mkdir()
        with tempfile.TemporaryFile(dir=storage) as archive:
            sent = build_context_tar(settings, pinned_dockerfile, archive)
            if sent.digest != context_digest:
                raise UserError(f"the build context {settings.context} changed while rollout read it: run again")
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                # Our own tar of the hashed files (relative paths only): trusted as written, symlinks included,
                # which the "data" filter Python 3.14 applies by default would refuse when absolute.
                extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
                tar.extractall(context, **extra)
        conf = storage / "registries.conf"
        conf.write_text(registries_conf(plain_http))
        env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf), "BUILDAH_FORMAT": "oci"}
        made = Build(storage, "", env, lock, registry_args(storage, credentials or {}, ca_bundle))
        iid = storage / "image-id"
        # --layers: a layer per step, as docker makes them, so `rebuild --explain` can name the step that differs
        # (without it buildah squashes the Dockerfile's steps into one layer); a new storage root caches nothing.
        args = ["bud", "--layers", "--isolation", "chroot", "--network", "host", "--format", "oci", "--identity-label=false",
                "--pull=true", *made.registry_args, "-f", str(context / PINNED_DOCKERFILE), "--iidfile", str(iid),
                "-t", f"{LOCAL_NAME}:latest"]
        if timestamp is not None:
            args += ["--timestamp", str(timestamp)]
        for name, value in settings.build_args.items():
            args += ["--build-arg", f"{name}={value}"]
        for name, value in labels.items():
            args += ["--label", f"{name}={value}"]
        if settings.target:
            args += ["--target", settings.target]
        if settings.platform:
            args += ["--platform", settings.platform]
        _run_build(made.buildah(*args, str(context)), env, reporter, lock)
        made.image_id = checked_digest("sha256:" + iid.read_text().strip().removeprefix("sha256:"),
                                       "buildah's image ID", UserError)
        yield made
    finally:
        _remove(storage, reporter)
        os.close(lock)


def remove_stale_roots(state_dir: Path, reporter: Reporter) -> None:
    """Remove the storage roots under state_dir that no live run holds (their lock file is free): what a
    killed run left, gigabytes each with vfs. What a killed RUN left mounted there is unmounted first."""
    for storage in sorted(state_dir.glob("buildah-*")):
        try:
            lock = os.open(storage / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # not a root of ours, or one being created this instant (it locks next)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a build runs there
            for mount in sorted(_mounts_under(storage), key=len, reverse=True):
                subprocess.run(["umount", "--lazy", mount], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            reporter.info(f"[build] removing {storage}, left by a build that was killed")
            _remove(storage, reporter)
        finally:
            os.close(lock)


def _run_build(command: list[str], env: dict[str, str], reporter: Reporter, lock: int) -> None:
    recent: deque[str] = deque(maxlen=LOG_LINES)
    # A session of its own: the deadline and an interrupt stop buildah and every process of the build
    # (a RUN step's too), not only the buildah process.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=(lock,))
    assert process.stdout is not None
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _stop(process)

    # Reading the output blocks until buildah ends: the deadline runs beside it, not after it.
    deadline = threading.Timer(BUILD_TIMEOUT, expire)
    deadline.daemon = True
    deadline.start()
    try:
        for line in process.stdout:
            line = line.rstrip()
            if line:
                recent.append(line)
                if line.startswith("STEP "):
                    reporter.info(f"[build] {line}")
        code = process.wait()
    except BaseException:  # an interrupt (rollout's Interrupted is a BaseException) or a failing reporter
        _stop(process)
        raise
    finally:
        deadline.cancel()
        process.stdout.close()
    if expired.is_set():
        raise UserError(f"buildah bud took over {BUILD_TIMEOUT} s: stopped (a RUN step that hangs?)")
    if code != 0:
        for line in recent:
            reporter.warn(f"[build] | {line}")
        raise UserError(f"building with buildah failed (exit {code}): {one_line(recent[-1] if recent else '')}")


def _stop(process: subprocess.Popen[str]) -> None:
    """End the build's process group: SIGTERM (buildah then unmounts what it mounted), up to STOP_GRACE
    seconds for buildah to end, then SIGKILL for whatever of the group is left (a RUN's processes)."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen[str], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass  # the whole group has ended


def _mounts_under(storage: Path) -> list[str]:
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        mounts = []
    return [line.split()[4] for line in mounts if len(line.split()) > 4
            and (line.split()[4] + "/").startswith(str(storage) + "/")]


def _remove(storage: Path, reporter: Reporter) -> None:
    """Remove a build's storage root, unless something is still mounted under it (a RUN's /proc or /dev
    left by a killed buildah): deleting through a mount would delete the host's files."""
    inside = _mounts_under(storage)
    if inside:
        reporter.warn(f"left {storage} in place: {inside[0]} is still mounted under it (unmount, then remove it)")
        return
    shutil.rmtree(storage, ignore_errors=True)
