"""`rollout rebuild` and `rollout check` end to end: the real engine builds and pushes,
the real registry stores, and a counting proxy in front of it shows what each run asked.

Each test gets its own base image repository and app repository, both reached through
the proxy (127.0.0.1:PORT is loopback, so dockerd talks plain HTTP to it). The base
ships /bin/start-app, which the app's CMD runs: a new base can change what the app
serves (/base) or make it crash.

The tests about the lock, overlapping runs, a run stopped or killed part way, and the rebuild
decision read from the ledger run on both ledger backends (ledger_bed / the ledger fixture:
a SQLite file and a PostgreSQL database, issue 13); the build and registry tests use SQLite.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from rollout import lock
from rollout.ledger import LedgerBackend, open_ledger
from rollout.reference import parse
from rollout.registry import RegistryClient
from support.images import REGISTRY
from support.project import Project, http_get, write_config
from support.proxy import RegistryProxy, start_proxy

BUSYBOX = f"{REGISTRY}/rollout-test/busybox:base"

SERVING_BASE = """#!/bin/sh
echo {version} > /www/base
trap 'exit 0' TERM INT
httpd -f -p 127.0.0.1:$PORT -h /www & wait
"""
CRASHING_BASE = """#!/bin/sh
echo 'fatal: base {version} cannot start the app' >&2
exit 1
"""


@dataclass
class RebuildBed:
    project: Project
    proxy: RegistryProxy
    base: str  # proxy-host/repo:v1, as the Dockerfile names it
    app_image: str  # proxy-host/repo, as rollout.toml names it
    context: Path

    def rebuild(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.project.run("rebuild", *args)

    def entries(self) -> list[dict[str, Any]]:
        return self.project.history()

    def served_base(self) -> str | None:
        return http_get(f"http://127.0.0.1:{self.project.port}/base")

    def pushed_builds(self) -> int:
        from rollout.rebuild import pushed_builds

        ledger = self.project.open_ledger()
        try:
            return len(pushed_builds(ledger, "web"))
        finally:
            ledger.close()


def _tar(files: dict[str, tuple[str, int]]) -> io.BytesIO:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, (text, mode) in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    archive.seek(0)
    return archive


def push_base(docker_client, ref: str, script: str) -> str:  # type: ignore[no-untyped-def]
    """Build a busybox base shipping /bin/start-app, push it to ref; return its registry digest."""
    context = _tar({"Dockerfile": (f"FROM {BUSYBOX}\nCOPY start-app /bin/start-app\n", 0o644),
                    "start-app": (script, 0o755)})
    docker_client.images.build(fileobj=context, custom_context=True, tag=ref, network_mode="host", rm=True)
    for chunk in docker_client.api.push(ref, stream=True, decode=True):
        assert "error" not in chunk, chunk
    return registry_digest(ref)


def registry_digest(ref: str) -> str:
    """The digest a tag points at, asked of the registry directly (not through the counting proxy)."""
    reference = parse(ref)
    upstream = parse(f"{REGISTRY}/{reference.repository}:{reference.tag}")
    return RegistryClient().resolve(upstream)


@pytest.fixture
def bed(project: Project, docker_client, registry: str) -> Iterator[RebuildBed]:  # type: ignore[no-untyped-def]
    """A rebuild bed on a SQLite ledger."""
    yield from make_bed(project, docker_client, registry)


@pytest.fixture
def ledger_bed(ledger_project: Project, docker_client, registry: str) -> Iterator[RebuildBed]:  # type: ignore[no-untyped-def]
    """A rebuild bed once per ledger backend (ledger_project)."""
    yield from make_bed(ledger_project, docker_client, registry)


@pytest.fixture
def ledger(ledger_location: str) -> Iterator[LedgerBackend]:
    """A ledger alone (no engine), once per backend (ledger_location), closed after the test."""
    opened = open_ledger(ledger_location)
    yield opened
    opened.close()


def make_bed(project: Project, docker_client, registry: str) -> Iterator[RebuildBed]:  # type: ignore[no-untyped-def]
    """A base image (v1) and a build context for the app pushed through a fresh counting proxy,
    project's config pointed at them; the proxy closed and its images removed afterwards."""
    proxy = start_proxy(registry)
    suffix = uuid.uuid4().hex[:10]
    base = f"{proxy.host}/rt-base-{suffix}:v1"
    app_image = f"{proxy.host}/rt-app-{suffix}"
    push_base(docker_client, base, SERVING_BASE.format(version="v1"))
    context = project.root / "ctx"
    (context / "www").mkdir(parents=True)
    (context / "www" / "health").write_text("ok\n")
    (context / "www" / "index.html").write_text("<h1>first</h1>\n")
    (context / "notes.log").write_text("not part of the build\n")
    (context / ".dockerignore").write_text("*.log\n")
    (context / "Dockerfile").write_text(
        f"ARG BASE={base}\nFROM ${{BASE}} AS app\nCOPY www/ /www/\nENV PORT=18080\nCMD [\"/bin/start-app\"]\n")
    write_config(project, app_image, extra='\n[apps.web.build]\ncontext = "ctx"\n')
    yield RebuildBed(project, proxy, base, app_image, context)
    host = proxy.host
    proxy.close()
    for image in docker_client.images.list(filters={"reference": f"{host}/*"}):
        for tag in image.tags:
            try:
                docker_client.images.remove(tag, force=True)
            except Exception:  # noqa: BLE001 - best effort: an image a retired container still uses
                pass


