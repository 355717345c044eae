"""Benchmarks: rollout against the tools people use today, as ratios measured side by side in one run.

`python -m benchmarks [--quick] [--out FILE]` (or `make bench`) runs scenarios B1..B6
on the real Docker engine, registry and Kubernetes API simulator, prints a table and
writes JSON keyed by scenario. Nothing here asserts on timings: the numbers are reported,
never turned into pass/fail, so a slow machine cannot make CI flaky.
"""
