"""The `rollout` command: a thin layer over rollout.orchestrator, rollout.ledger and the targets.

Exit codes: 0 healthy; 1 failed and reverted to a healthy entry; 2 bad input or
config, nothing changed; 3 failed and could not revert; 4 another rollout holds
the app's lock; 5 registry or target unreachable before anything changed;
10 (`check`, `rebuild --check`) something changed; 130/143 interrupted.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Iterator, Optional

import typer

from rollout import config as configuration
from rollout.errors import (EXIT_INTERNAL, EXIT_UNREACHABLE, Interrupted, LeaseLost, LockHeld, RolloutError, UserError,
                            one_line)
from rollout.output import Console, clip, table
from rollout.reference import short_digest

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Deploy container images by exact digest, record every deploy, revert automatically.")
lock_app = typer.Typer(no_args_is_help=True, help="Inspect or release app locks.")
app.add_typer(lock_app, name="lock")

_state: dict[str, Any] = {}

APP_NAME = re.compile(r"^(?P<app>[A-Za-z0-9][A-Za-z0-9_-]*)(?P<rest>[:@].*)?$", re.DOTALL)


@app.callback()
def main_options(
    config: Optional[str] = typer.Option(None, "-c", "--config", help="rollout.toml (default $ROLLOUT_CONFIG or ./rollout.toml)"),
) -> None:
    _state["config"] = config


def _config(required: bool = True) -> configuration.Config:
    cfg = configuration.load(_state.get("config"), required=required)
    if cfg.registry.docker_config:
        # One source of credentials for our registry client and for the engine's pulls (the SDK reads it).
        os.environ["DOCKER_CONFIG"] = cfg.registry.docker_config
    return cfg


def _ledger(cfg: configuration.Config):  # type: ignore[no-untyped-def]
    from rollout.ledger import Ledger

    return Ledger(cfg.ledger_path)


def _registry(cfg: configuration.Config):  # type: ignore[no-untyped-def]
    from rollout.registry import RegistryClient

    return RegistryClient(docker_config=cfg.registry.docker_config, insecure=cfg.registry.insecure,
                          ca_bundle=cfg.registry.ca_bundle)


def _orchestrator(cfg: configuration.Config, app_cfg: configuration.AppConfig, ledger: Any, console: Console):  # type: ignore[no-untyped-def]
    from rollout.health import verify
    from rollout.orchestrator import Orchestrator
    from rollout.targets import open_target

    targets = [open_target(t, app_cfg) for t in app_cfg.targets]
    return Orchestrator(app_cfg, ledger, _registry(cfg), targets,
                        lambda watch, policy, progress: verify(watch, policy, on_progress=progress), console,
                        listener=_notifier(cfg, console))


def _notifier(cfg: configuration.Config, console: Console):  # type: ignore[no-untyped-def]
    """The [notify] webhooks as an orchestrator listener (None when none are configured)."""
    from rollout import notify

    return notify.notifier_for(cfg.notify, cfg.path, console.warn)


METRICS_FILE = typer.Option(None, "--metrics-file", metavar="PATH",
                            help="After the run, write Prometheus textfile-collector metrics to PATH (atomically).")
PUSHGATEWAY = typer.Option(None, "--pushgateway", metavar="URL", help="After the run, push the metrics to this Pushgateway.")


def _measured(command: str, run: Any, metrics_file: Optional[str], pushgateway: Optional[str], app_of: Any) -> Any:
    """run, timed, with its metrics written to --metrics-file / pushed to --pushgateway whatever the outcome."""
    from rollout import metrics

    def subject() -> tuple[str, configuration.Config]:
        cfg = _config()
        return app_of(cfg), cfg

    return metrics.measured(command, run, metrics_file=metrics_file, pushgateway=pushgateway, subject=subject)


def parse_release(text: str, cfg: configuration.Config):  # type: ignore[no-untyped-def]
    """APP:TAG, APP@DIGEST, APP:TAG@DIGEST, or a full registry/repo:tag of a configured app."""
    from rollout.reference import parse

    match = APP_NAME.match(text)
    if match and match["app"] in cfg.apps:
        app_cfg = cfg.apps[match["app"]]
        if not match["rest"]:
            raise UserError(f"give a tag or digest: rollout deploy {app_cfg.name}:TAG")
        return app_cfg, parse(app_cfg.image + match["rest"])
    ref = parse(text)
    for app_cfg in cfg.apps.values():
        if app_cfg.image == ref.name:
            if "@" not in text and ":" not in text.rsplit("/", 1)[-1]:
                raise UserError(f"give a tag or digest: rollout deploy {app_cfg.name}:TAG")
            return app_cfg, ref
    known = ", ".join(f"{a.name} ({a.image})" for a in cfg.apps.values()) or "none"
    raise UserError(f"{text!r} names no configured app: configured apps are {known}")


@app.command()
def deploy(
    release: str = typer.Argument(..., metavar="APP:TAG", help="APP:TAG, APP@DIGEST, APP:TAG@DIGEST or REGISTRY/REPO:TAG"),
    allow_retag: bool = typer.Option(False, "--allow-retag", help="Accept a tag that now resolves to another digest."),
    wait: float = typer.Option(0.0, "--wait", metavar="SECONDS", help="Wait this long for another rollout's lock."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why: recorded in the ledger."),
    metrics_file: Optional[str] = METRICS_FILE,
    pushgateway: Optional[str] = PUSHGATEWAY,
) -> None:
    """Deploy an exact digest to every target of the app, verify health, revert automatically on failure."""

    def run(console: Console) -> int:
        cfg = _config()
        app_cfg, ref = parse_release(release, cfg)
        ledger = _ledger(cfg)
        return _under_lock(cfg, app_cfg, ledger, console, wait,
                           lambda orchestrator: orchestrator.deploy(ref, allow_retag=allow_retag, reason=reason))

    _run(_measured("deploy", run, metrics_file, pushgateway, lambda cfg: parse_release(release, cfg)[0].name))


@app.command()
def revert(
    app_name: Optional[str] = typer.Argument(None, metavar="[APP]"),
    to: Optional[str] = typer.Option(None, "--to", metavar="'#ID'|TAG",
                                     help="Go back to entry '#ID' (or id:ID), or to the newest healthy entry with TAG"
                                          " (or tag:TAG); a bare number that is both is refused."),
    wait: float = typer.Option(0.0, "--wait", metavar="SECONDS", help="Wait this long for another rollout's lock."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why: recorded in the ledger."),
    metrics_file: Optional[str] = METRICS_FILE,
    pushgateway: Optional[str] = PUSHGATEWAY,
) -> None:
    """Go back to the previous healthy release (or --to a chosen one) and verify it."""

    def run(console: Console) -> int:
        from rollout.entries import name_entry

        cfg = _config()
        app_cfg = cfg.app(app_name)
        ledger = _ledger(cfg)
        target_entry = None
        if to is not None:
            named = name_entry(ledger, app_cfg.name, to)
            console.info(named.how)
            target_entry = named.entry
        return _under_lock(cfg, app_cfg, ledger, console, wait,
                           lambda orchestrator: orchestrator.revert(target_entry, reason=reason))

    _run(_measured("revert", run, metrics_file, pushgateway, lambda cfg: cfg.app(app_name).name))


@app.command()
def history(
    app_name: Optional[str] = typer.Argument(None, metavar="[APP]"),
    n: int = typer.Option(20, "-n", min=1, help="How many entries, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The ledger's entries, newest first."""

    def run(console: Console) -> int:
        cfg = _config(required=False)
        if app_name is not None and cfg.apps:
            cfg.app(app_name)
        entries = _ledger(cfg).history(app_name, n)
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
    app_name: Optional[str] = typer.Argument(None, metavar="[APP]"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """What the ledger says should run, what each target really runs, and whether they match."""
    from rollout.targets import observe

    def run(console: Console) -> int:
        cfg = _config()
        apps = [cfg.app(app_name)] if app_name or len(cfg.apps) == 1 else list(cfg.apps.values())
        ledger = _ledger(cfg)
        reports, unreachable = [], False
        for app_cfg in apps:
            _recover_if_abandoned(cfg, app_cfg, ledger, console)
            current = ledger.current(app_cfg.name)
            targets = observe(app_cfg, current.digest if current else None)
            unreachable = unreachable or any(t.error for t in targets)
            reports.append({"app": app_cfg.name, "current": current.to_json() if current else None,
                            "targets": [asdict(t) for t in targets]})
        if as_json:
            console.json(reports[0] if len(reports) == 1 else reports)
        else:
            for report in reports:
                current = report["current"]
                head = (f"{report['app']}: #{current['id']} {current['tag'] or '-'} {current['digest']}"
                        if current else f"{report['app']}: no healthy entry yet")
                rows = [[t["name"], short_digest(t["digest"]) if t["digest"] else "-",
                         "in sync" if t["in_sync"] else ("UNREACHABLE" if t["error"]
                                                         else "DRIFT" if t["running"] else "STOPPED"),
                         t.get("error") or t["image"] or "no container"] for t in report["targets"]]
                console.out(head + "\n" + table(["TARGET", "DIGEST", "STATE", "IMAGE"], rows))
                for t in report["targets"]:
                    if t.get("warning"):
                        console.warn(t["warning"])
        return EXIT_UNREACHABLE if unreachable else 0

    _run(run)


@app.command()
def rebuild(
    app_name: Optional[str] = typer.Argument(None, metavar="[APP]"),
    check_only: bool = typer.Option(False, "--check", help="Only report: exit 0 up to date, 10 a rebuild is due."),
    no_deploy: bool = typer.Option(False, "--no-deploy", help="Build and push only."),
    force: bool = typer.Option(False, "--force", help="Build even when the inputs are unchanged or failed before."),
    wait: float = typer.Option(0.0, "--wait", metavar="SECONDS", help="Wait this long for another rollout's lock."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    metrics_file: Optional[str] = METRICS_FILE,
    pushgateway: Optional[str] = PUSHGATEWAY,
) -> None:
    """Rebuild, push and deploy the app's image when a base image or the build context changed."""
    from rollout import rebuild as rebuilding

    def run(console: Console) -> int:
        cfg = _config()
        app_cfg = cfg.app(app_name)
        ledger = _ledger(cfg)
        with _signals_interrupt():
            result = rebuilding.rebuild(
                app_cfg, config_path=cfg.path, ledger=ledger, registry=_registry(cfg),
                orchestrator=lambda: _orchestrator(cfg, app_cfg, ledger, console), engine=rebuilding.local_engine,
                reporter=console, force=force, no_deploy=no_deploy, check_only=check_only, wait=wait)
        _notify_rebuild(cfg, app_cfg, result, console, check_only)
        if as_json:
            console.json(result.to_json())
        else:
            console.result(result.message)
        return result.exit_code

    _run(_measured("rebuild", run, metrics_file, pushgateway, lambda cfg: cfg.app(app_name).name))


def _notify_rebuild(cfg: configuration.Config, app_cfg: configuration.AppConfig, result: Any, console: Console,
                    check_only: bool) -> None:
    """rebuild_skipped / rebuild_built: the rebuild outcomes the orchestrator never sees."""
    from rollout import notify

    notifier = _notifier(cfg, console)
    event = None if check_only or notifier is None else notify.rebuild_event(result, app_cfg.image)
    if event is not None:
        notifier(*event)


@app.command()
def init(
    from_container: Optional[str] = typer.Option(None, "--from-container", metavar="NAME",
                                                 help="Fill a docker target from this running container."),
    host: Optional[str] = typer.Option(None, "--host", help="Docker host of --from-container (DOCKER_HOST syntax)."),
    from_deployment: Optional[str] = typer.Option(None, "--from-deployment", metavar="NAME",
                                                  help="Fill a kubernetes target from this Deployment."),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Namespace of --from-deployment."),
    kubeconfig: Optional[str] = typer.Option(None, "--kubeconfig", metavar="PATH", help="Kubeconfig for --from-deployment."),
    context: Optional[str] = typer.Option(None, "--context", help="Kubeconfig context for --from-deployment."),
    container: Optional[str] = typer.Option(None, "--container", help="Which container of the Deployment's pods."),
    app_name: Optional[str] = typer.Option(None, "--app", help="The app's name (default: from the container or Deployment)."),
    image: Optional[str] = typer.Option(None, "--image", metavar="REPOSITORY", help="The app's image repository."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented rollout.toml (at -c or ./rollout.toml), filled from a running container or Deployment."""
    from rollout import scaffold

    def run(console: Console) -> int:
        path = configuration.config_path(_state.get("config"))
        if from_container and from_deployment:
            raise UserError("give --from-container or --from-deployment, not both")
        if path.exists() and not force:
            raise UserError(f"{path} already exists: pass --force to overwrite it")
        if from_container:
            draft = scaffold.from_container(from_container, host, app_name, image)
        elif from_deployment:
            draft = scaffold.from_deployment(from_deployment, namespace, kubeconfig, context, container, app_name, image)
        else:
            draft = scaffold.blank(app_name, image)
        scaffold.write(path, scaffold.render(draft), force=force)
        for note in draft.notes:
            console.info(f"note: {note}")
        console.result(f"wrote {path}: app {draft.app} ({draft.image}), target {draft.target['name']};"
                       f" next: rollout deploy {draft.app}:TAG")
        return 0

    _run(run)


@app.command()
def check(
    app_names: Optional[list[str]] = typer.Argument(None, metavar="[APP...]"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Report drift, re-pushed tags and changed build inputs; never builds. Exit 0 unchanged, 10 changed, 5 unreachable."""
    from rollout import rebuild as rebuilding
    from rollout.targets import open_target

    def run(console: Console) -> int:
        cfg = _config()
        apps = [cfg.app(name) for name in app_names] if app_names else list(cfg.apps.values())
        reports = rebuilding.check(apps, config_path=cfg.path, ledger=_ledger(cfg), registry=_registry(cfg),
                                   open_target=open_target)
        if as_json:
            console.json([r.to_json() for r in reports])
        for report in reports:
            if not as_json:
                state = "CHANGED" if report.changed else ("UNREACHABLE" if report.errors else "unchanged")
                console.out(f"{report.app}: {state}")
                for line in report.changes:
                    console.out(f"{report.app}:   {line}")
            for line in report.errors:
                console.warn(f"{report.app}: cannot check: {line}")
        return rebuilding.check_exit_code(reports)

    _run(run)


@lock_app.command("status")
def lock_status(app_name: Optional[str] = typer.Argument(None, metavar="[APP]"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Who holds which app's lock."""
    import time

    from rollout import lock

    def run(console: Console) -> int:
        leases = lock.read(_ledger(_config(required=False)), app_name)
        now = time.time()
        if as_json:
            console.json([{**l.__dict__, "stale": l.is_stale(now)} for l in leases])
        else:
            rows = [[l.app, l.holder, str(l.pid), l.acquired_at[:19], "stale" if l.is_stale(now) else "held"] for l in leases]
            console.out(table(["APP", "HOLDER", "PID", "SINCE (UTC)", "STATE"], rows) if rows else "no locks held")
        return 0

    _run(run)


@lock_app.command("release")
def lock_release(app_name: str = typer.Argument(..., metavar="APP")) -> None:
    """Release an app's lock by hand (when its holder is gone)."""
    from rollout import lock

    def run(console: Console) -> int:
        lease = lock.force_release(_ledger(_config(required=False)), app_name)
        console.result(f"released {app_name} (held by {lease.describe()})" if lease else f"{app_name} was not locked")
        return 0

    _run(run)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT/SIGTERM raise Interrupted, so the orchestrator can put the last healthy release back."""
    from rollout.errors import Interrupted

    def interrupt(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _under_lock(cfg: configuration.Config, app_cfg: configuration.AppConfig, ledger: Any, console: Console,
                wait: float, action: Any) -> int:
    """Hold the app's lock, finish any interrupted rollout, then run action(orchestrator)."""
    from rollout import lock

    with lock.held(ledger, app_cfg.name, wait), _signals_interrupt():
        orchestrator = _orchestrator(cfg, app_cfg, ledger, console)
        recovered = _recover(orchestrator, console)
        if recovered is not None:
            return recovered
        outcome = action(orchestrator)
    console.result(outcome.message)
    return outcome.exit_code


def _recover(orchestrator: Any, console: Console) -> int | None:
    """Finish an interrupted rollout first; None when there was nothing to do or it went well."""
    outcome = orchestrator.recover()
    if outcome is None or outcome.exit_code == 0:
        if outcome is not None:
            console.info(outcome.message)
        return None
    console.result(outcome.message)
    return outcome.exit_code


def _recover_if_abandoned(cfg: configuration.Config, app_cfg: configuration.AppConfig, ledger: Any,
                          console: Console) -> None:
    """`status` finishes an interrupted rollout too, unless a live rollout holds the app."""
    from rollout import lock

    if not ledger.unfinished(app_cfg.name):
        return
    try:
        # lock.held, not a bare lease: a recovery's verify can outlast one lease period.
        with lock.held(ledger, app_cfg.name, 0), _signals_interrupt():
            _recover(_orchestrator(cfg, app_cfg, ledger, console), console)
    except LockHeld:
        return  # a rollout is running right now: its entry is not abandoned
    except LeaseLost as lost:
        console.warn(f"{app_cfg.name}: interrupted rollout not recovered: {lost}")
    except RolloutError as exc:
        console.warn(f"{app_cfg.name}: interrupted rollout not recovered yet: {exc}")


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
        notifying = sys.modules.get("rollout.notify")
        if notifying is not None:  # only a command that had something to send imported it
            try:
                notifying.drain()
            except KeyboardInterrupt:  # the rollout itself is over: Ctrl-C only gives up on sending
                Console().error("interrupted while sending notifications: some were not sent")
                sys.exit(130)


if __name__ == "__main__":
    main()
