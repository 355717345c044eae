"""Build inputs without an engine: FROM parsing, .dockerignore, the context hash, tags, build config."""

from __future__ import annotations

import datetime as dt
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout import config as configuration
from rollout.build import build_key
from rollout.build_context import PINNED_DOCKERFILE, build_context_tar, context_files, hash_context
from rollout.config import BuildSettings
from rollout.dockerfile import expand, parse_dockerfile
from rollout.tags import render_tag
from rollout.errors import ConfigError, UserError

# -- FROM parsing ----------------------------------------------------------------------


def bases(text: str, build_args: dict[str, str] | None = None, target: str | None = None) -> list[str]:
    return [str(ref) for ref in parse_dockerfile(text, build_args or {}).bases(target)]


def test_earlier_stages_and_scratch_are_not_base_images() -> None:
    text = """
FROM golang:1.22 AS build
RUN go build -o /app
FROM scratch AS empty
FROM Build AS tested
FROM gcr.io/distroless/static:nonroot
COPY --from=build /app /app
"""
    assert bases(text) == ["docker.io/library/golang:1.22", "gcr.io/distroless/static:nonroot"]


def test_global_args_defaults_and_build_args_are_substituted() -> None:
    text = """
ARG REGISTRY=registry.lan:5000
ARG VERSION=1.0 FLAVOUR="slim"
FROM $REGISTRY/base:${VERSION}-${FLAVOUR}
FROM ${OTHER:-alpine}:3.19
"""
    assert bases(text) == ["registry.lan:5000/base:1.0-slim", "docker.io/library/alpine:3.19"]
    assert bases(text, {"VERSION": "2.0", "OTHER": "debian"}) == [
        "registry.lan:5000/base:2.0-slim", "docker.io/library/alpine:3.19"]  # OTHER was never declared


def test_an_arg_declared_after_the_first_from_does_not_reach_later_froms() -> None:
    text = "FROM alpine:3.19\nARG LATE=debian\nFROM ${LATE:-busybox}\n"
    assert bases(text) == ["docker.io/library/alpine:3.19", "docker.io/library/busybox:latest"]


def test_continuation_lines_flags_and_lowercase_instructions() -> None:
    text = "from \\\n  --platform=linux/amd64 \\\n  # a comment inside\n  alpine:3.19 as Base\nRUN true\n"
    dockerfile = parse_dockerfile(text, {})
    [stage] = dockerfile.stages
    assert (stage.name, stage.flags, str(stage.base)) == ("base", ("--platform=linux/amd64",), "docker.io/library/alpine:3.19")


def test_target_limits_the_stages_to_those_up_to_it() -> None:
    text = "FROM alpine:3.19 AS test\nFROM debian:12 AS release\n"
    assert bases(text, target="test") == ["docker.io/library/alpine:3.19"]
    with pytest.raises(UserError, match="no stage named 'nope'.*test, release"):
        bases(text, target="nope")


def test_pinned_text_rewrites_each_external_from_and_keeps_everything_else() -> None:
    text = "# syntax comment\nARG V=3.19\nFROM --platform=linux/amd64 \\\n    alpine:${V} AS base\nRUN echo hi\nFROM base\nFROM debian:12\n"
    dockerfile = parse_dockerfile(text, {})
    alpine, debian = "sha256:" + "a" * 64, "sha256:" + "d" * 64
    pinned = dockerfile.pinned({"docker.io/library/alpine:3.19": alpine, "docker.io/library/debian:12": debian})
    assert pinned.splitlines() == [
        "# syntax comment", "ARG V=3.19",
        f"FROM --platform=linux/amd64 docker.io/library/alpine@{alpine} AS base",
        "RUN echo hi", "FROM base", f"FROM docker.io/library/debian@{debian}",
    ]


def test_copy_from_an_external_image_is_an_input_and_is_pinned() -> None:
    text = ("FROM alpine:3.19 AS build\nRUN true\nFROM debian:12\nCOPY --from=build /a /a\nCOPY --from=0 /b /b\n"
            "COPY --chmod=755 \\\n  --from=ghcr.io/astral-sh/uv:0.4 /uv /bin/uv\n")
    dockerfile = parse_dockerfile(text, {})
    assert [str(b) for b in dockerfile.bases()] == [
        "docker.io/library/alpine:3.19", "docker.io/library/debian:12", "ghcr.io/astral-sh/uv:0.4"]
    uv = "sha256:" + "c" * 64
    pinned = dockerfile.pinned({"ghcr.io/astral-sh/uv:0.4": uv})
    assert pinned.splitlines()[-1] == f"COPY --chmod=755 --from=ghcr.io/astral-sh/uv@{uv} /uv /bin/uv"
    assert "COPY --from=build /a /a" in pinned and "FROM alpine:3.19 AS build" in pinned


