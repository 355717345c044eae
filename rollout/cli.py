"""The `rollout` command: parses arguments, calls one function of rollout.operations, prints its result.

Nothing else happens here: locking, recovery, the ledger, targets and notifications are the
operations' (rollout/operations.py), so another front end gets the same behaviour. What is the
CLI's own: reading -c/--config, human and --json output, installing the SIGINT/SIGTERM handlers
the operations ask for, and turning errors into one line on stderr and an exit code.

Exit codes (README, "Exit codes"): 0 healthy; 1 failed and reverted to a healthy entry; 2 bad
input or config, nothing changed; 3 failed and could not revert; 4 another rollout holds the
app's lock; 5 registry or target unreachable before anything changed; 10 (`check`,
`rebuild --check`) something changed; 70 internal error; 130/143 interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import typer

from rollout import config as configuration
from rollout import operations
from rollout.errors import EXIT_INTERNAL, Interrupted, LeaseLost, RolloutError, one_line
from rollout.output import Console, clip, table
from rollout.reference import short_digest

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Deploy container images by exact digest, record every deploy, revert automatically.")
lock_app = typer.Typer(no_args_is_help=True, help="Inspect or release app locks.")
app.add_typer(lock_app, name="lock")
ledger_app = typer.Typer(no_args_is_help=True, help="Move the ledger to another backend.")
app.add_typer(ledger_app, name="ledger")


def _print_version(wanted: bool) -> None:
    """`rollout --version`: rollout's version and those of Python, the Docker SDK and the Kubernetes
    client (operations.versions), one `name version` per line, then exit 0."""
    if not wanted:
        return
    for name, version in operations.versions().items():
        print(f"{name} {version or 'not installed'}")
    raise typer.Exit(0)


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Optional[str] = typer.Option(None, "-c", "--config", help="rollout.toml (default $ROLLOUT_CONFIG or ./rollout.toml)"),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the versions of rollout, Python, the Docker SDK and the Kubernetes client."),
) -> None:
    """Options for every command: which rollout.toml (kept in the click context for the command)."""
    ctx.obj = config


def _config(ctx: typer.Context, required: bool = True) -> configuration.Config:
    """The rollout.toml this invocation names (-c, else $ROLLOUT_CONFIG, else ./rollout.toml), loaded and checked.
    Raises ConfigError (exit 2)."""
    return configuration.load(ctx.obj, required=required)


METRICS_FILE = typer.Option(None, "--metrics-file", metavar="PATH",
                            help="After the run, write Prometheus textfile-collector metrics to PATH (atomically).")
PUSHGATEWAY = typer.Option(None, "--pushgateway", metavar="URL", help="After the run, push the metrics to this Pushgateway.")
WAIT = typer.Option(0.0, "--wait", metavar="SECONDS", help="Wait this long for another rollout's lock.")
REASON = typer.Option(None, "--reason", help="Why: recorded in the ledger.")
DRY_RUN = typer.Option(False, "--dry-run", help="Print the plan per target and change nothing (no entry, lock, pull or change).")
FORCE = typer.Option(False, "--force", help="Deploy even when every target already runs this digest as the current healthy entry.")
RESULT_JSON = typer.Option(False, "--json", help="One JSON result object on stdout at the end; progress stays on stderr.")


@app.command()
def deploy(
    ctx: typer.Context,
    release: str = typer.Argument(..., metavar="APP:TAG", help="APP:TAG, APP@DIGEST, APP:TAG@DIGEST or REGISTRY/REPO:TAG"),
    allow_retag: bool = typer.Option(False, "--allow-retag", help="Accept a tag that now resolves to another digest."),
    force: bool = FORCE,
    dry_run: bool = DRY_RUN,
    as_json: bool = RESULT_JSON,
    wait: float = WAIT,
    reason: Optional[str] = REASON,
    metrics_file: Optional[str] = METRICS_FILE,
    pushgateway: Optional[str] = PUSHGATEWAY,
) -> None:
    """Deploy an exact digest to every target of the app, verify health, revert automatically on failure."""

    def run(console: Console) -> int:
        with _json_errors(console, as_json, release):
            if dry_run:
                return _print_plan(console, operations.plan_deploy(_config(ctx), release, reporter=console,
                                                                   allow_retag=allow_retag, force=force), as_json)
            outcome = operations.deploy(_config(ctx), release, reporter=console, allow_retag=allow_retag, wait=wait,
                                        reason=reason, interrupts=_signals_interrupt, force=force,
                                        metrics=operations.MetricsOptions(metrics_file, pushgateway))
        return _print_outcome(console, outcome, as_json)

    _run(run)


@app.command()
def revert(
    ctx: typer.Context,
    app_name: Optional[str] = typer.Argument(None, metavar="[APP]"),
    to: Optional[str] = typer.Option(None, "--to", metavar="'#ID'|TAG",
                                     help="Go back to entry '#ID' (or id:ID), or to the newest healthy entry with TAG"
                                          " (or tag:TAG); a bare number that is both is refused."),
    dry_run: bool = DRY_RUN,
    as_json: bool = RESULT_JSON,
    wait: float = WAIT,
    reason: Optional[str] = REASON,
    metrics_file: Optional[str] = METRICS_FILE,
    pushgateway: Optional[str] = PUSHGATEWAY,
) -> None:
    """Go back to the previous healthy release (or --to a chosen one) and verify it."""

    def run(console: Console) -> int:
        with _json_errors(console, as_json, app_name):
            if dry_run:
                return _print_plan(console, operations.plan_revert(_config(ctx), app_name, reporter=console, to=to),
                                   as_json)
            outcome = operations.revert(_config(ctx), app_name, reporter=console, to=to, wait=wait, reason=reason,
                                        interrupts=_signals_interrupt,
                                        metrics=operations.MetricsOptions(metrics_file, pushgateway))
        return _print_outcome(console, outcome, as_json)

    _run(run)


@app.command()
def promote(
    ctx: typer.Context,
    app_name: str = typer.Argument(..., metavar="APP", help="The app to deploy to, e.g. web."),
    source: Optional[str] = typer.Option(None, "--from", metavar="SOURCE_APP",
                                         help="The app whose current healthy digest is deployed, e.g. web-staging."),
    source_config: Optional[str] = typer.Option(None, "--from-config", metavar="OTHER.toml",
                                                help="Take the source from another rollout.toml and its ledger (the"
                                                     " app of the same name unless --from names one)."),
    force: bool = FORCE,
    dry_run: bool = DRY_RUN,
    as_json: bool = RESULT_JSON,
    wait: float = WAIT,
    reason: Optional[str] = REASON,
    metrics_file: Optional[str] = METRICS_FILE,
    pushgateway: Optional[str] = PUSHGATEWAY,
) -> None:
    """Deploy the exact digest of another app's current healthy entry (staging -> production)."""

    def run(console: Console) -> int:
        with _json_errors(console, as_json, app_name):
            if dry_run:
                return _print_plan(console, operations.plan_promote(_config(ctx), app_name, source_app=source,
                                                                    source_config=source_config, reporter=console,
                                                                    force=force), as_json)
            outcome = operations.promote(_config(ctx), app_name, source_app=source, source_config=source_config,
                                         reporter=console, wait=wait, reason=reason, force=force,
                                         interrupts=_signals_interrupt,
                                         metrics=operations.MetricsOptions(metrics_file, pushgateway))
        return _print_outcome(console, outcome, as_json)

    _run(run)


