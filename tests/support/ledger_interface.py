"""A ledger handle that answers only what the Ledger interface (rollout.ledger.LedgerBackend) offers.

Code handed one of these that reaches past the interface (raw SQL on `.db`, `_event`, a
connection yielded by `transaction()`) fails with AttributeError, so a test proves a
caller would work unchanged on another backend.
"""

from __future__ import annotations

import inspect
from typing import Any

from rollout.ledger import LedgerBackend


def interface_names() -> set[str]:
    """The public operations and attributes LedgerBackend declares."""
    declared = {name for name in vars(LedgerBackend) if not name.startswith("_")}
    return declared | set(inspect.get_annotations(LedgerBackend))


class InterfaceOnly:
    """Wraps a real ledger; every name outside LedgerBackend raises AttributeError."""

    def __init__(self, ledger: LedgerBackend) -> None:
        self._ledger = ledger
        self._allowed = interface_names()

    def __getattr__(self, name: str) -> Any:
        if name not in self._allowed:
            raise AttributeError(f"{name!r} is not part of the Ledger interface")
        if name == "reopen":
            return lambda: InterfaceOnly(self._ledger.reopen())
        if name == "transaction":
            return lambda: _Opaque(self._ledger.transaction())
        return getattr(self._ledger, name)


class _Opaque:
    """A transaction whose `with` target is nothing a caller could run SQL on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __enter__(self) -> object:
        self.inner.__enter__()
        return object()

    def __exit__(self, *exc: object) -> Any:
        return self.inner.__exit__(*exc)