def assert_unique_tag(entry: dict[str, Any]) -> None:
    assert re.fullmatch(r"\d{8}\.\d+", entry["tag"]), entry["tag"]


def test_first_rebuild_builds_pins_the_base_pushes_a_unique_tag_and_deploys(bed: RebuildBed, docker_client) -> None:  # type: ignore[no-untyped-def]
    base_digest = registry_digest(bed.base)
    result = bed.rebuild()
    assert result.returncode == 0, result.stderr
    assert bed.served_base() == "v1"
    [entry] = bed.entries()
    assert (entry["kind"], entry["status"]) == ("rebuild", "healthy")
    assert_unique_tag(entry)
    assert entry["digest"] == registry_digest(f"{bed.app_image}:{entry['tag']}")
    assert entry["base_digests"] == {bed.base: base_digest}
    assert entry["build_key"].startswith("sha256:")
    container = docker_client.containers.get(bed.project.container)
    assert container.attrs["Config"]["Image"] == f"{bed.app_image}@{entry['digest']}"
    labels = docker_client.images.get(f"{bed.app_image}@{entry['digest']}").labels
    assert labels["rollout.build-key"] == entry["build_key"]
    assert labels["org.opencontainers.image.base.name"] == bed.base
    assert labels["org.opencontainers.image.base.digest"] == base_digest
    assert "org.opencontainers.image.created" in labels
    status = json.loads(bed.project.run("status", "--json").stdout)
    assert status["current"]["build_key"] == entry["build_key"]
    assert status["current"]["base_digests"] == {bed.base: base_digest}