def test_final_base_follows_internal_stages_to_the_external_image() -> None:
    dockerfile = parse_dockerfile("FROM alpine:3.19 AS a\nFROM a AS b\nFROM b\n", {})
    assert str(dockerfile.final_base()) == "docker.io/library/alpine:3.19"


def test_a_from_that_names_no_image_says_which_line() -> None:
    with pytest.raises(UserError, match=r"Dockerfile:2: .*names no image"):
        parse_dockerfile("ARG BASE\nFROM ${BASE}\n", {})
    with pytest.raises(UserError, match=r"Dockerfile:1: FROM Not/Valid"):
        parse_dockerfile("FROM Not/Valid\n", {})
    with pytest.raises(UserError, match="no FROM"):
        parse_dockerfile("RUN true\n", {})


def test_expand_follows_dockers_substitution_forms() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert expand("$SET-${SET}-${UNSET}-${EMPTY:-d}-${EMPTY-d}-${SET:+alt}-${UNSET+alt}-\\$SET", env) == "x-x--d--alt--$SET"


# -- .dockerignore and the context --------------------------------------------------------


def make_context(root: Path, files: dict[str, str], ignore: str | None = None) -> BuildSettings:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if ignore is not None:
        (root / ".dockerignore").write_text(ignore)
    if not (root / "Dockerfile").exists():
        (root / "Dockerfile").write_text("FROM alpine:3.19\nCOPY . /src\n")
    return BuildSettings(context=root, dockerfile=root / "Dockerfile")


def test_dockerignore_rules_as_docker_applies_them(tmp_path: Path) -> None:
    settings = make_context(tmp_path, {
        "app.py": "", "README.md": "", "docs/guide.md": "", "docs/keep.md": "",
        "build/out.o": "", "src/a.tmp": "", "src/deep/b.tmp": "", "src/c.py": "", "Secret.env": "",
        "notes/todo.md": "",
    }, ignore="# comment\n*.md\ndocs/*.md\n!docs/keep.md\nbuild\n**/*.tmp\n/secret.env\nDockerfile\n")
    assert context_files(settings.context, settings.dockerfile) == [
        ".dockerignore", "Dockerfile",  # always sent, even when listed
        "Secret.env",  # matching is case-sensitive, as in Docker on Linux
        "app.py", "docs", "docs/keep.md",
        "notes", "notes/todo.md",  # `*.md` is anchored at the context root: `*` never crosses a /
        "src", "src/c.py", "src/deep",
    ]


def test_context_hash_is_stable_and_ignores_mtimes_and_creation_order(tmp_path: Path) -> None:
    first = make_context(tmp_path / "one", {"a.txt": "A", "dir/b.txt": "B"})
    second = make_context(tmp_path / "two", {"dir/b.txt": "B", "a.txt": "A"})
    os.utime(second.context / "a.txt", (1, 1))
    assert hash_context(first).digest == hash_context(first).digest == hash_context(second).digest


@pytest.mark.parametrize("change", ["content", "mode", "rename", "new file", "dockerfile", "build arg", "symlink"])
def test_context_hash_changes_with_what_docker_would_send(tmp_path: Path, change: str) -> None:
    settings = make_context(tmp_path, {"run.sh": "echo hi\n", "data/x": "1"}, ignore="*.log\n")
    (tmp_path / "link").symlink_to("run.sh")
    before = hash_context(settings).digest
    if change == "content":
        (tmp_path / "run.sh").write_text("echo bye\n")
    elif change == "mode":
        (tmp_path / "run.sh").chmod(0o755)
    elif change == "rename":
        (tmp_path / "data/x").rename(tmp_path / "data/y")
    elif change == "new file":
        (tmp_path / "data/z").write_text("")
    elif change == "dockerfile":
        (tmp_path / "Dockerfile").write_text("FROM alpine:3.19\nCOPY . /app\n")
    elif change == "symlink":
        (tmp_path / "link").unlink()
        (tmp_path / "link").symlink_to("data/x")
    else:
        settings = BuildSettings(settings.context, settings.dockerfile, build_args={"V": "2"})
    assert hash_context(settings).digest != before


def test_context_hash_ignores_excluded_files(tmp_path: Path) -> None:
    settings = make_context(tmp_path, {"app.py": "x", "debug.log": "1"}, ignore="*.log\n")
    before = hash_context(settings).digest
    (tmp_path / "debug.log").write_text("2")
    (tmp_path / "more.log").write_text("3")
    assert hash_context(settings).digest == before


