"""Naming a ledger entry on the command line: `#12` or `id:12`, `tag:1.0.5`, or a bare value.

The rule (README, "Use"), for every place a user names an entry (today `revert --to`):
- `#ID` or `id:ID` is entry ID of the app; `tag:TAG` is a tag.
- A bare value is a tag. CI build numbers are tags too (`1`, `2`, `3`), so a bare number
  that is both an entry id of this app and a tag of this app is refused (UserError, exit 2)
  naming both readings, unless both name the same entry.
- A bare number that is an entry id of this app but no tag of it still names that entry
  (what `--to 12` always meant), and the chosen entry is said.
- A tag names the newest healthy entry with that tag (a tag can be deployed several times,
  and reverted to); which one it picked is said.

Tags cannot contain `#` or `:` (Docker's reference grammar, distribution/reference), so the
prefixed forms can never be read as a tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rollout.errors import UserError
from rollout.ledger import HEALTHY, Entry, LedgerBackend
from rollout.reference import short_digest

ENTRY_PREFIXES = ("#", "id:")
TAG_PREFIX = "tag:"
_CANONICAL_ID = re.compile(r"[1-9][0-9]*")  # ASCII only: str.isdigit() also accepts "²" and "٣"
_MAX_ID = 2**63 - 1  # SQLite's INTEGER: a larger number names no entry (and would overflow the query)


@dataclass(frozen=True)
class NamedEntry:
    """The entry a text named, and one line telling the user which one it is and why."""

    entry: Entry
    how: str


def parse_entry_id(text: str) -> int:
    """The id `text` names as an entry id alone ('#12', 'id:12' or a bare '12'; `rollout show`),
    where no app's tags are in play. Raises UserError (exit 2) for anything else, or an id beyond
    SQLite's INTEGER."""
    bare = next((text[len(p):] for p in ENTRY_PREFIXES if text.startswith(p)), text)
    if _CANONICAL_ID.fullmatch(bare) is None or int(bare) > _MAX_ID:
        raise UserError(f"{text!r} is not an entry id: give '#ID' (e.g. rollout show '#12'); see `rollout history`")
    return int(bare)


def name_entry(ledger: LedgerBackend, app: str, text: str, option: str = "--to") -> NamedEntry:
    """The entry of `app` that `text` names, by the rule in this module's docstring.

    `option` is how the user gave the text (e.g. "--to"), for the messages. Raises UserError
    (exit 2) for an ambiguous bare number, an unknown or foreign entry id, a tag no entry of
    the app carries, or a tag that was never healthy.
    """
    said = f"{option} {text}".strip()
    for prefix in ENTRY_PREFIXES:
        if text.startswith(prefix):
            return _by_id(ledger, app, text[len(prefix):], said)
    if text.startswith(TAG_PREFIX):
        return _by_tag(ledger, app, text[len(TAG_PREFIX):], said)
    if not text:
        raise UserError(f"{option} needs an entry ('#ID') or a tag: see `rollout history {app}`")
    if _CANONICAL_ID.fullmatch(text) is None:
        return _by_tag(ledger, app, text, said)
    by_id = _entry_of(ledger, app, text)
    tagged = ledger.with_tag(app, text)
    if by_id is None and not tagged:
        other = _find(ledger, text)
        owner = f"entry #{text} belongs to app {other.app}" if other else f"there is no entry #{text}"
        raise UserError(f"{said}: no entry of {app} has tag {text!r} and {owner}: see `rollout history {app}`")
    if by_id is None:
        return _by_tag(ledger, app, text, said)
    if not tagged:
        return NamedEntry(by_id, f"{said}: entry #{by_id.id} ({_label(by_id)}); no entry of {app} has tag {text}")
    by_tag = _newest_healthy(tagged)
    if by_tag is not None and by_tag.id == by_id.id:
        return NamedEntry(by_id, f"{said}: entry #{by_id.id} ({_label(by_id)})")
    tag_reading = f"entry #{by_tag.id}" if by_tag is not None else f"never healthy: {_statuses(tagged)}"
    raise UserError(f"{said} is ambiguous: entry #{by_id.id} ({_label(by_id)}) or tag {text} ({tag_reading}):"
                    f" write {option} '#{text}' (or id:{text}) or {option} tag:{text}")


def _by_id(ledger: LedgerBackend, app: str, number: str, said: str) -> NamedEntry:
    if not number.isascii() or not number.isdigit():
        raise UserError(f"{said}: {number!r} is not an entry id (a number): see `rollout history {app}`")
    entry = _entry_of(ledger, app, number)
    if entry is None:
        other = _find(ledger, number)
        if other is not None:
            raise UserError(f"{said}: entry #{other.id} belongs to app {other.app}, not {app}:"
                            f" see `rollout history {app}`")
        raise UserError(f"{said}: there is no entry #{number.lstrip('0') or '0'}: see `rollout history {app}`")
    return NamedEntry(entry, f"{said}: entry #{entry.id} ({_label(entry)})")


def _by_tag(ledger: LedgerBackend, app: str, tag: str, said: str) -> NamedEntry:
    tagged = ledger.with_tag(app, tag)
    if not tagged:
        raise UserError(f"{said}: no entry of {app} has tag {tag!r}: see `rollout history {app}`")
    chosen = _newest_healthy(tagged)
    if chosen is None:
        raise UserError(f"{said}: tag {tag} of {app} was never healthy ({_statuses(tagged)}):"
                        f" choose a healthy entry from `rollout history {app}`")
    healthy = [e for e in tagged if e.status == HEALTHY]
    others = f", the newest healthy of #{', #'.join(str(e.id) for e in reversed(healthy))}" if len(healthy) > 1 else ""
    return NamedEntry(chosen, f"{said}: entry #{chosen.id} ({_label(chosen)}{others})")


def _entry_of(ledger: LedgerBackend, app: str, number: str) -> Entry | None:
    entry = _find(ledger, number)
    return entry if entry is not None and entry.app == app else None


def _find(ledger: LedgerBackend, number: str) -> Entry | None:
    """The entry with id `number` (ASCII digits), of any app; None when no id can be that large.
    The length is checked first: int() refuses more than 4300 digits (CPython's int_max_str_digits)."""
    if len(number.lstrip("0")) > len(str(_MAX_ID)) or int(number) > _MAX_ID:
        return None
    return ledger.find(int(number))


def _newest_healthy(entries: list[Entry]) -> Entry | None:
    return next((e for e in entries if e.status == HEALTHY), None)


def _label(entry: Entry) -> str:
    return f"tag {entry.tag}" if entry.tag else short_digest(entry.digest)


def _statuses(entries: list[Entry]) -> str:
    return ", ".join(f"#{e.id} {e.status}" for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
