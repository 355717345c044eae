"""The tag a new build gets: the `[apps.NAME.build] tag` template and its rendering.

Placeholders: {date} (UTC YYYYMMDD), {n} (the app's build counter in the ledger),
{git} (short commit of the build context), {base} (12 hex digits of the first base
image's digest). A rendered tag must be a valid Docker tag (distribution's reference
grammar: `[\\w][\\w.-]{0,127}`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from rollout.errors import UserError

if TYPE_CHECKING:
    import datetime as dt

DEFAULT_TAG_TEMPLATE = "{date}.{n}"
TAG_PLACEHOLDERS = {"date", "n", "git", "base"}
# github.com/distribution/reference, regexp.go: tag = [\w][\w.-]{0,127}
_VALID_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def template_problem(template: str) -> str | None:
    """What is wrong with a tag template (unknown placeholder, unbalanced braces), or None."""
    for name in re.findall(r"\{([^{}]*)\}", template):
        if name not in TAG_PLACEHOLDERS:
            return f"unknown placeholder {{{name}}}: use {', '.join('{' + p + '}' for p in sorted(TAG_PLACEHOLDERS))}"
    if template.count("{") != template.count("}"):
        return "unbalanced braces"
    return None


def render_tag(template: str, *, n: int, first_base_digest: str | None, git: str | None,
               now: dt.datetime | None = None) -> str:
    """The tag for build number `n` (1-based) from `template`; `now` defaults to the current UTC time.

    Raises UserError (exit 2) when the template needs {git} outside a git work tree, {base}
    without an external base image, or renders something that is not a valid tag.
    """
    import datetime as dt  # here, not at the top: rollout.config imports this module on every start-up

    values = {"date": (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d"), "n": str(n)}
    if "{git}" in template:
        if not git:
            raise UserError(f"tag template {template!r} uses {{git}} but the build context is not a git work tree")
        values["git"] = git
    if "{base}" in template:
        if not first_base_digest:
            raise UserError(f"tag template {template!r} uses {{base}} but the Dockerfile has no external base image")
        values["base"] = first_base_digest.split(":", 1)[-1][:12]
    tag = template
    for name, value in values.items():
        tag = tag.replace("{" + name + "}", value)
    if not _VALID_TAG.fullmatch(tag):
        raise UserError(f"tag template {template!r} renders {tag!r}, not a valid tag:"
                        " tags are letters, digits, _ . - up to 128 characters, not starting with . or -")
    return tag
