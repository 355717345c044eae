"""Metrics for cron-driven rollouts: a Prometheus textfile-collector file and an optional Pushgateway push.

`rollout deploy|revert|rebuild ... --metrics-file /var/lib/node_exporter/textfile/rollout.prom`
writes, after the command (whatever its outcome):

    rollout_last_run_timestamp_seconds{app,command}   when the last run ended (Unix time)
    rollout_last_run_duration_seconds{app,command}    how long it took
    rollout_last_run_exit_code{app,command}           its exit code (README: exit codes)
    rollout_last_run_success{app,command}             1 if it exited 0
    rollout_last_run_outcome{app,command,outcome}     1 for the outcome of the last run, 0 for the others
    rollout_current_info{app,tag,digest}              1: the ledger's current (newest healthy) entry
    rollout_current_entry{app}                        that entry's ledger id
    rollout_reverts_total{app}                        revert entries in the ledger (automatic and by hand)
    rollout_entries_total{app,kind,status}            ledger entries by kind and status

The last-run series of other apps and commands already in the file are kept, so
several cron jobs can share one file. The file is replaced atomically (a temporary
file in the same directory, then rename), so the collector never reads half of it.
Writing metrics never changes a command's exit code: a failure is one warning line.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from rollout.errors import EXIT_INTERNAL, one_line

if TYPE_CHECKING:
    from rollout.ledger import LedgerBackend

OUTCOMES = {0: "ok", 1: "reverted", 2: "usage_error", 3: "revert_failed", 4: "locked", 5: "unreachable",
            10: "changed", EXIT_INTERNAL: "internal_error", 130: "interrupted", 143: "interrupted"}
LAST_RUN_PREFIX = "rollout_last_run_"
PUSH_TIMEOUT = 5.0

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Run:
    """One finished command."""

    command: str
    app: str
    ended_at: float  # Unix time
    duration: float  # seconds
    exit_code: int

    @property
    def outcome(self) -> str:
        """The `outcome` label of this run's exit code (outcome_of)."""
        return outcome_of(self.exit_code)


def outcome_of(exit_code: int) -> str:
    """The `outcome` label for an exit code (README, "Exit codes"): OUTCOMES, "interrupted" for
    any other 128 + signal, "error" for a code rollout does not document."""
    return OUTCOMES.get(exit_code, "interrupted" if exit_code > 128 else "error")


# -- collecting --------------------------------------------------------------------


class _Snapshot:
    """A prometheus_client collector over one run, the ledger and last runs kept from an earlier file."""

    def __init__(self, run: Run | None, ledger: "LedgerBackend", apps: Iterable[str],
                 kept: list[tuple[str, dict[str, str], float]]):
        self.run = run
        self.ledger = ledger
        self.apps = sorted(set(apps))
        self.kept = kept

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        run_labels = ["app", "command"]
        last_run = {
            "timestamp_seconds": GaugeMetricFamily(LAST_RUN_PREFIX + "timestamp_seconds",
                                                   "When the last run of this command for this app ended (Unix time).",
                                                   labels=run_labels),
            "duration_seconds": GaugeMetricFamily(LAST_RUN_PREFIX + "duration_seconds",
                                                  "How long the last run took, in seconds.", labels=run_labels),
            "exit_code": GaugeMetricFamily(LAST_RUN_PREFIX + "exit_code", "Exit code of the last run.",
                                           labels=run_labels),
            "success": GaugeMetricFamily(LAST_RUN_PREFIX + "success", "1 if the last run exited 0, else 0.",
                                         labels=run_labels),
            "outcome": GaugeMetricFamily(LAST_RUN_PREFIX + "outcome",
                                         "1 for the outcome of the last run, 0 for the other outcomes.",
                                         labels=[*run_labels, "outcome"]),
        }
        for name, labels, value in self.kept:
            short = name[len(LAST_RUN_PREFIX):]
            names = [*run_labels, "outcome"] if short == "outcome" else run_labels
            if short in last_run and all(label in labels for label in names):
                last_run[short].add_metric([labels[label] for label in names], value)
        if self.run is not None:
            key = [self.run.app, self.run.command]
            last_run["timestamp_seconds"].add_metric(key, self.run.ended_at)
            last_run["duration_seconds"].add_metric(key, self.run.duration)
            last_run["exit_code"].add_metric(key, self.run.exit_code)
            last_run["success"].add_metric(key, 1.0 if self.run.exit_code == 0 else 0.0)
            for outcome in sorted(set(OUTCOMES.values()) | {self.run.outcome}):
                last_run["outcome"].add_metric([*key, outcome], 1.0 if outcome == self.run.outcome else 0.0)
        yield from last_run.values()

        current_info = GaugeMetricFamily("rollout_current_info", "The ledger's current (newest healthy) entry per app.",
                                         labels=["app", "tag", "digest"])
        current_entry = GaugeMetricFamily("rollout_current_entry", "Ledger id of the app's current entry.",
                                          labels=["app"])
        reverts = CounterMetricFamily("rollout_reverts", "Revert entries in the ledger, automatic and by hand.",
                                      labels=["app"])
        entries = CounterMetricFamily("rollout_entries", "Ledger entries by kind and status.",
                                      labels=["app", "kind", "status"])
        for app in self.apps:
            current = self.ledger.current(app)
            if current is not None:
                current_info.add_metric([app, current.tag or "", current.digest], 1.0)
                current_entry.add_metric([app], float(current.id))
            counts = self.ledger.counts(app)  # one GROUP BY, not the whole history
            reverts.add_metric([app], float(sum(n for (kind, _), n in counts.items() if kind == "revert")))
            for (kind, status), count in sorted(counts.items()):
                entries.add_metric([app, kind, status], float(count))
        yield from (current_info, current_entry, reverts, entries)


