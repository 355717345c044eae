"""The printed report: a Markdown table (so it can be pasted into the README as is) and notes."""

from __future__ import annotations

from typing import Any

from benchmarks.common import Comparison, ScenarioResult, Settings


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "requests":
        return f"{value:g}"
    return f"{value:g} {unit}"


def fmt_ratio(comparison: Comparison) -> str:
    ratio = comparison.ratio
    if ratio is None:
        return "-"
    return f"{ratio:.2f}" if ratio >= 0.01 else f"{ratio:.4f}"


def render_table(results: list[ScenarioResult], machine: dict[str, Any], settings: Settings) -> str:
    lines = [
        f"Machine: {machine['cores']} cores, {machine['cpu_model']}, {machine.get('memory_gb')} GB,"
        f" Linux {machine['kernel']}, Python {machine['python']}, Docker {machine.get('docker')};"
        f" mode: {settings.mode} ({settings.runs} run{'s' if settings.runs != 1 else ''} per side, alternating)",
        "",
        "| | measurement | rollout | baseline | ratio | runs | target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        if result.status != "ok" and not result.comparisons:
            lines.append(f"| {result.key} | {result.title} | {result.status.upper()} | {_cell(result.error or '')} | | | |")
            continue
        for comparison in result.comparisons:
            lines.append(
                f"| {result.key} | {_cell(comparison.name)} ({_cell(comparison.rollout_label)} vs"
                f" {_cell(comparison.baseline_label)}) | {fmt(comparison.rollout_median, comparison.unit)}"
                f" | {fmt(comparison.baseline_median, comparison.unit)} | {fmt_ratio(comparison)}"
                f" | {comparison.runs} | {_cell(comparison.target)} |"
            )
        if result.status != "ok":
            lines.append(f"| {result.key} | {result.title} | {result.status.upper()} | {_cell(result.error or '')} | | | |")
    notes = [f"- {r.key}: " + "; ".join(f"{k} = {_metric(v)}" for k, v in r.metrics.items())
             for r in results if r.metrics]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