def test_second_run_with_nothing_changed_costs_one_head_and_changes_nothing(bed: RebuildBed) -> None:
    assert bed.rebuild().returncode == 0
    before = bed.entries()
    bed.proxy.reset_counts()
    result = bed.rebuild()
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout and bed.base in result.stdout  # says what it checked
    assert bed.entries() == before
    assert bed.pushed_builds() == 1
    # One base image: one HEAD; the app image needs none. No GET, no upload.
    assert bed.proxy.request_counts == {("HEAD", "manifest"): 1}, bed.proxy.request_counts

    bed.proxy.reset_counts()
    result = bed.project.run("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "web: unchanged" in result.stdout
    # One HEAD for the base image, one for the app's current tag.
    assert bed.proxy.request_counts == {("HEAD", "manifest"): 2}, bed.proxy.request_counts


def test_new_base_digest_is_rebuilt_with_a_new_tag_and_deployed(bed: RebuildBed, docker_client) -> None:  # type: ignore[no-untyped-def]
    assert bed.rebuild().returncode == 0
    new_digest = push_base(docker_client, bed.base, SERVING_BASE.format(version="v2"))
    due = bed.rebuild("--check")
    assert due.returncode == 10, due.stdout + due.stderr
    checked = bed.project.run("check")
    assert checked.returncode == 10
    assert f"base {bed.base} now {new_digest}" in checked.stdout
    assert bed.pushed_builds() == 1  # --check and check never build

    result = bed.rebuild()
    assert result.returncode == 0, result.stderr
    assert bed.served_base() == "v2"
    second, first = bed.entries()
    assert second["tag"] != first["tag"]
    assert_unique_tag(second)
    assert second["base_digests"] == {bed.base: new_digest}
    assert registry_digest(f"{bed.app_image}:{first['tag']}") == first["digest"]  # the old tag was not overwritten
    assert bed.rebuild("--check").returncode == 0
    assert bed.project.run("check").returncode == 0


def test_context_change_rebuilds_but_a_dockerignored_change_does_not(bed: RebuildBed) -> None:
    assert bed.rebuild().returncode == 0
    (bed.context / "notes.log").write_text("changed, but .dockerignore excludes it\n")
    result = bed.rebuild()
    assert result.returncode == 0 and "up to date" in result.stdout, result.stdout + result.stderr
    assert len(bed.entries()) == 1

    (bed.context / "www" / "index.html").write_text("<h1>second</h1>\n")
    result = bed.rebuild()
    assert result.returncode == 0, result.stderr
    assert http_get(f"http://127.0.0.1:{bed.project.port}/index.html") == "<h1>second</h1>"
    assert [e["status"] for e in bed.entries()] == ["healthy", "healthy"]


def test_crashing_base_is_reverted_recorded_and_not_rebuilt_again(bed: RebuildBed, docker_client) -> None:  # type: ignore[no-untyped-def]
    assert bed.rebuild().returncode == 0
    push_base(docker_client, bed.base, CRASHING_BASE.format(version="v2"))
    result = bed.rebuild()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "fatal: base v2 cannot start the app" in result.stderr
    assert bed.served_base() == "v1"
    revert, failed, good = bed.entries()
    assert (failed["kind"], failed["status"]) == ("rebuild", "failed")
    assert (revert["kind"], revert["status"], revert["reverts_to"]) == ("revert", "healthy", good["id"])

    bed.proxy.reset_counts()
    again = bed.rebuild()
    assert again.returncode == 0, again.stderr
    assert "not rebuilding" in again.stdout and failed["tag"] in again.stdout and "--force" in again.stdout
    assert len(bed.entries()) == 3 and bed.pushed_builds() == 2
    assert bed.proxy.count("POST", "blob upload") == 0
    assert bed.rebuild("--check").returncode == 0  # nothing it would do

    forced = bed.rebuild("--force")
    assert forced.returncode == 1, forced.stderr
    assert bed.pushed_builds() == 3 and bed.served_base() == "v1"


def test_overlapping_runs_build_once(ledger_bed: RebuildBed) -> None:
    bed = ledger_bed
    # Both start at once; whichever takes the app lock first builds, the other waits for it.
    runs = [bed.project.start("rebuild", "--wait", "120") for _ in range(2)]
    outputs = [run.communicate(timeout=180) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert bed.pushed_builds() == 1
    assert sum("up to date" in out for out, _ in outputs) == 1
    assert len(bed.entries()) == 1


def test_a_held_lock_exits_4_and_builds_nothing(ledger_bed: RebuildBed) -> None:
    bed = ledger_bed
    ledger = bed.project.open_ledger()
    try:
        with lock.held(ledger, "web"):
            result = bed.rebuild()
    finally:
        ledger.close()
    assert result.returncode == 4, result.stderr
    assert "locked" in result.stderr
    assert bed.pushed_builds() == 0 and bed.entries() == []


def test_no_deploy_pushes_only_and_a_later_run_deploys_that_image(bed: RebuildBed, docker_client) -> None:  # type: ignore[no-untyped-def]
    result = bed.rebuild("--no-deploy", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["action"] == "built"
    assert registry_digest(f"{bed.app_image}:{report['tag']}") == report["digest"]
    assert bed.entries() == [] and not docker_client.containers.list(filters={"name": bed.project.container})
    assert bed.rebuild("--no-deploy").returncode == 0
    assert bed.pushed_builds() == 1

    result = bed.rebuild("--json")
    assert result.returncode == 0, result.stderr
    [entry] = bed.entries()
    assert (entry["tag"], entry["digest"], entry["status"]) == (report["tag"], report["digest"], "healthy")
    assert bed.pushed_builds() == 1
    # The deploy's result object (issue 17.3): its entry, verdicts and timed phases.
    deployed = json.loads(result.stdout)["result"]
    assert (deployed["entry"], deployed["kind"], deployed["outcome"], deployed["exit_code"]) == (
        entry["id"], "rebuild", "healthy", 0)
    assert [(t["name"], t["outcome"]) for t in deployed["targets"]] == [("local", "healthy")]
    assert deployed["durations"]["verify"] > 0 and deployed["durations"]["revert"] is None


def test_a_rendered_tag_that_exists_in_the_registry_is_an_error(bed: RebuildBed, docker_client) -> None:  # type: ignore[no-untyped-def]
    write_config(bed.project, bed.app_image, extra='\n[apps.web.build]\ncontext = "ctx"\ntag = "stable"\n')
    taken = push_base(docker_client, f"{bed.app_image}:stable", SERVING_BASE.format(version="other"))
    result = bed.rebuild()
    assert result.returncode == 2
    assert "already exists in the registry" in result.stderr and "stable" in result.stderr
    assert registry_digest(f"{bed.app_image}:stable") == taken
    assert bed.pushed_builds() == 0


def test_check_reports_a_target_that_drifted(bed: RebuildBed, docker_client) -> None:  # type: ignore[no-untyped-def]
    assert bed.rebuild().returncode == 0
    docker_client.containers.get(bed.project.container).remove(force=True)
    result = bed.project.run("check", "--json")
    assert result.returncode == 10
    [report] = json.loads(result.stdout)
    assert report["changed"] and any("target local runs nothing" in line for line in report["changes"])


def test_check_says_a_stopped_target_is_stopped(bed: RebuildBed, docker_client) -> None:  # type: ignore[no-untyped-def]
    assert bed.rebuild().returncode == 0
    docker_client.containers.get(bed.project.container).stop()
    result = bed.project.run("check", "--json")
    assert result.returncode == 10
    [report] = json.loads(result.stdout)
    assert any(line.startswith("target local is stopped (") for line in report["changes"]), report["changes"]


def test_bad_build_config_names_the_file_and_key(bed: RebuildBed) -> None:
    write_config(bed.project, bed.app_image, extra='\n[apps.web.build]\ncontext = "ctx"\nstage = "app"\n')
    result = bed.rebuild()
    assert result.returncode == 2
    assert str(bed.project.config) in result.stderr and "apps.web.build.stage" in result.stderr


def test_the_hashed_files_are_the_files_the_docker_cli_sends(tmp_path: Path, docker_client, registry: str) -> None:  # type: ignore[no-untyped-def]
    from rollout.build_context import context_files

    files = ["app.py", "README.md", "docs/guide.md", "docs/keep.md", "docs/drop.md", "build/out.o", "src/a.tmp",
             "src/deep/b.tmp", "src/deep/c.py", "Secret.env", "logs/x/y.log", "weird name.txt"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / ".dockerignore").write_text(
        "# comment\n*.md\ndocs/*.md\n!docs/keep.md\nbuild\n**/*.tmp\n/secret.env\nlogs/**\n!logs/x\n")
    (tmp_path / "Dockerfile").write_text(f"FROM {BUSYBOX}\nCOPY . /ctx/\n")
    tag = f"rt-context-{uuid.uuid4().hex[:8]}"
    built = subprocess.run(["docker", "build", "-q", "--network", "host", "-t", tag, str(tmp_path)],
                           capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=120)
    assert built.returncode == 0, built.stderr
    try:
        listing = docker_client.containers.run(tag, ["find", "/ctx", "-mindepth", "1"], network_mode="none", remove=True)
    finally:
        docker_client.images.remove(tag, force=True)
    sent = sorted(line[len("/ctx/"):] for line in listing.decode().splitlines())
    assert context_files(tmp_path, tmp_path / "Dockerfile") == sent


def test_a_failing_build_pushes_nothing_and_is_tried_again_next_run(bed: RebuildBed) -> None:
    dockerfile = bed.context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN echo 'cannot fetch dependency' >&2 && exit 3\n")
    for _ in range(2):  # not remembered as done: nothing was pushed or deployed
        result = bed.rebuild()
        assert result.returncode == 2, result.stderr
        assert "building" in result.stderr and "failed" in result.stderr and "Traceback" not in result.stderr
        assert "cannot fetch dependency" in result.stderr and "\x1b" not in result.stderr  # last lines, plain text
    assert bed.pushed_builds() == 0 and bed.entries() == []
    assert json.loads(bed.rebuild("--check", "--json").stdout)["action"] == "rebuild-due"


# -- the decision alone, on a real ledger (no engine) ------------------------------------


def remember(ledger: LedgerBackend, tag: str, key: str, status: str | None) -> None:
    """A pushed build, and (unless status is None) its rebuild entry finished with status."""
    from rollout import ledger as L
    from rollout.rebuild import PushedBuild, record_push

    digest = "sha256:" + (tag * 64)[:64]
    record_push(ledger, PushedBuild("web", "reg.lan/web", tag, digest, key, {}, at="", deploy=status is not None))
    if status is not None:
        entry = ledger.record(L.NewEntry(app="web", repository="reg.lan/web", tag=tag, digest=digest,
                                         kind=L.REBUILD, build_key=key))
        ledger.set_status(entry.id, status)


@pytest.mark.parametrize("history, key, expected", [
    ([], "k1", "build"),
    ([("a", "k1", "healthy")], "k1", "up-to-date"),
    ([("a", "k1", "healthy")], "k2", "build"),
    ([("a", "k1", "healthy"), ("b", "k2", "failed")], "k2", "failed-before"),
    # The base went back to what build a had: a still runs (the failed b was reverted).
    ([("a", "k1", "healthy"), ("b", "k2", "failed")], "k1", "up-to-date"),
    # The base went back, but c runs now: deploy a's image again, no new build.
    ([("a", "k1", "healthy"), ("c", "k3", "healthy")], "k1", "deploy-existing"),
    ([("a", "k1", None)], "k1", "deploy-existing"),  # pushed with --no-deploy
    ([("a", "k1", "interrupted")], "k1", "deploy-existing"),
])
def test_decision(ledger: LedgerBackend, history: list[tuple[str, str, str | None]], key: str,
                  expected: str) -> None:
    from rollout.rebuild import decide

    for tag, build_key, status in history:
        remember(ledger, tag, build_key, status)
    assert decide(ledger, "web", key).action == expected
    assert decide(ledger, "web", key, force=True).action == "build"


def test_no_deploy_counts_a_pushed_build_as_up_to_date(ledger: LedgerBackend) -> None:
    from rollout.rebuild import decide

    remember(ledger, "a", "k1", None)
    assert decide(ledger, "web", "k1", no_deploy=True).action == "up-to-date"


def test_sigterm_during_the_deploy_reverts_and_the_next_run_deploys_the_same_build(ledger_bed: RebuildBed, docker_client) -> None:  # type: ignore[no-untyped-def]
    import signal

    bed = ledger_bed
    # Stable for 4 s: the stop surely lands while the new build is being verified.
    write_config(bed.project, bed.app_image, stable=4, extra='\n[apps.web.build]\ncontext = "ctx"\n')
    assert bed.rebuild().returncode == 0
    push_base(docker_client, bed.base, SERVING_BASE.format(version="v2"))
    run = bed.project.start("rebuild")
    assert run.stderr is not None
    seen = []
    for line in run.stderr:  # stop it while the new build is being verified (systemd stopping the unit)
        seen.append(line)
        if line.startswith("[local] "):
            run.send_signal(signal.SIGTERM)
            break
    rest = run.communicate(timeout=120)
    assert run.returncode == 143, "".join(seen) + rest[1]
    assert bed.served_base() == "v1"
    assert bed.pushed_builds() == 2
    interrupted = next(e for e in bed.entries() if e["kind"] == "rebuild" and e["status"] != "healthy")
    assert interrupted["status"] == "interrupted"

    result = bed.rebuild()
    assert result.returncode == 0, result.stderr
    assert bed.pushed_builds() == 2  # the image built before the stop is deployed, not built again
    assert bed.served_base() == "v2"
    assert bed.entries()[0]["digest"] == interrupted["digest"]


def test_a_run_killed_between_push_and_record_is_finished_by_the_next_without_building_again(
        ledger_bed: RebuildBed, docker_client) -> None:  # type: ignore[no-untyped-def]
    bed = ledger_bed
    bed.project.env["ROLLOUT_TEST_KILL_AT"] = "docker:pushed#1"
    killed = bed.rebuild()
    assert killed.returncode == -9, killed.stderr
    assert bed.pushed_builds() == 0 and bed.entries() == []
    [tag] = [t.split(":")[-1] for image in docker_client.images.list(name=bed.app_image) for t in image.tags]
    pushed = registry_digest(f"{bed.app_image}:{tag}")

    del bed.project.env["ROLLOUT_TEST_KILL_AT"]
    result = bed.rebuild()
    assert result.returncode == 0, result.stderr
    assert "pushed by a run that stopped before recording it" in result.stderr
    [entry] = bed.entries()
    # The same tag and the same pushed image: recorded and deployed, not built and pushed again.
    assert (entry["tag"], entry["digest"], entry["status"]) == (tag, pushed, "healthy")
    assert registry_digest(f"{bed.app_image}:{tag}") == pushed
    assert bed.pushed_builds() == 1


class _Image:
    def __init__(self, build_key: str, repo_digests: list[str]) -> None:
        self.labels = {"rollout.build-key": build_key}
        self.attrs = {"RepoDigests": repo_digests}


class _Engine:
    def __init__(self, image: _Image | None) -> None:
        self.images = self
        self.image = image

    def get(self, name: str) -> _Image:
        import docker.errors

        if self.image is None:
            raise docker.errors.ImageNotFound(name)
        return self.image


class _Registry:
    def __init__(self, digest: str | None) -> None:
        self.digest = digest

    def resolve(self, ref: Any) -> str:
        from rollout.errors import TagNotFound

        if self.digest is None:
            raise TagNotFound(f"tag {ref.tag} not found")
        return self.digest


HUB_APP = SimpleNamespace(name="web", registry="docker.io", repository="shop/web", image="docker.io/shop/web")
PUSHED = "sha256:" + "a" * 64


@pytest.mark.parametrize(("image", "tag_digest", "adopted"), [
    (None, None, None),  # the tag is free: build
    (_Image("key-1", [f"shop/web@{PUSHED}"]), PUSHED, PUSHED),  # Docker Hub short name in RepoDigests
    (_Image("key-1", [f"docker.io/shop/web@{PUSHED}"]), PUSHED, PUSHED),
])
def test_an_earlier_push_of_this_build_is_recognised(image: _Image | None, tag_digest: str | None,
                                                     adopted: str | None) -> None:
    from rollout.rebuild import _earlier_push_of_this_build

    inputs = SimpleNamespace(build_key="key-1")
    found = _earlier_push_of_this_build(lambda: _Engine(image), HUB_APP, inputs, "7", _Registry(tag_digest))  # type: ignore[arg-type]
    assert found == adopted


@pytest.mark.parametrize("image", [
    None,  # not built on this engine
    _Image("key-2", [f"shop/web@{PUSHED}"]),  # another build
    _Image("key-1", [f"shop/web@sha256:{'b' * 64}"]),  # this build, but the registry's tag is other content
    _Image("key-1", [f"other/web@{PUSHED}"]),  # same digest, another repository
])
def test_anything_else_under_the_tag_is_refused(image: _Image | None) -> None:
    from rollout.errors import UserError
    from rollout.rebuild import _earlier_push_of_this_build

    inputs = SimpleNamespace(build_key="key-1")
    with pytest.raises(UserError, match="already exists in the registry: tags are never overwritten"):
        _earlier_push_of_this_build(lambda: _Engine(image), HUB_APP, inputs, "7", _Registry(PUSHED))  # type: ignore[arg-type]
