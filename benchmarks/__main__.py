"""python -m benchmarks [--quick] [--out FILE] [--only B1,B2] [--runs N] [--k8s-deadline S]

Exit status: 0 when the harness ran (a scenario that could not measure is reported
as an error in the table and the JSON, not as a failure of the run); 1 when the
harness itself is broken (a bug in a scenario's code, or the report cannot be written),
so CI notices when the benchmarks rot.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

from benchmarks import (concurrent_deploys, docker_host, fleet, kubernetes, ledger_scale, registry_cost,
                        reproducible_rebuild, startup, zero_downtime)
from benchmarks.metric_verdict import metric_verdict
from benchmarks.common import ScenarioFailed, ScenarioResult, Settings, Skipped, machine_info
from benchmarks.report import render_table

Scenario = Callable[[Settings, ScenarioResult], None]

SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "B1": ("deploy overhead (docker host)", docker_host.deploy_overhead),
    "B2": ("recovery time (docker host)", docker_host.recovery_time),
    "B3": ("Kubernetes failure detection", kubernetes.detection),
    "B4": ("registry cost of a check", registry_cost.check_cost),
    "B5": ("ledger scale (SQLite and PostgreSQL)", ledger_scale.ledger_scale),
    "B6": ("start-up", startup.start_up),
    "B7": ("fleet upgrade (3 docker engines)", fleet.fleet_upgrade),
    "B8": ("downtime under load: stop-first vs HAProxy and Caddy", zero_downtime.downtime),
    "B9": ("revert latency after a switch (HAProxy, Caddy)", zero_downtime.revert_latency),
    "B10": ("scheduled rebuild of unchanged content: docker builder vs buildah reproducible",
            reproducible_rebuild.scheduled_rebuild),
    "B11": ("concurrent deploys, 2 runners, one PostgreSQL ledger", concurrent_deploys.concurrent_deploys),
    "B12": ("metric gate: errors reported -> failure verdict (real Prometheus)", metric_verdict),
}

# Exceptions that mean the harness's own code is wrong, not that a measurement failed.
HARNESS_BUGS = (TypeError, AttributeError, NameError, ImportError, KeyError, IndexError, ValueError,
                AssertionError, ZeroDivisionError, SyntaxError)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run on small sizes (CI: within 3 minutes)")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--only", help="comma-separated scenarios, e.g. B1,B5")
    parser.add_argument("--runs", type=int, help="runs per side (default 1 quick, 5 full)")
    parser.add_argument("--k8s-deadline", type=int,
                        help="progressDeadlineSeconds for the kubectl baseline (default 60 quick, 600 full)")
    parser.add_argument("--ledger-entries", type=int, help="B5 ledger size (default 50,000 quick, 1,000,000 full)")
    return parser.parse_args(argv)


def run_scenario(key: str, settings: Settings) -> ScenarioResult:
    title, scenario = SCENARIOS[key]
    result = ScenarioResult(key, title)
    started = time.monotonic()
    print(f"[bench] {key} {title} ...", file=sys.stderr, flush=True)
    try:
        scenario(settings, result)
    except Skipped as exc:
        result.status, result.error = "skipped", f"skipped: {exc}"
    except ScenarioFailed as exc:
        result.status, result.error = "error", str(exc)
    except HARNESS_BUGS as exc:
        traceback.print_exc()
        result.status, result.error, result.harness_broken = "error", f"harness error: {type(exc).__name__}: {exc}", True
    except Exception as exc:  # noqa: BLE001 - environment trouble (engine, network): report it, keep going
        result.status, result.error = "error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    result.elapsed = time.monotonic() - started
    print(f"[bench] {key} {result.status} in {result.elapsed:.1f}s{': ' + result.error if result.error else ''}",
          file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    keys = [k.strip().upper() for k in args.only.split(",")] if args.only else list(SCENARIOS)
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown:
        print(f"benchmarks: unknown scenario {', '.join(unknown)} (known: {', '.join(SCENARIOS)})", file=sys.stderr)
        return 2
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as workdir:
        settings = Settings(
            quick=args.quick,
            runs=args.runs or (1 if args.quick else 5),
            workdir=Path(workdir),
            k8s_deadline=args.k8s_deadline or (60 if args.quick else 600),
            ledger_entries=args.ledger_entries or (50_000 if args.quick else 1_000_000),
            ledger_apps=100,
        )
        results = [run_scenario(key, settings) for key in keys]
    report = {r.key: r.to_json(machine, settings.mode) for r in results}
    print(render_table(results, machine, settings))
    if args.out:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            print(f"benchmarks: cannot write {args.out}: {exc}", file=sys.stderr)
            return 1
    return 1 if any(r.harness_broken for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