def test_the_tar_sent_is_the_hashed_context_plus_the_pinned_dockerfile(tmp_path: Path) -> None:
    settings = make_context(tmp_path, {"app.py": "print(1)\n", "skip.log": ""}, ignore="*.log\n")
    archive = io.BytesIO()
    sent = build_context_tar(settings, "FROM alpine@sha256:" + "a" * 64 + "\n", archive)
    assert sent == hash_context(settings)
    archive.seek(0)
    with tarfile.open(fileobj=archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == [".dockerignore", ".rollout.Dockerfile", "Dockerfile", "app.py"]
        # The engine drops the pinned Dockerfile after reading it, so COPY . never copies it.
        assert tar.extractfile(".dockerignore").read().decode().splitlines() == ["*.log", PINNED_DOCKERFILE]
        assert tar.extractfile("app.py").read() == b"print(1)\n"


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8})?", fullmatch=True), st.binary(max_size=64),
                       min_size=1, max_size=6))
def test_context_hash_depends_on_content_only_not_on_where_it_lives(tmp_path_factory, files) -> None:  # type: ignore[no-untyped-def]
    # A path that is both a file and a directory's parent cannot exist; keep the leaves.
    files = {k: v for k, v in files.items() if not any(other.startswith(k + "/") for other in files)}
    digests = []
    for _ in range(2):
        root = tmp_path_factory.mktemp("ctx")
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        (root / "Dockerfile").write_text("FROM alpine:3.19\n")
        digests.append(hash_context(BuildSettings(root, root / "Dockerfile")).digest)
    assert digests[0] == digests[1]


def test_build_key_covers_bases_context_target_and_platform() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    key = build_key([("docker.io/library/alpine:3.19", a)], "sha256:ctx", None, None)
    assert key == build_key([("docker.io/library/alpine:3.19", a)], "sha256:ctx", None, None)
    assert len({key,
                build_key([("docker.io/library/alpine:3.19", b)], "sha256:ctx", None, None),
                build_key([("docker.io/library/alpine:3.19", a)], "sha256:other", None, None),
                build_key([("docker.io/library/alpine:3.19", a)], "sha256:ctx", "test", None),
                build_key([("docker.io/library/alpine:3.19", a)], "sha256:ctx", None, "linux/arm64")}) == 5


# -- tags and config ------------------------------------------------------------------------


def test_tag_template_placeholders() -> None:
    now = dt.datetime(2025, 3, 7, 23, 59, tzinfo=dt.timezone.utc)
    digest = "sha256:0123456789abcdef" + "0" * 48
    assert render_tag("{date}.{n}", n=4, first_base_digest=None, git=None, now=now) == "20250307.4"
    assert render_tag("v{n}-{git}-{base}", n=1, first_base_digest=digest, git="abc1234", now=now) == "v1-abc1234-0123456789ab"


def test_a_tag_template_that_cannot_render_is_an_error() -> None:
    with pytest.raises(UserError, match="not a git work tree"):
        render_tag("{git}", n=1, first_base_digest=None, git=None)
    with pytest.raises(UserError, match="not a valid tag"):
        render_tag("-{n}", n=1, first_base_digest=None, git=None)


def build_settings(app_name: str, table: dict[str, Any], config: Path) -> BuildSettings:
    """The app's build settings as rebuild gets them: the file checked at load, the paths on disk after."""
    data = {"apps": {app_name: {"image": "127.0.0.1:5000/web", "build": table,
                                "targets": [{"name": "local", "container": "web"}]}}}
    return configuration.require_build(configuration.parse(data, config).app(app_name), config)


def test_build_config_errors_name_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "rollout.toml"
    make_context(tmp_path / "ctx", {})
    assert build_settings("web", {"context": "ctx"}, config).dockerfile == tmp_path / "ctx" / "Dockerfile"
    cases = [
        ({"context": "ctx", "stage": "x"}, "unknown key apps.web.build.stage"),
        ({}, r"no \[apps.web.build\] table"),
        ({"dockerfile": "Dockerfile"}, "apps.web.build.context is missing"),
        ({"context": "nope"}, "apps.web.build.context = 'nope'"),
        ({"context": "ctx", "dockerfile": "Other"}, "apps.web.build.dockerfile"),
        ({"context": "ctx", "tag": "{date}-{user}"}, r"apps.web.build.tag .*unknown placeholder \{user\}"),
        ({"context": "ctx", "build_args": ["A=1"]}, "apps.web.build.build_args must be a table"),
        ({"context": "ctx", "target": 3}, "apps.web.build.target must be a string"),
    ]
    for table, message in cases:
        with pytest.raises(ConfigError, match=message) as caught:
            build_settings("web", table, config)
        assert str(config) in str(caught.value)
