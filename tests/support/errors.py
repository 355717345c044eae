"""The one check of rollout's error contract (README, "Exit codes"): a documented exit code,
one `rollout: error: ...` line on stderr, no traceback anywhere."""

from __future__ import annotations

import subprocess

ERROR = "rollout: error: "
WARNING = "rollout: warning: "


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *, after_warnings: bool = False) -> str:
    """Assert that result failed with exit `code` and said why in exactly one error line; return that line.

    The error line is the last line of stderr. By default it is the only one; with
    after_warnings, `rollout: warning:` lines (retries, say) may come before it, and nothing else.
    """
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, f"exit {result.returncode}, not {code}: {result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    assert lines and lines[-1].startswith(ERROR), result.stderr[-2000:]
    earlier = lines[:-1]
    if after_warnings:
        assert all(line.startswith(WARNING) for line in earlier), result.stderr[-2000:]
    else:
        assert earlier == [], result.stderr[-2000:]
    return lines[-1]