def _print_outcome(console: Console, outcome: Any, as_json: bool) -> int:
    """A deploy/revert/promote result (rollout.orchestrator.Outcome): its JSON object (Outcome.to_json)
    with --json, else its one-line message, on stdout; returns its exit code."""
    if as_json:
        console.json(outcome.to_json())
    else:
        console.result(outcome.message)
    return int(outcome.exit_code)


def _print_plan(console: Console, plan: Any, as_json: bool) -> int:
    """A --dry-run plan (rollout.plan.Plan) on stdout, human or JSON; exit 0."""
    if as_json:
        console.json(plan.to_json())
    else:
        console.out("\n".join(plan.lines()))
    return 0


@contextmanager
def _json_errors(console: Console, as_json: bool, named: Optional[str]) -> Iterator[None]:
    """With --json, a command ending in an error still prints one result object on stdout
    (operations.error_json, app from what the user named) before the usual stderr line and exit code."""
    try:
        yield
    except (RolloutError, Interrupted, LeaseLost) as exc:
        if as_json:
            match = operations.APP_NAME.match(named or "")
            console.json(operations.error_json(match["app"] if match else None, exc))
        raise


@app.command()
def show(
    ctx: typer.Context,
    entry: str = typer.Argument(..., metavar="ID", help="The entry: '#12', id:12 or 12 (see `rollout history`)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """One ledger entry with its events in time order: who, why, timings, per-target verdicts, log tails."""

    def run(console: Console) -> int:
        shown = operations.show(_config(ctx, required=False), entry)
        if as_json:
            console.json(shown.to_json())
            return 0
        e = shown.entry
        lines = [f"#{e.id} {e.kind} {e.app} {e.tag or '-'} {e.digest}: {e.status}",
                 f"  who: {e.actor}", f"  why: {e.reason or '-'}",
                 f"  created: {e.created_at}  finished: {e.finished_at or '-'}"]
        if e.reverts_to:
            lines.append(f"  reverts to: #{e.reverts_to}")
        if e.error:
            lines.append(f"  error: {' '.join(e.error.split())}")
        if shown.durations:
            lines.append("  timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in shown.durations.items()))
        lines.extend(f"  target {t.target}: {t.outcome}" + (f": {' '.join(t.detail.split())}" if t.detail else "")
                     for t in shown.targets)
        lines.append("  events:")
        lines.extend(f"    {ev['at'][:23].replace('T', ' ')}  {ev['event']}"
                     + (f"  {clip(json.dumps(ev['detail'], sort_keys=True), 100)}"
                        if ev["detail"] and ev["event"] != "log-tail" else "") for ev in shown.events)
        for target, tail in shown.log_tails.items():
            lines.append(f"  {target}: last {len(tail)} log lines at the failure:")
            lines.extend(f"    | {line}" for line in tail)
        console.out("\n".join(lines))
        return 0

    _run(run)


@app.command()
def history(
    ctx: typer.Context,
    app_name: Optional[str] = typer.Argument(None, metavar="[APP]"),
    n: int = typer.Option(20, "-n", min=1, help="How many entries, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The ledger's entries, newest first."""

    def run(console: Console) -> int:
        entries = operations.history(_config(ctx, required=False), app_name, n)
        if as_json:
            console.json([e.to_json() for e in entries])
            return 0
        rows = [[f"#{e.id}", e.app, e.kind, e.tag or "-", short_digest(e.digest), e.status,
                 f"#{e.reverts_to}" if e.reverts_to else "", e.created_at[:19].replace("T", " "), e.actor,
                 clip(e.error or e.reason or "")] for e in entries]
        console.out(table(["ID", "APP", "KIND", "TAG", "DIGEST", "STATUS", "REVERTS", "CREATED (UTC)", "ACTOR", "NOTE"], rows))
        return 0

    _run(run)


@app.command()
def status(
    ctx: typer.Context,
    app_name: Optional[str] = typer.Argument(None, metavar="[APP]"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """What the ledger says should run, what each target really runs, and whether they match."""

    def run(console: Console) -> int:
        result = operations.status(_config(ctx), app_name, reporter=console, interrupts=_signals_interrupt)
        for report in result.apps:
            if report.recovery is not None:
                # On stderr with --json: stdout carries the one JSON document and nothing else.
                (console.warn if as_json else console.result)(report.recovery.message)
        if as_json:
            console.json(result.to_json())
            return result.exit_code
        for report in result.apps:
            current = report.current
            head = (f"{report.app}: #{current.id} {current.tag or '-'} {current.digest}"
                    if current else f"{report.app}: no healthy entry yet")
            if report.in_progress is not None:
                head += f"\n{report.app}: rollout in progress: {report.in_progress.describe()}"
            rows = [[t.name, short_digest(t.digest) if t.digest else "-",
                     "in sync" if t.in_sync else ("UNREACHABLE" if t.error else "DEPLOYING" if t.deploying
                                                  else "DRIFT" if t.running else "STOPPED"),
                     t.error or t.image or "no container"] for t in report.targets]
            console.out(head + "\n" + table(["TARGET", "DIGEST", "STATE", "IMAGE"], rows))
            for t in report.targets:
                if t.traffic is not None:
                    console.out(_traffic_line(t.name, t.traffic, deploying=t.deploying))
                if t.warning:
                    console.warn(t.warning)
        return result.exit_code

    _run(run)


@app.command()
def rebuild(
    ctx: typer.Context,
    app_name: Optional[str] = typer.Argument(None, metavar="[APP]"),
    check_only: bool = typer.Option(False, "--check", help="Only report: exit 0 up to date, 10 a rebuild is due."),
    no_deploy: bool = typer.Option(False, "--no-deploy", help="Build and push only."),
    force: bool = typer.Option(False, "--force", help="Build even when the inputs are unchanged or failed before."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Build even when the build key is unchanged (scheduled"
                                  " rebuilds; buildah: nothing pushed when the image is the same)."),
    explain: bool = typer.Option(False, "--explain", help="Only name the layers that differ between the last two"
                                 " builds of the same inputs."),
    wait: float = WAIT,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    metrics_file: Optional[str] = METRICS_FILE,
    pushgateway: Optional[str] = PUSHGATEWAY,
) -> None:
    """Rebuild, push and deploy the app's image when a base image or the build context changed."""

    def run(console: Console) -> int:
        result = operations.rebuild(_config(ctx), app_name, reporter=console, check_only=check_only,
                                    no_deploy=no_deploy, force=force, wait=wait, interrupts=_signals_interrupt,
                                    metrics=operations.MetricsOptions(metrics_file, pushgateway),
                                    no_cache=no_cache, explain=explain)
        if as_json:
            console.json(result.to_json())
        else:
            console.result(result.message)
        return result.exit_code

    _run(run)


@app.command()
def init(
    ctx: typer.Context,
    from_container: Optional[str] = typer.Option(None, "--from-container", metavar="NAME",
                                                 help="Fill a docker target from this running container."),
    host: Optional[str] = typer.Option(None, "--host", help="Docker host of --from-container (DOCKER_HOST syntax)."),
    from_deployment: Optional[str] = typer.Option(None, "--from-deployment", metavar="NAME",
                                                  help="Fill a kubernetes target from this Deployment."),
    from_statefulset: Optional[str] = typer.Option(None, "--from-statefulset", metavar="NAME",
                                                   help="Fill a kubernetes target from this StatefulSet."),
    from_daemonset: Optional[str] = typer.Option(None, "--from-daemonset", metavar="NAME",
                                                 help="Fill a kubernetes target from this DaemonSet."),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Namespace of --from-deployment."),
    kubeconfig: Optional[str] = typer.Option(None, "--kubeconfig", metavar="PATH", help="Kubeconfig for --from-deployment."),
    context: Optional[str] = typer.Option(None, "--context", help="Kubeconfig context for --from-deployment."),
    container: Optional[str] = typer.Option(None, "--container", help="Which container of the Deployment's pods."),
    from_compose: Optional[str] = typer.Option(None, "--from-compose", metavar="SERVICE",
                                               help="Fill a compose target from this service of a Compose project."),
    project_dir: Optional[str] = typer.Option(None, "--project-dir", metavar="DIR",
                                              help="The Compose project of --from-compose (default: .)."),
    app_name: Optional[str] = typer.Option(None, "--app", help="The app's name (default: from the container or Deployment)."),
    image: Optional[str] = typer.Option(None, "--image", metavar="REPOSITORY", help="The app's image repository."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented rollout.toml (at -c or ./rollout.toml), filled from a running container or Deployment."""

    def run(console: Console) -> int:
        written = operations.init(configuration.config_path(ctx.obj), from_container=from_container,
                                  host=host, from_deployment=from_deployment, namespace=namespace,
                                  kubeconfig=kubeconfig, context=context, container=container, app_name=app_name,
                                  image=image, force=force, from_compose=from_compose, project_dir=project_dir,
                                  from_statefulset=from_statefulset, from_daemonset=from_daemonset)
        draft = written.draft
        for note in draft.notes:
            console.info(f"note: {note}")
        console.result(f"wrote {written.path}: app {draft.app} ({draft.image}), target {draft.target['name']};"
                       f" next: rollout deploy {draft.app}:TAG")
        return 0

    _run(run)


@app.command()
def check(
    ctx: typer.Context,
    app_names: Optional[list[str]] = typer.Argument(None, metavar="[APP...]"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Report drift, re-pushed tags and changed build inputs; never builds. Exit 0 unchanged (or a rollout in
    progress), 10 changed, 5 unreachable."""

    def run(console: Console) -> int:
        result = operations.check(_config(ctx), app_names)
        if as_json:
            console.json(result.to_json())
        for report in result.apps:
            if not as_json:
                state = "CHANGED" if report.changed else ("UNREACHABLE" if report.errors else
                                                          "IN PROGRESS" if report.in_progress else "unchanged")
                console.out(f"{report.app}: {state}")
                if report.in_progress is not None:
                    console.out(f"{report.app}:   rollout in progress: {report.in_progress.describe()}")
                for line in report.changes:
                    console.out(f"{report.app}:   {line}")
            for line in report.errors:
                console.warn(f"{report.app}: cannot check: {line}")
        return result.exit_code

    _run(run)


@lock_app.command("status")
def lock_status(ctx: typer.Context, app_name: Optional[str] = typer.Argument(None, metavar="[APP]"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Who holds which app's lock."""

    def run(console: Console) -> int:
        states = operations.lock_status(_config(ctx, required=False), app_name)
        if as_json:
            console.json([s.to_json() for s in states])
        else:
            rows = [[s.lease.app, s.lease.holder, str(s.lease.pid), s.lease.acquired_at[:19],
                     "stale" if s.stale else "held"] for s in states]
            console.out(table(["APP", "HOLDER", "PID", "SINCE (UTC)", "STATE"], rows) if rows else "no locks held")
        return 0

    _run(run)


@lock_app.command("release")
def lock_release(ctx: typer.Context, app_name: str = typer.Argument(..., metavar="APP")) -> None:
    """Release an app's lock by hand (when its holder is gone)."""

    def run(console: Console) -> int:
        lease = operations.lock_release(_config(ctx, required=False), app_name)
        console.result(f"released {app_name} (held by {lease.describe()})" if lease else f"{app_name} was not locked")
        return 0

    _run(run)


@ledger_app.command("copy")
def ledger_copy(ctx: typer.Context,
                to: str = typer.Option(..., "--to", metavar="DEST",
                                       help="A postgresql:// URL or a SQLite file path; must be empty."),
                as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Copy the configured ledger whole (ids, entries, events, build records; no leases) to DEST and verify it.
    Exit 2 DEST not empty or not a ledger location, 4 a rollout in progress, 5 a server unreachable."""

    def run(console: Console) -> int:
        result = operations.ledger_copy(_config(ctx, required=False), to)
        if as_json:
            console.json(result.to_json())
            return 0
        rows = [[name, side.ledger, *(str(n) for n in side.rows.values()), side.sha256]
                for name, side in (("source", result.source), ("copy", result.destination))]
        console.out(table(["", "LEDGER", *(t.upper() for t in result.source.rows), "CONTENT"], rows))
        console.result("copied and verified (same rows, same content hash); no lease copied: every app is unlocked"
                       " there. Point [ledger] (or $ROLLOUT_LEDGER_URL / $ROLLOUT_LEDGER) at the copy to use it.")
        return 0

    _run(run)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT/SIGTERM raise Interrupted while an operation asks for it, so it can put the last healthy release back."""

    def interrupt(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(command: Any) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="rollout: warning: %(message)s")
    console = Console()
    try:
        code = command(console)
    except RolloutError as exc:
        console.error(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        console.error("interrupted")
        code = 130
    except Interrupted as stop:
        console.error(f"interrupted by {stop}")
        code = stop.exit_code
    except LeaseLost as lost:
        console.error(str(lost))
        code = lost.exit_code
    except Exception as exc:  # noqa: BLE001 - a bug must still end in one line, not a traceback
        if os.environ.get("ROLLOUT_DEBUG"):
            raise
        console.error(f"internal error: {type(exc).__name__}: {exc} (set ROLLOUT_DEBUG=1 for a traceback; please report it)")
        code = EXIT_INTERNAL
    raise typer.Exit(code)


# click's base exception, wherever this typer keeps click (it vendors its own copy since 0.26).
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    """The `rollout` console script: runs one command and exits with its code (module docstring).

    A usage error (unknown command or option, a value out of range) is one line on stderr, exit 2;
    a bare `rollout` prints the help.
    """
    try:
        code = _run_command()
    except _ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `rollout`: its message is the help
            print(exc.format_message())
            sys.exit(exc.exit_code)
        # A usage error (unknown command or option, a value out of range): one line, exit 2.
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "rollout"
        Console().error(f"{one_line(exc.format_message()).rstrip('.')}: see `{command} --help`")
        sys.exit(exc.exit_code)
    except typer.Abort:
        Console().error("aborted")
        sys.exit(130)
    sys.exit(code or 0)


def _run_command() -> Any:
    try:
        return app(prog_name="rollout", standalone_mode=False)
    finally:
        try:
            operations.drain_notifications()
        except operations.NotificationsInterrupted as stop:
            Console().error(str(stop))
            sys.exit(stop.exit_code)


if __name__ == "__main__":
    main()


def _traffic_line(target: str, traffic: dict[str, Any], *, deploying: bool = False) -> str:
    """One line of `status` for a target behind a router (rollout.targets.Running.traffic): where its
    traffic goes and whether that is the slot of the container under the name (else DRIFT, or
    DEPLOYING while a live rollout switches it: TargetState.deploying)."""
    to = ", ".join(traffic["upstreams"]) or "nothing"
    where = f"{target}: traffic: {traffic['router']} {traffic['route']} -> {to}"
    if traffic["routed"]:
        return f"{where} (slot {traffic['slot']}, the running container)"
    slot = f"slot {traffic['slot']}" if traffic["slot"] is not None else "no slot"
    return f"{where}, not the running container ({slot}): {'DEPLOYING' if deploying else 'DRIFT'}"
