"""The one check of rollout's error contract (README, "Exit codes"): a documented exit code,
one `rollout: error: ...` line on stderr, no traceback anywhere."""

from __future__ import annotations

import subprocess
from typing import Literal

ERROR = "rollout: error: "
WARNING = "rollout: warning: "
Before = Literal["nothing", "warnings", "progress"]


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *, after: Before = "nothing") -> str:
    """Assert that result failed with exit `code` and said why in exactly one error line; return that line.

    The error line is the last line of stderr. What may come before it: "nothing" (a refusal
    before any work), "warnings" (`rollout: warning:` lines only, e.g. registry retries), or
    "progress" (a command that started, e.g. `#3 deploy web good2`, then failed; still no other
    error line).
    """
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, f"exit {result.returncode}, not {code}: {result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    assert lines and lines[-1].startswith(ERROR), result.stderr[-2000:]
    earlier = lines[:-1]
    if after == "nothing":
        assert earlier == [], result.stderr[-2000:]
    elif after == "warnings":
        assert all(line.startswith(WARNING) for line in earlier), result.stderr[-2000:]
    else:
        assert not any(line.startswith(ERROR) for line in earlier), result.stderr[-2000:]
    return lines[-1]
