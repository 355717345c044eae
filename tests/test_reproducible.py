"""Reproducible builds with buildah (issue 15): real buildah, the real registry behind a counting proxy.

The app's Dockerfile has a COPY and a RUN that downloads a file from an HTTP server on
loopback (what a scheduled `--no-cache` rebuild exists to pick up, and what rollout's build
key cannot see). The base image is the test bed's busybox, reached through the proxy like
the app's own repository, so every registry request of a run is counted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from rollout import buildah
from rollout.build_context import hash_context
from rollout.config import BuildSettings
from rollout.dockerfile import read_dockerfile
from rollout.reference import parse
from rollout.registry import RegistryClient
from support.bed import need
from support.images import REGISTRY
from support.payload import PayloadServer
from support.project import Project, http_get, write_config
from support.proxy import RegistryProxy, start_proxy

BASE = "rollout-test/busybox:base"


@pytest.fixture(scope="module")
def have_buildah() -> None:
    need(shutil.which("buildah") is not None, "buildah (the Debian package `buildah`, .ci/testbed packages)")


@pytest.fixture
def payload() -> Iterator[PayloadServer]:
    served = PayloadServer(b"payload one\n")
    yield served
    served.close()


@pytest.fixture
def proxy(registry: str) -> Iterator[RegistryProxy]:
    counting = start_proxy(registry)
    yield counting
    counting.close()


def write_context(context: Path, proxy: RegistryProxy, payload: PayloadServer) -> None:
    (context / "www").mkdir(parents=True, exist_ok=True)
    (context / "www" / "health").write_text("ok\n")
    (context / "www" / "index.html").write_text("<h1>first</h1>\n")
    (context / "Dockerfile").write_text(
        f"FROM {proxy.host}/{BASE}\n"
        "COPY www/ /www/\n"
        f"RUN wget -q -O /www/payload {payload.url} && chmod 644 /www/payload\n"
        'CMD ["sh", "-c", "exec httpd -f -p 127.0.0.1:$PORT -h /www"]\n')


class Quiet:
    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


def build_and_push(context: Path, proxy: RegistryProxy, state: Path, ref: str) -> tuple[str, str]:
    """Build context with rollout.buildah (a new storage root each time), push it to ref: (image ID, digest)."""
    settings = BuildSettings(context=context, dockerfile=context / "Dockerfile")
    dockerfile = read_dockerfile(settings.dockerfile)
    bases = {str(b): RegistryClient().resolve(b) for b in dockerfile.bases(None)}
    with buildah.build(settings, dockerfile.pinned(bases), hash_context(settings).digest, labels={}, timestamp=0,
                       plain_http=[proxy.host], state_dir=state, reporter=Quiet()) as built:
        assert built.storage.parent == state and (built.storage / "root").is_dir()
        return built.image_id, built.push(parse(ref))


def registry_digest(ref: str) -> str:
    return RegistryClient().resolve(parse(ref))


def test_same_inputs_in_two_storage_roots_give_one_digest_and_a_change_gives_another(
        have_buildah: None, proxy: RegistryProxy, payload: PayloadServer, tmp_path: Path) -> None:
    context, state = tmp_path / "ctx", tmp_path / "state"
    write_context(context, proxy, payload)
    repo = f"{proxy.host}/rt-repro-{uuid.uuid4().hex[:10]}"
    first = build_and_push(context, proxy, state, f"{repo}:one")
    second = build_and_push(context, proxy, state, f"{repo}:two")
    assert first == second  # same image ID and same registry digest from two storage roots
    assert registry_digest(f"{repo}:one") == registry_digest(f"{repo}:two") == first[1]
    assert list(state.iterdir()) == []  # each build's storage root is gone

    (context / "www" / "index.html").write_text("<h1>second</h1>\n")
    changed_file = build_and_push(context, proxy, state, f"{repo}:file")
    payload.body = b"payload two\n"
    changed_download = build_and_push(context, proxy, state, f"{repo}:download")
    digests = {first[1], changed_file[1], changed_download[1]}
    assert len(digests) == 3, digests


@dataclass
class Bed:
    project: Project
    proxy: RegistryProxy
    payload: PayloadServer
    app_image: str

    def rebuild(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.project.run("rebuild", *args, timeout=600)

    def uploads(self) -> dict[tuple[str, str], int]:
        """Requests that write to the registry: blob uploads (any method) and manifest PUTs."""
        return {key: n for key, n in self.proxy.request_counts.items()
                if key[1] == "blob upload" or key == ("PUT", "manifest")}

    def events(self, name: str) -> list[dict[str, Any]]:
        rows = self.project.ledger_rows("SELECT detail FROM events WHERE event = ? ORDER BY id", (name,))
        return [json.loads(row[0]) for row in rows]


@pytest.fixture
def bed(have_buildah: None, project: Project, proxy: RegistryProxy, payload: PayloadServer, docker_client) -> Iterator[Bed]:  # type: ignore[no-untyped-def]
    write_context(project.root / "ctx", proxy, payload)
    app_image = f"{proxy.host}/rt-repro-app-{uuid.uuid4().hex[:10]}"
    write_config(project, app_image, extra='\n[apps.web.build]\ncontext = "ctx"\nbuilder = "buildah"\n'
                 'reproducible = true\n')
    yield Bed(project, proxy, payload, app_image)
    for image in docker_client.images.list(filters={"reference": f"{proxy.host}/*"}):
        for tag in image.tags:
            try:
                docker_client.images.remove(tag, force=True)
            except Exception:  # noqa: BLE001 - best effort
                pass


def test_scheduled_no_cache_rebuild_of_unchanged_content_pushes_and_deploys_nothing(bed: Bed) -> None:
    first = bed.rebuild()
    assert first.returncode == 0, first.stdout + first.stderr
    [entry] = bed.project.history()
    assert (entry["kind"], entry["status"]) == ("rebuild", "healthy")
    assert http_get(f"http://127.0.0.1:{bed.project.port}/payload") == "payload one"
    assert entry["digest"] == registry_digest(f"{REGISTRY}/{parse(bed.app_image).repository}:{entry['tag']}")

    bed.proxy.reset_counts()
    again = bed.rebuild("--no-cache", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads(again.stdout)
    assert report["action"] == "unchanged" and report["digest"] == entry["digest"], report
    assert bed.uploads() == {}, bed.proxy.request_counts  # 0 blobs uploaded, 0 manifests PUT
    assert bed.project.history() == [entry]  # nothing deployed
    [unchanged] = bed.events("build:unchanged")
    assert (unchanged["app"], unchanged["tag"], unchanged["digest"]) == ("web", entry["tag"], entry["digest"])

    # What the RUN downloads changed: the build key did not, the image did.
    bed.payload.body = b"payload two\n"
    bed.proxy.reset_counts()
    changed = bed.rebuild("--no-cache")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "--explain" in changed.stderr + changed.stdout  # the same inputs gave another image: says how to see why
    newer, older = bed.project.history()
    assert older == entry and newer["status"] == "healthy" and newer["tag"] != entry["tag"]
    assert newer["build_key"] == entry["build_key"] and newer["digest"] != entry["digest"]
    assert bed.proxy.count("PUT", "manifest") == 1
    assert http_get(f"http://127.0.0.1:{bed.project.port}/payload") == "payload two"

    explained = bed.rebuild("--explain")
    assert explained.returncode == 0, explained.stderr
    lines = explained.stdout.splitlines()
    assert any("differs" in line and "wget" in line and "layer 3/3" in line for line in lines), explained.stdout
    assert not any("COPY" in line for line in lines), explained.stdout  # the COPY layer is the same
    assert len(bed.events("build:unchanged")) == 1


def test_missing_buildah_is_exit_2_naming_the_package(bed: Bed, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    bed.project.env["PATH"] = str(empty)
    result = bed.rebuild()
    assert result.returncode == 2, result.stdout + result.stderr
    assert "buildah" in result.stderr and "apt-get install buildah" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert bed.project.history() == [] and bed.proxy.count("PUT", "manifest") == 0


def test_reproducible_needs_the_buildah_builder(project: Project) -> None:
    write_config(project, extra='\n[apps.web.build]\ncontext = "."\nreproducible = true\n')
    result = project.run("rebuild", "--check")
    assert result.returncode == 2
    assert 'reproducible = true needs builder = "buildah"' in result.stderr


def test_the_timestamp_is_source_date_epoch_else_the_commit_time_else_0(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert buildah.source_date_epoch(tmp_path) == 0
    git = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "GIT_COMMITTER_DATE": "@1700000000 +0000", "GIT_AUTHOR_DATE": "@1700000000 +0000"}
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-q", "-m", "x"], check=True, env={**os.environ, **git})
    assert buildah.source_date_epoch(tmp_path) == 1700000000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "42")
    assert buildah.source_date_epoch(tmp_path) == 42
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(buildah.UserError, match="SOURCE_DATE_EPOCH"):
        buildah.source_date_epoch(tmp_path)


def test_a_runner_recognises_the_image_another_runner_pushed_through_the_shared_ledger(
        have_buildah: None, tmp_path: Path, proxy: RegistryProxy, payload: PayloadServer, docker_client) -> None:  # type: ignore[no-untyped-def]
    from support import pg

    with pg.fresh_database() as url:
        a = Project.create(tmp_path / "runner-a", url)
        b = a.another_runner(tmp_path / "runner-b")
        try:
            app_image = f"{proxy.host}/rt-repro-shared-{uuid.uuid4().hex[:10]}"
            for runner in (a, b):  # each its own checkout: the same files, written at different times
                write_context(runner.root / "ctx", proxy, payload)
                write_config(runner, app_image, extra='\n[apps.web.build]\ncontext = "ctx"\nbuilder = "buildah"\n'
                             'reproducible = true\n')
            built = a.run("rebuild", timeout=600)
            assert built.returncode == 0, built.stdout + built.stderr
            [entry] = a.history()

            proxy.reset_counts()
            again = b.run("rebuild", "--no-cache", "--json", timeout=600)
            assert again.returncode == 0, again.stdout + again.stderr
            report = json.loads(again.stdout)
            assert (report["action"], report["tag"], report["digest"]) == ("unchanged", entry["tag"], entry["digest"])
            assert proxy.count("PUT", "manifest") == 0 and not any(k[1] == "blob upload" for k in proxy.request_counts)
            assert b.history() == [entry]
        finally:
            a.close()
            b.close()
            a.remove_containers(docker_client)


GIT_IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def commit(repo: Path, paths: list[str], when: int) -> None:
    """Commit paths (relative to repo) at the time `when` (seconds since the epoch)."""
    dates = {"GIT_COMMITTER_DATE": f"@{when} +0000", "GIT_AUTHOR_DATE": f"@{when} +0000"}
    if not (repo / ".git").exists():
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", *paths], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "x"], check=True,
                   env={**os.environ, **GIT_IDENTITY, **dates})


def test_the_timestamp_and_revision_are_the_last_commit_touching_the_context(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "f").write_text("x")
    commit(tmp_path, ["ctx"], 1700000000)
    touched = buildah.context_commit(tmp_path / "ctx")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes").write_text("y")
    commit(tmp_path, ["docs"], 1800000000)  # a commit elsewhere in the repository
    assert buildah.source_date_epoch(tmp_path / "ctx") == 1700000000
    assert buildah.context_commit(tmp_path / "ctx") == touched and touched is not None and touched[0] == 1700000000
    assert buildah.source_date_epoch(tmp_path / "docs") == 1800000000


def test_a_commit_outside_the_context_gives_the_same_image_and_no_cache_pushes_nothing(bed: Bed) -> None:
    root = bed.project.root
    commit(root, ["ctx"], 1700000000)
    first = bed.rebuild()
    assert first.returncode == 0, first.stdout + first.stderr
    [entry] = bed.project.history()
    (root / "docs").mkdir()
    (root / "docs" / "notes.md").write_text("a change to the docs\n")
    commit(root, ["docs"], 1800000000)

    bed.proxy.reset_counts()
    again = bed.rebuild("--no-cache", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads(again.stdout)
    assert report["action"] == "unchanged" and report["digest"] == entry["digest"], report
    assert bed.uploads() == {}, bed.proxy.request_counts
    assert bed.project.history() == [entry]


def test_a_key_change_that_leaves_the_image_identical_is_up_to_date_afterwards(bed: Bed) -> None:
    first = bed.rebuild()
    assert first.returncode == 0, first.stdout + first.stderr
    [entry] = bed.project.history()
    (bed.project.root / "ctx" / "notes.txt").write_text("not copied into the image\n")  # a new build key

    due = bed.project.run("rebuild", "--check")
    assert due.returncode == 10, due.stdout + due.stderr
    same = bed.rebuild("--json")
    assert same.returncode == 0, same.stdout + same.stderr
    assert json.loads(same.stdout)["action"] == "unchanged"

    check = bed.project.run("rebuild", "--check")
    assert check.returncode == 0, check.stdout + check.stderr  # not "a rebuild is due" for ever
    bed.proxy.reset_counts()
    again = bed.rebuild("--json")
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads(again.stdout)
    assert (report["action"], report["tag"], report["digest"]) == ("up-to-date", entry["tag"], entry["digest"]), report
    assert "[build]" not in again.stderr  # not built again
    assert bed.project.history() == [entry] and len(bed.events("build:unchanged")) == 1


def test_no_cache_deploys_a_same_image_that_was_pushed_but_never_deployed(bed: Bed) -> None:
    pushed = bed.rebuild("--no-deploy", "--json")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    built = json.loads(pushed.stdout)
    assert built["action"] == "built" and bed.project.history() == []

    bed.proxy.reset_counts()
    again = bed.rebuild("--no-cache", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads(again.stdout)
    assert (report["action"], report["tag"], report["digest"]) == ("deployed", built["tag"], built["digest"]), report
    assert bed.uploads() == {}, bed.proxy.request_counts  # the pushed image is deployed, not pushed again
    [entry] = bed.project.history()
    assert (entry["status"], entry["tag"], entry["digest"]) == ("healthy", built["tag"], built["digest"])
    assert http_get(f"http://127.0.0.1:{bed.project.port}/payload") == "payload one"
    assert bed.events("build:unchanged") == []


def build_processes(storage_parent: Path) -> list[int]:
    """Processes whose command line or root directory lies under storage_parent (buildah and a RUN's chroot)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            root = os.readlink(proc / "root")
        except OSError:
            continue
        if str(storage_parent) in cmdline or root.startswith(str(storage_parent)):
            found.append(int(proc.name))
    return found


def hanging_context(context: Path, proxy: RegistryProxy, payload: PayloadServer) -> BuildSettings:
    context.mkdir(parents=True)
    (context / "Dockerfile").write_text(f"FROM {proxy.host}/{BASE}\nRUN sleep 90 && wget -q -O /late {payload.url}-late\n")
    return BuildSettings(context=context, dockerfile=context / "Dockerfile")


def start_build(settings: BuildSettings, proxy: RegistryProxy, state: Path, reporter: Any) -> None:
    dockerfile = read_dockerfile(settings.dockerfile)
    bases = {str(b): RegistryClient().resolve(b) for b in dockerfile.bases(None)}
    with buildah.build(settings, dockerfile.pinned(bases), hash_context(settings).digest, labels={}, timestamp=0,
                       plain_http=[proxy.host], state_dir=state, reporter=reporter):
        raise AssertionError("the build finished")


def test_a_build_past_its_deadline_is_stopped_with_its_run_steps(
        have_buildah: None, proxy: RegistryProxy, payload: PayloadServer, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings, state = hanging_context(tmp_path / "ctx", proxy, payload), tmp_path / "state"
    monkeypatch.setattr(buildah, "BUILD_TIMEOUT", 20)  # the RUN sleeps 90 s
    with pytest.raises(buildah.UserError, match="took over 20 s"):
        start_build(settings, proxy, state, Quiet())
    assert build_processes(state) == []  # buildah and the RUN's sleep are gone: the wget can never come
    assert payload.paths == [] and list(state.iterdir()) == []


class Interrupting(Quiet):
    def info(self, message: str) -> None:
        if "RUN sleep" in message:
            raise KeyboardInterrupt  # as a SIGINT arriving while the RUN step runs


def test_an_interrupt_during_a_build_stops_it_at_once(
        have_buildah: None, proxy: RegistryProxy, payload: PayloadServer, tmp_path: Path) -> None:
    settings, state = hanging_context(tmp_path / "ctx", proxy, payload), tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        start_build(settings, proxy, state, Interrupting())
    assert build_processes(state) == []  # not waited for: the RUN never got to its wget
    assert payload.paths == [] and list(state.iterdir()) == []


def test_another_users_checkout_gives_its_commit_time_and_a_broken_one_is_exit_2(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    checkout = tmp_path / "theirs"
    (checkout / "ctx").mkdir(parents=True)
    (checkout / "ctx" / "f").write_text("x")
    commit(checkout, ["ctx"], 1700000000)
    subprocess.run(["chown", "-R", "65534:65534", str(checkout)], check=True)  # as a CI user's checkout, rollout as root
    assert buildah.source_date_epoch(checkout / "ctx") == 1700000000  # not 0 ("detected dubious ownership")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / ".git").write_text(f"gitdir: {tmp_path / 'gone'}\n")  # a worktree whose repository was removed
    with pytest.raises(buildah.UserError, match="git cannot read the last commit.*SOURCE_DATE_EPOCH") as caught:
        buildah.source_date_epoch(broken)
    assert caught.value.exit_code == 2

    no_git = tmp_path / "bin"
    no_git.mkdir()
    monkeypatch.setenv("PATH", str(no_git))
    with pytest.raises(buildah.UserError, match="install git, or set SOURCE_DATE_EPOCH"):
        buildah.source_date_epoch(checkout / "ctx")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "42")
    assert buildah.source_date_epoch(broken) == 42  # the way out the message names


@pytest.mark.parametrize("value", ["²", "99999999999999", "-1", "1.5"])
def test_a_source_date_epoch_that_is_no_usable_time_is_exit_2(tmp_path: Path, monkeypatch, value: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    with pytest.raises(buildah.UserError, match="SOURCE_DATE_EPOCH=.* is not a whole number") as caught:
        buildah.source_date_epoch(tmp_path)
    assert caught.value.exit_code == 2


def test_the_latest_accepted_source_date_epoch_is_a_writable_time(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(buildah.EPOCH_MAX))
    assert buildah.rfc3339(buildah.source_date_epoch(tmp_path)) == "9999-12-31T23:59:59+00:00"


@pytest.mark.parametrize("option", ["--no-cache", "--force", "--check", "--no-deploy"])
def test_explain_refuses_the_options_it_would_ignore(project: Project, option: str) -> None:
    write_config(project, extra='\n[apps.web.build]\ncontext = "."\n')
    result = project.run("rebuild", "--explain", option)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"takes no {option}" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert project.history() == []


def test_buildah_without_root_is_exit_2_saying_so(have_buildah: None) -> None:
    script = ("import sys\nfrom rollout import buildah\ntry:\n    buildah.binary()\nexcept buildah.UserError as e:\n"
              "    print(e)\n    sys.exit(e.exit_code)\n")
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "as root" in result.stdout and "user id 65534" in result.stdout



def test_a_storage_root_left_by_a_killed_run_goes_at_the_next_build_and_a_live_one_stays(
        have_buildah: None, proxy: RegistryProxy, payload: PayloadServer, tmp_path: Path) -> None:
    import fcntl
    state = tmp_path / "state"
    left, live = state / "buildah-killed", state / "buildah-live"
    for root in (left, live):  # what a run killed by SIGKILL leaves: its root and a lock file nobody holds
        (root / "root" / "vfs").mkdir(parents=True)
        (root / buildah.LOCK_FILE).touch()
    held = os.open(live / buildah.LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a build running meanwhile holds it
        context = tmp_path / "ctx"
        write_context(context, proxy, payload)
        build_and_push(context, proxy, state, f"{proxy.host}/rt-repro-stale-{uuid.uuid4().hex[:10]}:one")
        assert not left.exists() and (live / "root" / "vfs").is_dir()
        assert list(state.iterdir()) == [live]
    finally:
        os.close(held)