def registry_for(run: Run | None, ledger: "LedgerBackend", apps: Iterable[str],
                 kept: list[tuple[str, dict[str, str], float]] | None = None) -> Any:
    """A prometheus_client CollectorRegistry holding the run's last-run series (and `kept`, from
    an earlier file) and each app's ledger series (current entry, entry and revert counts)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(run, ledger, apps, kept or []))  # type: ignore[arg-type]
    return registry


def _kept_last_runs(path: Path, run: Run | None) -> list[tuple[str, dict[str, str], float]]:
    """Last-run samples of other (app, command) pairs from the file as it is now."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    kept = []
    try:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith(LAST_RUN_PREFIX):
                continue
            for sample in family.samples:
                labels = dict(sample.labels)
                if "app" not in labels or "command" not in labels:
                    continue
                if run is not None and (labels["app"], labels["command"]) == (run.app, run.command):
                    continue
                kept.append((family.name, labels, float(sample.value)))
    except ValueError:
        return []  # not ours, or damaged: start afresh rather than refuse to write
    return kept


# -- writing -----------------------------------------------------------------------


def write_textfile(path: str | os.PathLike[str], run: Run | None, ledger: "LedgerBackend", apps: Iterable[str]) -> None:
    """Write (atomically) the textfile-collector file at path; raises OSError when it cannot."""
    from prometheus_client import write_to_textfile

    target = Path(path)
    lock_path = target.with_name(f".{target.name}.lock")
    # Two rollouts ending at once must not lose each other's last-run series.
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        registry = registry_for(run, ledger, apps, _kept_last_runs(target, run))
        write_to_textfile(str(target), registry)
        os.chmod(target, 0o644)


def push(gateway: str, run: Run, ledger: "LedgerBackend") -> None:
    """Push this run's metrics to a Pushgateway, grouped by job=rollout and app; raises on failure."""
    from prometheus_client import push_to_gateway

    # One group per app: only this app's series, or groups would repeat each other's.
    push_to_gateway(gateway, job="rollout", registry=registry_for(run, ledger, [run.app]),
                    grouping_key={"app": run.app}, timeout=PUSH_TIMEOUT)


def redact(url: str) -> str:
    """A Pushgateway URL as it may be printed, credentials and path hidden (rollout.output.redact_url)."""
    from rollout.notify import redact_url

    return redact_url(url)


# -- after a command -----------------------------------------------------------------


def record(run: Run, *, ledger_location: str | os.PathLike[str], apps: Iterable[str], metrics_file: str | None,
           pushgateway: str | None, warn: Warn) -> None:
    """Write `run`'s metrics to metrics_file and/or push them to pushgateway, with the ledger's
    series for `apps` (their names); rollout.operations calls it after deploy, revert and rebuild.

    Never raises: metrics are reported, not part of the outcome; each failure is one warning
    through `warn` (a Pushgateway URL shown without its credentials).
    """
    from rollout.ledger import open_ledger

    try:
        ledger = open_ledger(ledger_location)
    except Exception as exc:  # noqa: BLE001
        warn(f"warning: metrics not written: cannot open the ledger ({one_line(exc)})")
        return
    try:
        if metrics_file:
            try:
                write_textfile(metrics_file, run, ledger, apps)
            except Exception as exc:  # noqa: BLE001 - a wrong path must not turn a healthy deploy into a failure
                warn(f"warning: metrics file {metrics_file} not written: {one_line(exc)}")
        if pushgateway:
            try:
                push(pushgateway, run, ledger)
            except Exception as exc:  # noqa: BLE001
                # The exception text may repeat the URL with credentials: name the kind of failure only.
                warn(f"warning: metrics not pushed to {redact(pushgateway)}: {type(exc).__name__}")
    finally:
        ledger.close()
