"""What a test needs from the test bed (`.ci/testbed`): under CI it must be there."""

from __future__ import annotations

import os

# A name that is not loopback by name (so clients pick HTTPS) but resolves to 127.0.0.1.
TLS_HOST = "rollout-registry.test"


def need(condition: bool, what: str) -> None:
    """Fail under CI (the test bed must provide it), skip elsewhere."""
    if condition:
        return
    import pytest  # only here: benchmarks import the test bed's support modules without pytest

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is required under CI=true: run `make test` (it starts the test bed)")
    pytest.skip(f"{what} is not available: run `make test` to start the test bed")
