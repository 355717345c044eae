#!/usr/bin/env bash
# `make demo`: a good release, a better one, a broken one reverted automatically.
set -euo pipefail
cd "$(dirname "$0")"
ROLLOUT=${ROLLOUT:-../../.venv/bin/rollout}
export ROLLOUT_CONFIG=$PWD/rollout.toml
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step "rollout deploy web:good1"; $ROLLOUT deploy web:good1
step "curl http://127.0.0.1:18480/version"; curl -s http://127.0.0.1:18480/version
step "rollout deploy web:good2"; $ROLLOUT deploy web:good2
step "curl http://127.0.0.1:18480/version"; curl -s http://127.0.0.1:18480/version
step "rollout deploy web:crash   # exits at start: rollout reverts by itself (exit 1)"
code=0; $ROLLOUT deploy web:crash || code=$?
echo "exit code: $code"
[ "$code" -eq 1 ] || { echo "demo: expected exit 1 (failed and reverted), got $code" >&2; exit 1; }
step "curl http://127.0.0.1:18480/version   # the good release serves again"
version=$(curl -s http://127.0.0.1:18480/version); echo "$version"
[ "$version" = good2 ] || { echo "demo: expected good2 to serve, got '$version'" >&2; exit 1; }
step "rollout history"; $ROLLOUT history -n 6
step "rollout status"; $ROLLOUT status
